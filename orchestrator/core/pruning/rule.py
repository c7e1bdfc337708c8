"""The one interface of a pruning rule, and `Patient`, which turns a rule's votes into stops.

A rule is any object with a ``name`` and one method, ``check(trial_id, trial, history)``: it
reads the trial's state and the sweep's history (`orchestrator.core.pruning.history`) and returns a
`Verdict` (it checked; ``vote`` says whether the trial should stop) or None (it did not check).
Rules hold no per-trial state of their own beyond caches of the history; what a stop needs over
several reports is added by wrapping, as Optuna's ``PatientPruner`` wraps another pruner:
`Patient` stops after ``patience`` consecutive votes, and a vote-less check resets the count.

>>> from orchestrator.core.pruning.decision import Verdict
>>> class Always:
...     name = "always"
...     def check(self, trial_id, trial, history):
...         return Verdict(True, {}, reason="always")
>>> p = Patient(Always(), patience=2)
>>> [p.check("t", None, None).vote for _ in range(3)]
[False, True, True]
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Optional, Protocol, runtime_checkable

from .decision import Verdict

if TYPE_CHECKING:
    from .history import History, TrialState


@runtime_checkable
class Rule(Protocol):
    """A pruning rule: one check of one trial against the sweep's history."""

    name: str

    def check(self, trial_id: str, trial: "TrialState", history: "History") -> Optional[Verdict]:
        """The verdict on the trial's latest report, or None when the rule did not check."""
        ...


class Patient:
    """Wraps a rule: stop only after ``patience`` consecutive votes (never on one noisy report).

    The vote count is written into the verdict's prediction under ``key`` (None: not written);
    the prediction dict is the rule's own, updated in place, so a rule that keeps its prediction
    (the law rule's same-cell reference) sees the count too. A verdict with ``now`` stops at once.
    """

    def __init__(self, rule: Rule, patience: int, key: Optional[str] = "votes"):
        self.rule = rule
        self.name = rule.name
        self.patience = patience
        self.key = key
        self.votes: dict[str, int] = {}  # trial id -> consecutive votes so far

    def check(self, trial_id: str, trial: "TrialState", history: "History") -> Optional[Verdict]:
        """The wrapped rule's verdict, voting to stop only at ``patience`` consecutive votes."""
        v = self.rule.check(trial_id, trial, history)
        if v is None:
            return None
        n = self.votes[trial_id] = self.votes.get(trial_id, 0) + 1 if v.vote else 0
        if self.key is not None:
            v.prediction[self.key] = n
        return replace(v, vote=v.now or n >= self.patience)


__all__ = ["Rule", "Patient"]
