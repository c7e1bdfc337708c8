"""What the pruner knows of a trial's plan (`TrialMeta`), independent of how the plan was written.

The adapter (`orchestrator.config.pruning.trial_meta`) builds one from the trial contract; here
it is plain data: sizes, steps and the per-step learning rate.

>>> import numpy as np
>>> m = TrialMeta(N=1e6, D=2e7, total_steps=100, lr=np.full(100, 1e-3), flops=1.2e14)
>>> m.cell(), m.compute
((1000000.0, 20000000.0), 120000000000000.0)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..cells import cell_of
from ..laws.curves import Schedule

LR_REF = 1e-3  # the peak every schedule shape is scaled to before the curve law sees it


@dataclass(frozen=True)
class TrialMeta:
    """What the pruner needs to know of a trial's plan."""

    N: float  # non-embedding parameters
    D: float  # planned training tokens
    total_steps: int
    lr: np.ndarray = field(repr=False)  # the lr used at every step 0..total_steps-1 (trainers.schedules)
    flops: float  # planned training FLOPs
    warmup_steps: int = 0
    start_step: int = 0  # a WSD branch (cooldown or extension) starts at its trunk's step (core/planning/branching.py)
    trunk: Optional[str] = None  # ... and its trunk's trial id: the trunk's curve up to start_step is the branch's own
    schedule: str = ""  # the schedule's kind and fractions (trainers.contract.Schedule); "" = from the lr shape
    cell_D: Optional[float] = None  # the planned trial's nominal D (its cell; None: the rounded D is the cell's)

    @property
    def compute(self) -> float:
        """C = 6·N·D, the compute the frontier is evaluated at (the fit's FLOP rule)."""
        return 6.0 * self.N * self.D

    def cell(self) -> tuple[float, float]:
        """The (N, D) cell key (`orchestrator.core.cells.cell_of`): the nominal D, whatever batch rounding did."""
        c = cell_of({"N": self.N, "D": self.D, "D_nominal": self.cell_D})
        return (c.N, c.D)

    def schedule_kind(self) -> str:
        """The schedule's shape as a fraction of the run, the same for every (N, D) (cross-schedule calibration key)."""
        if self.schedule:
            return self.schedule
        peak = float(np.max(self.lr)) if self.lr.size else 1.0
        bins = np.array_split(self.lr / peak, 20) if self.lr.size >= 20 else [self.lr / peak]
        return "shape:" + ",".join(f"{float(np.mean(b)):.2f}" for b in bins)

    def schedule_family(self) -> str:
        """The schedule's kind without its warmup length (the forecast rule's key): runs that differ only in
        how long they warm up share a curve law, which sees each run's own schedule. A WSD group's shared
        warmup in steps (`core/planning/branching.py`) is another fraction at every budget and batch.

        >>> TrialMeta(N=1.0, D=1.0, total_steps=1, lr=np.ones(1), flops=1.0,
        ...           schedule="wsd warmup 0.0125 decay 0.2 final 0.1").schedule_family()
        'wsd decay 0.2 final 0.1'
        """
        return re.sub(r" warmup \S+", "", self.schedule_kind())

    def law_key(self) -> tuple[float, str]:
        """Whose completed curves a trial's curve law is fitted on (the law and forecast rules): its size's,
        under its own schedule family. A law fitted on one family's runs misjudges another's decay: on the
        real sweeps a cosine-fitted law forecast a WSD run's final loss up to 20 % too high, and stopped a
        cell's winner (`tests/data/lrsweep/curves-s2-60k-120k.csv`, 120k parameters, from 35 % of its steps).
        Whatever the warmup length (`schedule_family`): a branched sweep's WSD runs warm up for one number of
        steps per size and batch, so each budget's would otherwise be a family of its own, none calibrated.

        >>> TrialMeta(N=2.0, D=1.0, total_steps=1, lr=np.ones(1), flops=1.0, schedule="cosine warmup 0.05").law_key()
        (2.0, 'cosine')
        """
        return (self.N, self.schedule_family())

    def law_schedule(self) -> Schedule:
        """The per-step schedule the curve law sees: index s = the lr of step s, shape scaled to LR_REF.

        The curve law sees the schedule's *shape*: runs of one N at different peak lrs then share
        one law and differ by the per-run offset that ``predict_final`` fits on the prefix.
        """
        peak = float(np.max(self.lr)) if self.lr.size else 1.0
        shape = self.lr / peak * LR_REF
        per_step = np.concatenate(([shape[0]], shape))  # index 0 takes no update
        return Schedule(lr=per_step, warmup_end=int(self.warmup_steps))


__all__ = ["TrialMeta", "LR_REF"]
