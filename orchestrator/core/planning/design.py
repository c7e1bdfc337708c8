"""A sweep's design as small frozen configs, and the planning of its trials on it.

`Design` holds what planning reads of the user's spec: the model family and sizes, each size's token
budgets, the lr / batch / seed axes, the schedule's warmup, decay and branching, the compute budget and
targets, and how trials are sized (`ResourceConfig`: the memory model's device and each size's
workers, ZeRO stage and micro-batch as the spec gives them). The pydantic spec becomes a `Design` in
one place, `orchestrator.config.planning.design_of`; the planning code never sees the spec.

>>> d = Design(family="gpt", seq_len=64, sizes=(20000,), tokens=((640000,),), lrs=(1e-3, 3e-3),
...            batches=(1024,), seeds=(0,))
>>> [(t.lr, t.D, t.workers) for t in plan_grid(d)]
[(0.001, 640000, 1), (0.003, 640000, 1)]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence, Union

from ..family import count_params, shape_for, training_flops
from ..resources import AUTO, Auto, DeviceSpec, GiB, ModelDims, ResourceError, ResourcePlan, ZeroBuffers, plan_resources
from .branching import plan_branches
from .trial import PlannedTrial, trial_id


@dataclass(frozen=True)
class SizeResources:
    """How the spec sizes the trials of one model size N (`ResourcesSpec.settings` and `for_size`): workers,
    ZeRO stage and micro-batch, each a number or `AUTO` (plan: auto chooses; micro_batch None: the
    worker's whole share), and the spec fields they come from (an error names them)."""

    workers: Union[int, Auto] = 1
    zero_stage: Union[int, Auto] = 0
    micro_batch: Union[int, Auto, None] = None
    fields: tuple[str, str, str] = ("resources.workers", "resources.zero_stage", "resources.micro_batch")
    manual: tuple[int, int] = (1, 0)  # (workers, zero_stage) as plan: manual runs it


@dataclass(frozen=True)
class ResourceConfig:
    """How trials are sized against the memory model (docs/cluster.md)."""

    plan: str = "manual"  # manual: the spec's values, checked; auto: planned per trial
    device: Optional[DeviceSpec] = None  # the worker's device for the memory model (None: nothing to check)
    max_workers: int = 8
    check: bool = False  # False: a trial's resources are not checked (a manual plan without a device or
    #                      on the simulated backend): it runs with the spec's values as given
    micro_batch: Optional[int] = None  # resources.micro_batch
    sizes: tuple[tuple[int, SizeResources], ...] = ()  # target N -> its settings (default: one worker)

    def size(self, n_target: int) -> SizeResources:
        """The settings of the trials of `n_target` parameters."""
        for n, s in self.sizes:
            if n == n_target:
                return s
        return SizeResources()


@dataclass(frozen=True)
class Design:
    """What the planners read of a sweep: the grid's axes, schedule, budget and sizing."""

    family: str
    seq_len: int
    sizes: tuple[int, ...]  # target N, ascending
    tokens: tuple[tuple[int, ...], ...]  # each size's token budgets D, ascending (aligned with `sizes`)
    lrs: tuple[float, ...]  # ascending
    batches: tuple[int, ...]  # global batches in tokens (whole sequences), ascending
    seeds: tuple[int, ...]
    schedule: str = "wsd"  # wsd | cosine | constant
    warmup: float = 0.05
    decay: float = 0.2
    branch: bool = False  # WSD: trunks and cooldown branches (`branching`)
    total_flops: Optional[float] = None  # the compute budget (None: the whole grid)
    targets: tuple[float, ...] = ()  # budgets C to propose for
    exact_flops: bool = False  # count attention and embedding FLOPs (else 6·N·D)
    resources: ResourceConfig = ResourceConfig()

    def tokens_for(self, n_target: int) -> tuple[int, ...]:
        """The token budgets of the size `n_target`."""
        return self.tokens[self.sizes.index(n_target)]

    @property
    def branching(self) -> bool:
        """Whether trials share WSD stable phases (a WSD schedule with `branch`)."""
        return self.schedule == "wsd" and self.branch


def trial_resources(design: Design, n_target: int, batch: int) -> Optional[ResourcePlan]:
    """The resource plan of a trial of `n_target` parameters at `batch` tokens: planned (`plan: auto`)
    or the spec's values checked against the memory model (`plan: manual`); None when nothing is
    checked (`ResourceConfig.check`). A trial that cannot fit raises `ResourceError` naming the trial,
    the spec fields, the largest memory component and what would fit.

    >>> trial_resources(Design("gpt", 64, (20000,), ((640000,),), (1e-3,), (1024,), (0,)), 20000, 1024) is None
    True
    """
    res = design.resources
    if not res.check:
        return None
    seq = design.seq_len
    size = res.size(n_target)
    workers, stage, micro = size.workers, size.zero_stage, size.micro_batch
    if micro is None:  # manual: the trainer's default, the worker's whole share
        micro = max(1, batch // seq // workers)
    dims = ModelDims.for_n(n_target, seq, family=design.family)
    try:
        return plan_resources(n_target, seq, batch, res.device,
                              res.max_workers if workers is AUTO else max(workers, res.max_workers),
                              workers=workers, zero_stage=stage, micro_batch=micro,
                              activation_checkpointing=False,  # our trainer does not recompute
                              dims=dims, buffers=ZeroBuffers.for_trainer(dims.total_params),
                              exact_flops=design.exact_flops)
    except ResourceError as exc:
        given = ", ".join(f"{field}={'none (the whole share)' if value is None else value}"
                          for value, field in zip((size.workers, size.zero_stage, size.micro_batch), size.fields)
                          if value is not AUTO)
        raise ResourceError(f"resources: the trial N={n_target:.3g} at batch {batch} tokens ({batch // seq} "
                            f"sequences of {seq}) cannot run on {res.device.name} ({res.plan} plan"
                            f"{'; ' + given if given else ''}): {exc}") from None


def plan_trial(design: Design, n_target: int, d_target: float, lr: float, batch: int, seed: int,
               plans: Optional[dict[int, Optional[ResourcePlan]]] = None) -> PlannedTrial:
    """One trial of `n_target` parameters on `d_target` tokens (rounded up to whole batches).

    `plans` caches the resource plan per batch of this size (`trial_resources`); the law-guided
    search also plans trials off the design's lattice (a learned law's lr and batch) through here.
    A trial that cannot fit raises `ResourceError`.

    >>> d = Design("gpt", 64, (20000,), ((640000,),), (1e-3,), (1024,), (0,))
    >>> t = plan_trial(d, 20000, 1000, 1e-3, 1024, 0)
    >>> t.D, t.D_nominal, t.flops == 6.0 * t.N * t.D
    (1024, 1000.0, True)
    """
    seq = design.seq_len
    shape = shape_for(n_target, design.family)
    counts = count_params(shape, max_seq_len=seq)
    rp = plans[batch] if plans is not None and batch in plans else trial_resources(design, n_target, batch)
    if rp is None:
        workers, stage = design.resources.size(n_target).manual
        micro, accum, mem = design.resources.micro_batch, None, None
    else:
        workers, stage, micro, accum = rp.workers, rp.zero_stage, rp.micro_batch, rp.grad_accum
        mem = rp.memory.total / GiB
    steps = max(1, math.ceil(d_target / batch))
    d = steps * batch
    return PlannedTrial(
        trial_id=trial_id(counts.non_embedding, d, lr, batch, seed),
        n_target=n_target,
        N=counts.non_embedding,
        N_total=counts.total,
        D=d,
        lr=lr,
        batch=batch,
        seed=seed,
        workers=workers,
        zero_stage=stage,
        flops=training_flops(shape, seq, d, exact=design.exact_flops),
        shape=shape.to_dict(),
        micro_batch=micro,
        grad_accum=accum,
        memory_gib=mem,
        D_nominal=float(d_target),
    )


def plan_grid(design: Design, batches: Optional[Sequence[int]] = None) -> list[PlannedTrial]:
    """Every trial of the design's grid (at `batches`, default the design's), cheapest first (ties broken
    deterministically); with `branch`, as WSD trunks and cooldown branches.

    >>> d = Design("gpt", 64, (20000,), ((640000, 1280000),), (1e-3,), (1024,), (0,), branch=True)
    >>> [(t.D, t.branch_of is not None) for t in plan_grid(d)]
    [(640000, True), (1280000, False)]
    """
    batches = list(batches) if batches is not None else list(design.batches)
    out, ids = [], set()
    for n_target in design.sizes:
        plans = {batch: trial_resources(design, n_target, batch) for batch in batches}
        for d_target in design.tokens_for(n_target):
            for batch in batches:
                for lr in design.lrs:
                    for seed in design.seeds:
                        t = plan_trial(design, n_target, d_target, lr, batch, seed, plans)
                        if t.trial_id not in ids:  # token budgets that round to the same whole batches: one trial
                            ids.add(t.trial_id)
                            out.append(t)
    if design.branch:
        out = _with_branches(out, design)
    out.sort(key=lambda t: (t.flops, t.N, t.D, t.lr, t.batch, t.seed))
    return out


def _with_branches(trials: list[PlannedTrial], design: Design) -> list[PlannedTrial]:
    """The grid's WSD trials as trunks and cooldown branches (`branching`)."""
    plan = plan_branches(trials, design.warmup, design.decay)
    out = []
    for t in trials:
        b = plan.branches.get(t.trial_id)
        changes: dict[str, Any] = {"warmup": plan.warmup[t.trial_id],
                                   "checkpoint_steps": plan.checkpoint_steps.get(t.trial_id, ())}
        if b is not None:
            share = b.step / b.total_steps  # FLOPs are linear in steps at a fixed N and batch
            changes.update(branch_of=b.trunk_id, branch_step=b.step, branch_flops=t.flops * share,
                           flops=t.flops * (1.0 - share))
        out.append(replace(t, **changes))
    return out


def smallest_cell_flops(design: Design) -> float:
    """Training FLOPs of the design's cheapest cell at any of its batches, D rounded up to whole batches
    as `plan_trial` rounds it (a WSD branch's own decay costs less, but it runs only after its trunk,
    which costs at least this).

    >>> d = Design("gpt", 64, (20000,), ((1000, 5000),), (1e-3,), (1024, 2048), (0,))
    >>> smallest_cell_flops(d) == plan_trial(d, 20000, 1000, 1e-3, 1024, 0).flops
    True
    """
    best = math.inf
    for n_target in design.sizes:
        shape = shape_for(n_target, design.family)
        for d_target in design.tokens_for(n_target):
            for batch in design.batches:
                d = max(1, math.ceil(d_target / batch)) * batch
                best = min(best, training_flops(shape, design.seq_len, d, exact=design.exact_flops))
    return best


__all__ = ["Design", "ResourceConfig", "SizeResources", "plan_grid", "plan_trial", "smallest_cell_flops",
           "trial_resources"]
