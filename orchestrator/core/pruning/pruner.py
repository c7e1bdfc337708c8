"""The pruner: the rules of `orchestrator.core.pruning.rules` over one shared history, report by report.

Pure and deterministic (no Ray): the Tune adapter ``orchestrator/adapters/tune/scheduler.py`` only maps
Tune's callbacks onto :meth:`Pruner.on_report` / :meth:`Pruner.on_complete`. Every report is
recorded in the history, then each rule checks the trial in order (divergence, paired, law, ...);
the first that stops it ends it. A resumed sweep rebuilds the history from the store
(:meth:`Pruner.restore` with `orchestrator.core.pruning.history.completed_from_rows`).

Cost: between two fresh predictions a report costs a few list appends and, after the paired
rule's grace, one ratio statistic per peer of its cell (~0.1 ms each); the curve law of a size and
the frontier are refitted O(log n) times over a sweep of n trials (``refit_growth``).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

from .config import PruneConfig
from .decision import Decision
from .frontier import Frontier
from .history import Completed, History
from .meta import TrialMeta
from .rule import Rule
from .rules import RULES


def default_rules(config: PruneConfig, frontier: Optional[Frontier] = None) -> list[Rule]:
    """The registered rules (`orchestrator.core.pruning.rules.RULES`), in order, for this config.

    >>> [type(r).__name__ for r in default_rules(PruneConfig())]
    ['Patient', 'Patient', 'Patient', 'Patient']
    """
    return [make(config, frontier) for make in RULES.values()]


class Pruner:
    """Stop/continue decisions for running trials from their partial curves (see the module doc).

    >>> import numpy as np
    >>> meta = TrialMeta(N=1e6, D=1e7, total_steps=100, lr=np.full(100, 1e-3), flops=6e13)
    >>> p = Pruner(PruneConfig())
    >>> p.on_report("a", meta, {"step": 10, "train_loss": 4.0, "eval_loss": 4.0}).action
    'continue'
    >>> p.on_report("a", meta, {"step": 20, "train_loss": float("nan"), "eval_loss": float("nan")}).reason
    'non-finite loss at step 20 (train nan, eval nan)'
    """

    def __init__(self, config: PruneConfig = PruneConfig(), frontier: Optional[Frontier] = None,
                 rules: Optional[Sequence[Rule]] = None):
        self.config = config
        self.history = History(config)
        self.rules = list(rules) if rules is not None else default_rules(config, frontier)

    @property
    def n_predictions(self) -> int:
        """Fresh final-loss predictions made so far (the law rule's cost)."""
        return self.history.n_predictions

    def on_report(self, trial_id: str, meta: TrialMeta, report: Mapping[str, float]) -> Decision:
        """The decision after one report (keys of trainers.contract.REPORT_KEYS; step required)."""
        t = self.history.trials.get(trial_id)
        if t is None:
            t = self.history.add(trial_id, meta)
        if t.ended:  # (`enabled` decides whether the controller installs a pruner at all)
            return Decision()
        self.history.record(t, report)
        for rule in self.rules:
            v = rule.check(trial_id, t, self.history)
            if v is not None and v.vote:
                t.ended = True
                return Decision(v.action, v.reason, v.prediction)
        return Decision(prediction=t.prediction or {})

    def on_complete(self, trial_id: str, final_loss: float, curve: Optional[tuple] = None,
                    meta: Optional[TrialMeta] = None) -> None:
        """A trial finished its planned steps: its curve (given: the full curve of a history run)
        and final loss become references."""
        t = self.history.trials.get(trial_id)
        if t is None and meta is not None:
            t = self.history.add(trial_id, meta)
        if t is not None:
            self.history.complete(trial_id, t, final_loss, curve)

    def on_remove(self, trial_id: str) -> None:
        """A trial ended without completing (stopped, failed): it is no longer a reference."""
        t = self.history.trials.get(trial_id)
        if t is not None:
            t.ended = True

    def restore(self, completed: Iterable[Completed]) -> int:
        """Replay the finished trials of an earlier run of the sweep (in the order they finished), so
        a resumed sweep judges its trials against the same references; returns how many."""
        n = 0
        for c in completed:
            self.on_complete(c.trial_id, c.final, (c.steps, c.loss), c.meta)
            n += 1
        return n


__all__ = ["Pruner", "default_rules"]
