"""What a pruning rule says about one trial (`Verdict`) and what the pruner answers (`Decision`).

>>> Decision(STOP, "worse than its peers").stops, Decision().stops
(True, False)
>>> Decision(STOP, "r", {"low": 3.2}).summary()
{'decision': 'stop', 'reason': 'r', 'pred_low': 3.2}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CONTINUE, STOP, DIVERGED = "continue", "stop", "diverged"


@dataclass(frozen=True)
class Decision:
    """continue | stop | diverged, with the reason and the prediction that justified it."""

    action: str = CONTINUE
    reason: str = ""
    prediction: dict = field(default_factory=dict)

    @property
    def stops(self) -> bool:
        """Whether the trial must end now."""
        return self.action != CONTINUE

    def summary(self) -> dict[str, Any]:
        """A flat record for the store's trial summary and MLflow tags."""
        out: dict[str, Any] = {"decision": self.action, "reason": self.reason}
        for k, v in self.prediction.items():
            out[f"pred_{k}"] = v
        return out


@dataclass(frozen=True)
class Verdict:
    """One check of one rule on one trial: whether it argues for stopping, and what it measured.

    A rule returns None when it did not check (too early, nothing to compare with yet); a
    `Patient` wrapper turns consecutive votes into a stop. ``now`` stops without waiting for
    more votes (a non-finite loss); ``action`` is what a stop is called.
    """

    vote: bool
    prediction: dict = field(default_factory=dict)
    reason: str = ""
    action: str = STOP
    now: bool = False


__all__ = ["Decision", "Verdict", "CONTINUE", "STOP", "DIVERGED"]
