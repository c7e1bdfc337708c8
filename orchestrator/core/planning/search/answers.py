"""What the law-guided search answers about what it has learned: its cells, its estimate at the
target budgets, its laws, lr and batch at any (N, D), and its backtest. A mixin of
`planner.LawGuidedPlanner` (its queries, apart from its planning), reading the planner's
`cells`, `learned` (`law_state.SearchLaws`) and `_fit_points`.
"""
from __future__ import annotations

from typing import Any, Optional


class SearchAnswers:
    """The read-only queries of a law-guided search (every one a view of `self.learned` or `self.cells`)."""

    def cell_results(self) -> list[dict[str, Any]]:
        """Every cell touched so far: state, runs, best (lr, batch, loss)."""
        return [c.public() for c in self.cells if c.state != "closed"]

    def estimate(self) -> list[dict[str, Any]]:
        """Per target C: N*, D*, L* with intervals from the current fit, and lr*, batch* from the laws."""
        return self.learned.estimate()

    def laws(self) -> dict[str, Any]:
        """The laws learned so far (JSON-clean): L(N, D)'s form and parameters, lr*, batch*."""
        return self.learned.to_dict()

    def predict_hparams(self, N: float, D: float) -> tuple[Optional[float], Optional[float]]:
        """lr and batch to run at (N, D): the laws learned so far (hedged lr), or (None, None)."""
        return self.learned.predict(N, D)

    def hparam_intervals(self, N: float, D: float, level: float = 0.9) -> Optional[dict[str, dict[str, float]]]:
        """Intervals of lr*, batch* at (N, D) (transfer's joint surface; None without one)."""
        return self.learned.intervals(N, D, level)

    def loss_backtest(self) -> Optional[dict[str, Any]]:
        """Backtest of L(N, D) by size on the searched cells (`loss_law.backtest_by_size`)."""
        return self.learned.backtest(self._fit_points())
