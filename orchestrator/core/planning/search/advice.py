"""What the search hands the proposals (`orchestrator.core.proposals.fit_and_propose`): its learned lr/batch
laws as the proposal rule, and the loss correction its own L(N, D) fit applies to WSD branches.

A search cell run as a WSD branch trains at its trunk's (lr, batch), off the cell's own law point; the
search's fit counts its loss divided by exp(bowl penalty) (`branches.corrected_loss`). The final fit
of the store's runs must count it the same way, or a few tenths of a percent on the longest budgets
of each size bend the fitted L(N, D) (tests/unit/core/planning/test_branch_correction.py). The rule carries the
correction (`corrected_loss`), so every path that proposes with the search's laws (the controller's
summary, `scalesweep propose`, the HTTP API, the benchmark) fits the same points the search did.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol


class _Search(Protocol):
    def predict_hparams(self, N: float, D: float) -> tuple[Optional[float], Optional[float]]: ...

    def hparam_intervals(self, N: float, D: float, level: float = 0.9) -> Optional[dict[str, dict[str, float]]]: ...

    def loss_as_fitted(self, trial_id: str, loss: float) -> float: ...


class SearchRule:
    """The search's laws as a proposal rule: `rule(N, D) -> (lr, batch)`, `intervals(N, D, level)`, and
    `corrected_loss(point)`: a finished run's loss as the search's L(N, D) fit counts it."""

    def __init__(self, search: _Search):
        self._search = search

    def __call__(self, N: float, D: float) -> tuple[Optional[float], Optional[float]]:
        return self._search.predict_hparams(N, D)

    def intervals(self, N: float, D: float, level: float = 0.9) -> Optional[dict[str, dict[str, float]]]:
        return self._search.hparam_intervals(N, D, level)

    def corrected_loss(self, point: Mapping[str, Any]) -> float:
        """`point["loss"]`, corrected when the search ran `point["trial_id"]` as a WSD branch."""
        loss = float(point["loss"])
        tid = point.get("trial_id")
        return self._search.loss_as_fitted(str(tid), loss) if tid is not None else loss
