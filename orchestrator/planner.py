"""Decisions from the spec and the observations: which trials to run, in which order.

Pure Python (no Ray): the Tune searcher in `orchestrator/tune/` only delegates here.
This planner runs the spec's grid, cheapest trials first, within the compute budget;
law-guided search (issue: law-guided search) replaces `next_trial` with an acquisition rule.
"""
from __future__ import annotations

import copy
import hashlib
import heapq
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

from trainers.contract import Schedule, TrialConfig

from . import sizing
from .core.cells import Cell, cell_of
from .core.family import count_params, shape_for, training_flops
from .core.resources import GiB, ModelDims, ResourceError, ResourcePlan, ZeroBuffers, plan_resources
from .core.planning import WAIT, Done, HparamAdvice, Step, Wait  # noqa: F401  (the planner interface; re-exported)
from .spec import SpecError, SweepSpec


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
    # WSD branching (orchestrator/branching.py); `flops` is what this trial spends, a branch its decay only
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


def _trial_id(n: int, d: int, lr: float, batch: int, seed: int) -> str:
    key = f"{n}|{d}|{lr:.6g}|{batch}|{seed}"
    return f"N{n}-D{d}-lr{lr:.3g}-b{batch}-s{seed}-{hashlib.sha1(key.encode()).hexdigest()[:6]}"


def trial_resources(spec: SweepSpec, n_target: int, batch: int, machine: bool = False) -> Optional[ResourcePlan]:
    """The resource plan of a trial of `n_target` parameters at `batch` tokens
    (`orchestrator.sizing.trial_resources`); a trial that cannot fit raises `SpecError`."""
    try:
        return sizing.trial_resources(spec, n_target, batch, machine)
    except ResourceError as exc:
        raise SpecError(str(exc)) from None


def check_resources(spec: SweepSpec) -> None:
    """Before launch: every trial of the grid fits its device, the default CPU being this
    machine (the spec alone checks named devices); raises `SpecError` otherwise."""
    for n_target in spec.model.sizes():
        for batch in spec.batches():
            trial_resources(spec, n_target, batch, machine=True)


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
    """One trial of `n_target` parameters on `d_target` tokens (rounded up to whole batches).

    `plans` caches the resource plan per batch of this size (`trial_resources`); the law-guided
    search also plans trials off the spec's lattice (a learned law's lr and batch) through here.
    """
    seq = spec.model.seq_len
    shape = shape_for(n_target, spec.model.family)
    counts = count_params(shape, max_seq_len=seq)
    rp = plans[batch] if plans is not None and batch in plans else trial_resources(spec, n_target, batch)
    if rp is None:
        workers, stage = spec.resources.for_size(n_target)
        micro, accum, mem = spec.resources.micro_batch, None, None
    else:
        workers, stage, micro, accum = rp.workers, rp.zero_stage, rp.micro_batch, rp.grad_accum
        mem = rp.memory.total / GiB
    steps = max(1, math.ceil(d_target / batch))
    d = steps * batch
    return PlannedTrial(
        trial_id=_trial_id(counts.non_embedding, d, lr, batch, seed),
        n_target=n_target,
        N=counts.non_embedding,
        N_total=counts.total,
        D=d,
        lr=lr,
        batch=batch,
        seed=seed,
        workers=workers,
        zero_stage=stage,
        flops=training_flops(shape, seq, d, exact=spec.budget.flops == "exact"),
        shape=shape.to_dict(),
        micro_batch=micro,
        grad_accum=accum,
        memory_gib=mem,
        D_nominal=float(d_target),
    )


def plan_grid(spec: SweepSpec, batches: Optional[list[int]] = None) -> list[PlannedTrial]:
    """Every trial of the spec's grid (at `batches`, default the spec's), cheapest first (ties broken deterministically)."""
    seq = spec.model.seq_len
    batches = list(batches) if batches is not None else spec.batches()
    out, ids = [], set()
    for n_target in spec.model.sizes():
        counts = count_params(shape_for(n_target, spec.model.family), max_seq_len=seq)
        plans = {batch: trial_resources(spec, n_target, batch) for batch in batches}
        for d_target in spec.tokens.for_size(counts.non_embedding):
            for batch in batches:
                for lr in spec.lrs():
                    for seed in spec.seeds:
                        t = plan_trial(spec, n_target, d_target, lr, batch, seed, plans)
                        if t.trial_id not in ids:  # token budgets that round to the same whole batches: one trial
                            ids.add(t.trial_id)
                            out.append(t)
    if spec.schedule.branch:
        out = _with_branches(out, spec)
    out.sort(key=lambda t: (t.flops, t.N, t.D, t.lr, t.batch, t.seed))
    return out


def _with_branches(trials: list[PlannedTrial], spec: SweepSpec) -> list[PlannedTrial]:
    """The grid's WSD trials as trunks and cooldown branches (`orchestrator.branching`)."""
    from .branching import plan_branches

    plan = plan_branches(trials, spec.schedule.warmup, spec.schedule.decay)
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


