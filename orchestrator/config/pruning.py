"""The one boundary between the pure pruning rules (`orchestrator.core.pruning`) and the rest of the product.

Not part of the pure core (it reads the trainer contract): a trial's `TrialMeta` from its contract
`TrialConfig`, the rules' config from the spec's ``pruning`` section, and the history of a
resumed sweep from its observation store.
"""
from __future__ import annotations

import math
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

from trainers.contract import TrialConfig
from trainers.flops import realised
from trainers.schedules import lr_array

from ..core.pruning.config import PruneConfig
from ..core.pruning.history import Completed, completed_from_rows
from ..core.pruning.meta import TrialMeta

if TYPE_CHECKING:  # type hints only: the scheduler's tests hand in a PruneConfig without a spec
    from .spec import PruningSpec


def trial_meta(cfg: TrialConfig | Mapping[str, Any], cell_D: Optional[float] = None,
               trunk: Optional[str] = None) -> TrialMeta:
    """The plan of a contract TrialConfig (or its dict), with steps derived as the trainers do;
    `cell_D` is the planned trial's nominal D (`PlannedTrial.cell`), `trunk` a WSD branch's trunk
    trial id (`PlannedTrial.branch_of`: the pruner judges the branch with the trunk's early curve)."""
    if not isinstance(cfg, TrialConfig):
        cfg = TrialConfig.from_dict(dict(cfg))
    b = (int(cfg.batch_tokens) // cfg.seq_len) * cfg.seq_len
    T = max(1, math.ceil(cfg.tokens / b))
    return TrialMeta(N=float(cfg.n_params), D=float(T * b), total_steps=T, lr=lr_array(T, cfg.lr, cfg.schedule),
                     flops=realised(cfg)[0] * T * b, warmup_steps=min(T, int(round(cfg.schedule.warmup * T))),
                     start_step=int(cfg.branch_step), trunk=trunk if cfg.branch_step else None, schedule=schedule_name(cfg.schedule), cell_D=cell_D)


def schedule_name(s: Any) -> str:
    """The schedule's kind and fractions (the cross-schedule calibration key)."""
    return f"{s.kind} warmup {s.warmup:g} decay {s.decay:g} final {s.final_lr_frac:g}"


def prune_config(pruning: Union["PruningSpec", PruneConfig]) -> PruneConfig:
    """The rules' config of the spec's validated ``pruning`` section (a `PruneConfig` as is). Every
    `PruneConfig` field is a `PruningSpec` field of the same name; `enabled` and `background` say how
    the scheduler runs the rules, not what they decide (tests/unit/core/pruning/test_pruner.py holds them together)."""
    if isinstance(pruning, PruneConfig):
        return pruning
    names = {f.name for f in fields(PruneConfig)}
    return PruneConfig(**{k: v for k, v in pruning.model_dump().items() if k in names})


def completed_from_store(store: Any, metas: Mapping[str, TrialMeta], metric: str = "eval_loss") -> list[Completed]:
    """The finished trials of an `ObservationStore` with a plan in `metas`, in the order they finished."""
    rows = store.observations().select(["trial_id", "step", metric]).to_pylist()
    return completed_from_rows(store.trials(), rows, metas, metric)


__all__ = ["trial_meta", "schedule_name", "prune_config", "completed_from_store"]
