"""A spec's trials sized before any grid is planned: the resource plan of a trial (`plan: auto`
plans it, `plan: manual` checks the spec's values against the memory model) and the FLOPs of the
smallest cell.

Both the spec's load checks (`orchestrator.spec.parse_spec`) and the planner (`orchestrator.planner`)
use this module, so loading a spec plans no grid and the spec never imports the planner. It reads
the spec's fields and calls the pure core (`orchestrator.core.family`, `orchestrator.core.resources`);
it imports the spec module only for type hints.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

from .core.family import count_params, shape_for, training_flops
from .core.resources import ModelDims, ResourceError, ResourcePlan, ZeroBuffers, plan_resources

if TYPE_CHECKING:  # the spec imports this module; type hints only
    from .spec import SweepSpec


def trial_resources(spec: "SweepSpec", n_target: int, batch: int, machine: bool = False) -> Optional[ResourcePlan]:
    """The resource plan of a trial of `n_target` parameters at `batch` tokens: planned
    (`plan: auto`) or the spec's values checked against the memory model (`plan: manual`).

    None when there is nothing to check against (see `ResourcesSpec.device_spec`; `machine`:
    the unnamed default CPU is this machine) or on the simulated backend with a manual plan
    (it allocates no model). A trial that cannot fit raises `ResourceError` naming the trial, the
    spec fields, the largest memory component and what would fit.
    """
    res = spec.resources
    device = res.device_spec(machine)
    if res.plan == "manual" and (device is None or spec.trainer.backend == "simulated"):
        return None
    seq = spec.model.seq_len
    settings = res.settings(n_target)
    workers, stage, micro = (settings[k][0] for k in ("workers", "zero_stage", "micro_batch"))
    if micro is None:  # manual: the trainer's default, the worker's whole share
        micro = max(1, batch // seq // workers)
    dims = ModelDims.for_n(n_target, seq, family=spec.model.family)
    try:
        return plan_resources(n_target, seq, batch, device,
                              res.max_workers if workers == "auto" else max(workers, res.max_workers),
                              workers=workers, zero_stage=stage, micro_batch=micro,
                              activation_checkpointing=False,  # our trainer does not recompute
                              dims=dims, buffers=ZeroBuffers.for_trainer(dims.total_params),
                              exact_flops=spec.budget.flops == "exact")
    except ResourceError as exc:
        given = ", ".join(f"{field}={'none (the whole share)' if value is None else value}"
                          for value, field in settings.values() if value != "auto")
        raise ResourceError(f"resources: the trial N={n_target:.3g} at batch {batch} tokens ({batch // seq} "
                            f"sequences of {seq}) cannot run on {device.name} ({res.plan} plan"
                            f"{'; ' + given if given else ''}): {exc}") from None


def check_trial_resources(spec: "SweepSpec", machine: bool = False) -> None:
    """Every (N, batch) of the spec's grid fits its device (`trial_resources`); raises `ResourceError`
    for the first that does not (smallest N first, then the spec's batch order)."""
    for n_target in spec.model.sizes():
        for batch in spec.batches():
            trial_resources(spec, n_target, batch, machine)


def smallest_cell_flops(spec: "SweepSpec") -> float:
    """Training FLOPs of the spec's cheapest cell at any of its batches, D rounded up to whole
    batches as the planner rounds it (a WSD branch's own decay costs less, but it runs only after
    its trunk, which costs at least this)."""
    seq, exact = spec.model.seq_len, spec.budget.flops == "exact"
    best = math.inf
    for n_target in spec.model.sizes():
        shape = shape_for(n_target, spec.model.family)
        n = count_params(shape, max_seq_len=seq).non_embedding
        for d_target in spec.tokens.for_size(n):
            for batch in spec.batches():
                d = max(1, math.ceil(d_target / batch)) * batch
                best = min(best, training_flops(shape, seq, d, exact=exact))
    return best