class GridPlanner:
    """Hands out the grid's trials in order until the grid or the compute budget is spent.

    Compute is committed when a trial is handed out (its planned FLOPs), so concurrent
    trials can never overrun the budget. Implements `orchestrator.core.planning.Planner`.
    """

    def __init__(self, spec: SweepSpec):
        self.spec = spec
        self.trials = plan_grid(spec)
        self.budget = spec.budget.total_flops
        self.decisions: list[dict[str, Any]] = []
        self._start()

    def _start(self) -> None:
        """A fresh hand-out state over the planned trials."""
        self.committed = 0.0
        self.skipped: list[PlannedTrial] = []
        self.reached: dict[str, int] = {}  # trial id -> the last step it reported
        self.ended: set[str] = set()
        # Trials that may start now, as a heap of (plan position, trial): cheapest first. A WSD
        # branch joins it only once its trunk has reported its branch point (`_waiting` till then).
        self._queue: list[tuple[int, PlannedTrial]] = []
        self._waiting: dict[str, list[tuple[int, PlannedTrial]]] = {}  # trunk id -> its branches
        for entry in enumerate(self.trials):
            if entry[1].branch_of is None:
                self._queue.append(entry)  # in plan order: already a heap
            else:
                self._waiting.setdefault(entry[1].branch_of, []).append(entry)

    @property
    def trial_cap(self) -> int:
        """Most trials this planner can hand out."""
        return len(self.runnable())

    def next_trial(self) -> Step:
        """The next trial to run; WAIT while only branches whose trunk is still short of their
        branch point are left; Done when the grid or the budget is exhausted."""
        while self._queue:
            _, trial = heapq.heappop(self._queue)
            if self.budget is not None and self.committed + trial.flops > self.budget:
                self.skipped.append(trial)
                self._end(trial.trial_id)  # never runs: its branches go with it
                continue
            self.committed += trial.flops
            why = (f"cooldown branch of {trial.branch_of} from step {trial.branch_step}" if trial.branch_of
                   else "next grid point (cheapest first)")
            self.decisions.append({"trial_id": trial.trial_id, "action": "run", "why": why})
            return trial
        return WAIT if self._waiting else Done("every grid trial handed out or skipped (budget)")

    def observe_report(self, trial_id: str, report: dict[str, Any]) -> None:
        """A running trial reported: a WSD trunk's progress releases the branches it has passed."""
        if "step" not in report:
            return
        step = self.reached[trial_id] = max(self.reached.get(trial_id, -1), int(report["step"]))
        branches = self._waiting.get(trial_id)
        if branches:
            for entry in branches:
                if entry[1].branch_step <= step:
                    heapq.heappush(self._queue, entry)
            rest = [e for e in branches if e[1].branch_step > step]
            if rest:
                self._waiting[trial_id] = rest
            else:
                del self._waiting[trial_id]

    def observe(self, trial_id: str, result: Optional[dict[str, Any]]) -> None:
        """A trial ended with its last report (None if it failed)."""
        if result:
            self.observe_report(trial_id, result)
        self._end(trial_id)

    def _end(self, trial_id: str) -> None:
        """The trial will report no more: branches still waiting for it are skipped."""
        self.ended.add(trial_id)
        for _, branch in self._waiting.pop(trial_id, []):
            self.skipped.append(branch)
            self.decisions.append({"trial_id": branch.trial_id, "action": "skip",
                                   "why": f"its WSD trunk {trial_id} ended at step {self.reached.get(trial_id, 0)}, "
                                          f"before step {branch.branch_step}"})

    def resume(self, results: dict[str, Optional[dict[str, Any]]]) -> None:
        """Trials that ended in an earlier run of this sweep: not run again, their compute counted."""
        done = set(results)
        self.committed += sum(t.flops for t in self.trials if t.trial_id in done)
        self._queue = [e for e in self._queue if e[1].trial_id not in done]
        heapq.heapify(self._queue)
        for trunk in list(self._waiting):
            self._waiting[trunk] = [e for e in self._waiting[trunk] if e[1].trial_id not in done]
            if not self._waiting[trunk]:
                del self._waiting[trunk]
        for tid, result in results.items():
            self.observe(tid, result)

    def hparam_advice(self) -> Optional[HparamAdvice]:
        """None: the grid learns no hyperparameter laws (the proposals fit their own)."""
        return None

    def runnable(self) -> list[PlannedTrial]:
        """What a fresh sweep will run within the budget, in hand-out order (cheapest first; a WSD
        branch after its trunk, every trial assumed to run to its end)."""
        sim = copy.copy(self)
        sim.decisions = []
        sim._start()
        out = []
        while isinstance(t := sim.next_trial(), PlannedTrial):
            out.append(t)
            sim.observe(t.trial_id, {"step": t.D // t.batch})
        return out
