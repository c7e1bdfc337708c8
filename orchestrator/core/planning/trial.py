"""A planned trial: one run of the sweep with everything the controller and the fit need.

>>> t = PlannedTrial(trial_id="t", n_target=1000, N=1000, N_total=1200, D=64000, lr=1e-3, batch=512, seed=0,
...                  workers=1, zero_stage=0, flops=6.0 * 1000 * 64000, shape={}, D_nominal=60000.0)
>>> t.cell.D, t.record()["batch"]
(60000.0, 512)
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Optional

from ..cells import Cell, cell_of


@dataclass(frozen=True)
class PlannedTrial:
    """One trial of the sweep with everything the controller and the fit need."""

    trial_id: str
    n_target: int
    N: int  # realised non-embedding parameters
    N_total: int
    D: int  # training tokens (whole batches)
    lr: float
    batch: int  # global batch in tokens
    seed: int
    workers: int
    zero_stage: int
    flops: float  # planned training FLOPs
    shape: dict[str, int]
    micro_batch: Optional[int] = None  # sequences per worker per micro-step (None = the whole share)
    grad_accum: Optional[int] = None  # micro-steps per optimizer step, when planned or checked
    memory_gib: Optional[float] = None  # estimated peak memory per worker (core/resources.py), when checked
    D_nominal: Optional[float] = None  # the design's token target before whole-batch rounding: the cell's D
    # WSD branching (`branching`); `flops` is what this trial spends, a branch its decay only
    warmup: Optional[float] = None  # this trial's warmup fraction, when it differs from the spec's
    checkpoint_steps: tuple[int, ...] = ()  # a trunk: the steps its branches start from
    branch_of: Optional[str] = None  # a branch: its trunk's trial id
    branch_step: int = 0  # ... the trunk's step it starts from
    branch_flops: float = 0.0  # ... the FLOPs the trunk spent to get there (in the branch's reports, not spent again)

    def record(self) -> dict[str, Any]:
        """The trial's config as stored and logged."""
        return asdict(self)

    @property
    def cell(self) -> Cell:
        """The nominal (N, D) cell this trial belongs to (`orchestrator.core.cells`)."""
        return cell_of({"N": self.N, "D": self.D, "D_nominal": self.D_nominal})


def trial_id(n: int, d: int, lr: float, batch: int, seed: int) -> str:
    """The trial's id: readable (N, D, lr, batch, seed) and a short hash of them.

    >>> trial_id(1000, 64000, 1e-3, 512, 0)[:30]
    'N1000-D64000-lr0.001-b512-s0-1'
    """
    key = f"{n}|{d}|{lr:.6g}|{batch}|{seed}"
    return f"N{n}-D{d}-lr{lr:.3g}-b{batch}-s{seed}-{hashlib.sha1(key.encode()).hexdigest()[:6]}"


__all__ = ["PlannedTrial", "trial_id"]
