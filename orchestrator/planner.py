"""Decisions from the spec and the observations: which trials to run, in which order.

Pure Python (no Ray): the Tune searcher in `orchestrator/tune/` only delegates here.
This planner runs the spec's grid, cheapest trials first, within the compute budget;
law-guided search (issue: law-guided search) replaces `next_trial` with an acquisition rule.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from trainers.contract import Schedule, TrialConfig
from trainers.flops import training_flops
from trainers.model import count_params, shape_for

from .spec import SweepSpec


WAIT = "wait"  # next_trial(): nothing to start until a running trial reports back


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

    def record(self) -> dict[str, Any]:
        """The trial's config as stored and logged."""
        return asdict(self)


def _trial_id(n: int, d: int, lr: float, batch: int, seed: int) -> str:
    key = f"{n}|{d}|{lr:.6g}|{batch}|{seed}"
    return f"N{n}-D{d}-lr{lr:.3g}-b{batch}-s{seed}-{hashlib.sha1(key.encode()).hexdigest()[:6]}"


def plan_grid(spec: SweepSpec) -> list[PlannedTrial]:
    """Every trial of the spec's grid, cheapest first (ties broken deterministically)."""
    seq = spec.model.seq_len
    exact = spec.budget.flops == "exact"
    out = []
    for n_target in spec.model.sizes():
        shape = shape_for(n_target)
        counts = count_params(shape, max_seq_len=seq)
        workers, stage = spec.resources.for_size(n_target)
        for d_target in spec.tokens.for_size(counts.non_embedding):
            for batch in spec.batches():
                steps = max(1, math.ceil(d_target / batch))
                d = steps * batch
                flops = training_flops(shape, seq, d, exact=exact)
                for lr in spec.lrs():
                    for seed in spec.seeds:
                        out.append(
                            PlannedTrial(
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
                                flops=flops,
                                shape=shape.to_dict(),
                            )
                        )
    out.sort(key=lambda t: (t.flops, t.N, t.D, t.lr, t.batch, t.seed))
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
        schedule=Schedule(kind=s.kind, warmup=s.warmup, decay=s.decay, final_lr_frac=s.final_lr_frac),
        eval_every=spec.eval.every,
        eval_tokens=spec.eval.tokens,
        seed=trial.seed,
        zero_stage=trial.zero_stage,
        workers=trial.workers,
        micro_batch=spec.resources.micro_batch,
        precision="auto",
        checkpoint_dir=checkpoint_dir if spec.checkpoints else None,
        data=spec.data,
        data_cache=data_cache,
        exact_flops=spec.budget.flops == "exact",
        threads=spec.resources.threads,
    )


class GridPlanner:
    """Hands out the grid's trials in order until the grid or the compute budget is spent.

    Compute is committed when a trial is handed out (its planned FLOPs), so concurrent
    trials can never overrun the budget. Every planner has this interface: `next_trial()`,
    `observe()`, `resume()`, `runnable()`, `trial_cap`, `decisions`.
    """

    def __init__(self, spec: SweepSpec):
        self.spec = spec
        self.trials = plan_grid(spec)
        self.budget = spec.budget.total_flops
        self.committed = 0.0
        self._pending = list(self.trials)
        self.skipped: list[PlannedTrial] = []
        self.decisions: list[dict[str, Any]] = []

    @property
    def trial_cap(self) -> int:
        """Most trials this planner can hand out."""
        return len(self.runnable())

    def next_trial(self) -> Optional[PlannedTrial]:
        """The next trial to run, or None when the grid or the budget is exhausted."""
        while self._pending:
            trial = self._pending.pop(0)
            if self.budget is not None and self.committed + trial.flops > self.budget:
                self.skipped.append(trial)
                continue
            self.committed += trial.flops
            self.decisions.append({"trial_id": trial.trial_id, "action": "run",
                                   "why": "next grid point (cheapest first)"})
            return trial
        return None

    def observe(self, trial_id: str, result: Optional[dict[str, Any]]) -> None:
        """A trial ended with its last report (None if it failed); the grid ignores it."""

    def resume(self, results: dict[str, Optional[dict[str, Any]]]) -> None:
        """Trials that ended in an earlier run of this sweep: not run again, their compute counted."""
        done = set(results)
        self.committed += sum(t.flops for t in self.trials if t.trial_id in done)
        self._pending = [t for t in self._pending if t.trial_id not in done]

    def runnable(self) -> list[PlannedTrial]:
        """The trials that fit in the budget, cheapest first (what a fresh sweep will run)."""
        total, out = 0.0, []
        for t in self.trials:
            if self.budget is None or total + t.flops <= self.budget:
                total += t.flops
                out.append(t)
        return out


def make_planner(spec: SweepSpec):
    """The planner the spec asks for: the grid, or the law-guided search."""
    if spec.search.strategy == "law":
        from .search import LawGuidedPlanner

        return LawGuidedPlanner(spec, seed=spec.seed, config=spec.search)
    return GridPlanner(spec)
