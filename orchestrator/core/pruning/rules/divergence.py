"""Divergence: a non-finite loss at once; a loss exploding above its running minimum (or, after
warmup, above its first report) on consecutive reports (wrap in `Patient`: one spike that recovers
is not a divergence).

>>> import numpy as np
>>> from orchestrator.core.pruning import PruneConfig, Pruner, TrialMeta
>>> meta = TrialMeta(N=1e6, D=1e7, total_steps=100, lr=np.full(100, 1e-3), flops=6e13)
>>> p = Pruner(PruneConfig())
>>> [p.on_report("t", meta, {"step": s, "train_loss": x, "eval_loss": x}).action
...  for s, x in ((1, 5.0), (2, 4.0), (3, 3.0), (4, 9.0), (5, 9.5))]
['continue', 'continue', 'continue', 'continue', 'diverged']
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..config import PruneConfig
from ..decision import DIVERGED, Verdict
from ..history import History, TrialState


@dataclass(frozen=True)
class DivergenceConfig:
    """When a loss counts as exploding."""

    factor: float = 1.5  # above this × the running minimum

    @classmethod
    def of(cls, config: PruneConfig) -> "DivergenceConfig":
        return cls(factor=config.divergence_factor)


class Divergence:
    """Votes on every report (a from-scratch run or a WSD branch: its own reports) whether the trial's loss blew up."""

    name = "divergence"

    def __init__(self, config: DivergenceConfig = DivergenceConfig()):
        self.config = config

    def check(self, trial_id: str, t: TrialState, history: History) -> Optional[Verdict]:
        """A stop-now verdict on a non-finite loss; else a vote when the loss is exploding."""
        step, train, val = t.step, t.train, t.value
        # Both losses NaN is how a trainer reports a blown-up step; inf anywhere is a blow-up too.
        # One NaN alone only means "not measured in this report" (no evaluation, no train mean).
        if (math.isnan(train) and math.isnan(val)) or math.isinf(train) or math.isinf(val):
            return Verdict(True, {"step": step}, f"non-finite loss at step {step:.0f} (train {train}, eval {val})",
                           DIVERGED, now=True)
        x = val if math.isfinite(val) else train
        if math.isnan(t.first) and (t.meta.start_step <= 0 or t.n_prefix):
            # the run's first loss: a WSD branch's is its trunk's first (its own first report comes late
            # in training, and a noisy report above it is no divergence); unknown without the trunk's curve
            t.first = t.loss[0] if t.meta.start_step > 0 else x
        after_warmup = step > t.meta.warmup_steps
        exploding = t.n_reports >= 3 and x > self.config.factor * t.running_min
        above_first = t.n_reports >= 3 and after_warmup and x > t.first
        t.running_min = min(t.running_min, x)
        vote = exploding or above_first
        # The two read differently in a stop reason: a blow-up, or a run past warmup that is no lower
        # than where it started (not learning, or blowing up slowly)
        what = "loss exploding" if exploding else "loss above its first report after warmup"
        return Verdict(vote, {"step": step, "loss": x, "running_min": t.running_min, "first": t.first},
                       f"{what}: {x:.4g} at step {step:.0f} vs running min {t.running_min:.4g}, "
                       f"first {t.first:.4g}" if vote else "", DIVERGED)


__all__ = ["Divergence", "DivergenceConfig"]
