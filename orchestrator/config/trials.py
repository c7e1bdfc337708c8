"""A spec's trials: the grid, its trials and their resources, planned by the pure core
(`orchestrator.core.planning`) on the spec's design (`orchestrator.config.planning.design_of`).

The functions here take the user's `SweepSpec`, convert it once and call the core; a trial that cannot
fit its resources raises `SpecError` (the core's `ResourceError`, a spec problem here). `trial_config`
is the trainer contract's view of a planned trial. The planners of a spec: `orchestrator.config.planners`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from trainers.contract import Schedule, TrialConfig

from . import sizing
from .planning import design_of
from ..core.planning import design as core
from ..core.planning.trial import PlannedTrial
from ..core.resources import GiB, ModelDims, ResourceError, ResourcePlan, ZeroBuffers, plan_resources
from ..core.planning.search import lattice
from .spec import SpecError, SweepSpec


def trial_resources(spec: SweepSpec, n_target: int, batch: int, machine: bool = False) -> Optional[ResourcePlan]:
    """The resource plan of a trial of `n_target` parameters at `batch` tokens
    (`orchestrator.config.sizing.trial_resources`); a trial that cannot fit raises `SpecError`."""
    try:
        return sizing.trial_resources(spec, n_target, batch, machine)
    except ResourceError as exc:
        raise SpecError(str(exc)) from None


def check_resources(spec: SweepSpec) -> None:
    """Before launch: every trial of the grid fits its device, the default CPU being this
    machine (the spec alone checks named devices); raises `SpecError` otherwise."""
    try:
        sizing.check_trial_resources(spec, machine=True)
    except ResourceError as exc:
        raise SpecError(str(exc)) from None


def proposal_resources(spec: SweepSpec):
    """A function (N, D, batch tokens) -> the resource plan of a proposed run on the spec's device,
    as a JSON-ready dict (an `error` key when nothing fits), for `fit_and_propose(resources=...)`.

    Proposals are planned freely (up to `resources.max_workers`, activation checkpointing
    allowed): they are for a run larger than the sweep's, not bound by its manual values.
    """
    res = spec.resources
    device = res.device_spec(machine=True)
    seq = spec.model.seq_len

    def plan(n: float, d: float, batch: float) -> dict[str, Any]:
        if device is None:
            return {"device": None, "error": "resources.device is not named: no memory model for an unnamed GPU"}
        n_int = max(1, int(round(n)))
        b = max(1, int(round(batch / seq))) * seq
        try:
            dims = ModelDims.for_n(n_int, seq, family=spec.model.family)
            p = plan_resources(n_int, seq, b, device, max(res.max_workers, res.workers), tokens=int(round(d)),
                               dims=dims, buffers=ZeroBuffers.for_trainer(dims.total_params),
                               exact_flops=spec.budget.flops == "exact")
        except (ResourceError, ValueError) as exc:
            return {"device": device.name, "batch": b, "error": str(exc)}
        return {"device": device.name, "batch": b, **p.to_dict(), "memory_gib": p.memory.total / GiB,
                "largest_component": p.memory.largest_component()[0]}

    return plan


def plan_trial(spec: SweepSpec, n_target: int, d_target: float, lr: float, batch: int, seed: int,
               plans: Optional[dict[int, Optional[ResourcePlan]]] = None) -> PlannedTrial:
    """One trial of `n_target` parameters on `d_target` tokens (`core.planning.design.plan_trial`)."""
    try:
        return core.plan_trial(design_of(spec), n_target, d_target, lr, batch, seed, plans)
    except ResourceError as exc:
        raise SpecError(str(exc)) from None


def plan_grid(spec: SweepSpec, batches: Optional[list[int]] = None) -> list[PlannedTrial]:
    """Every trial of the spec's grid (at `batches`, default the spec's), cheapest first
    (`core.planning.design.plan_grid`)."""
    try:
        return core.plan_grid(design_of(spec), batches)
    except ResourceError as exc:
        raise SpecError(str(exc)) from None


def batch_ladder(spec: SweepSpec, factor: float) -> list[int]:
    """The spec's batches extended by `factor` below and above: the transfer design's batch lattice
    (`search.lattice.batch_ladder`)."""
    return lattice.batch_ladder(design_of(spec), factor)


def trial_config(spec: SweepSpec, trial: PlannedTrial, checkpoint_dir: Optional[str], data_cache: Optional[str]) -> TrialConfig:
    """The trainer's view of a planned trial."""
    s = spec.schedule
    return TrialConfig(
        trial_id=trial.trial_id,
        n_params=trial.n_target,
        tokens=trial.D,
        lr=trial.lr,
        batch_tokens=trial.batch,
        seq_len=spec.model.seq_len,
        schedule=Schedule(kind=s.kind, warmup=s.warmup if trial.warmup is None else trial.warmup, decay=s.decay,
                          final_lr_frac=s.final_lr_frac),
        eval_every=spec.eval.every,
        eval_tokens=spec.eval.tokens,
        seed=trial.seed,
        zero_stage=trial.zero_stage,
        workers=trial.workers,
        micro_batch=trial.micro_batch,
        precision="auto",
        checkpoint_dir=checkpoint_dir if spec.checkpoints.enabled else None,
        checkpoint_every=spec.checkpoints.every or spec.eval.every,
        checkpoint_steps=trial.checkpoint_steps,
        branch_from=(str(Path(checkpoint_dir).parent / trial.branch_of / f"step{trial.branch_step}")
                     if trial.branch_of and checkpoint_dir else None),
        branch_step=trial.branch_step,
        data=spec.data_config(),
        data_cache=data_cache,
        exact_flops=spec.budget.flops == "exact",
        threads=spec.resources.threads,
        family=spec.model.family,
        options=dict(spec.trainer.options),
        tasks=tuple(spec.eval.tasks),
        tasks_at=spec.eval.tasks_at,
        task_items=spec.eval.task_items,
    )

