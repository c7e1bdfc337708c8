"""WSD branching: one stable-phase trunk per (N, lr, batch, seed) and a cooldown branch per smaller D.

A warmup-stable-decay run to D tokens is, up to its decay, the same run as any longer WSD run
with the same warmup: constant lr at the peak. So the grid's WSD trials that differ only in D
need not each train from scratch (Hägele et al. 2024, "Scaling laws and compute-optimal
training beyond fixed training durations"):

- the **trunk** is the group's longest trial; it runs its whole schedule and saves a checkpoint
  at each shorter member's branch point;
- each shorter member is a **branch**: it restores the trunk's checkpoint (model, optimizer,
  step, tokens) at its branch point s = T − K (K = its decay steps) and trains only its own
  decay, K steps, ending exactly where a from-scratch run to its D would end.

Every member of a group uses the same warmup **in steps** — that of the shortest member
(`round(warmup · T_min)`), so that no run's warmup is longer than the spec asks of it — expressed
as each trial's own warmup fraction. A branch costs only its decay's FLOPs; its reports carry
the full run's tokens and FLOPs (it *is* the D-token run), and the sweep's compute accounting
subtracts the trunk's share (`Branch.flops`).

Pure: the planner applies a :class:`BranchPlan` to its trials; the trainers see only
`TrialConfig.checkpoint_steps` (trunk) and `branch_from` / `branch_step` (branch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol


class _Trial(Protocol):
    trial_id: str
    n_target: int
    D: int
    lr: float
    batch: int
    seed: int


@dataclass(frozen=True)
class Branch:
    """A branch's place in its trunk."""

    trunk_id: str
    step: int  # the branch restores the trunk's state after this many optimizer steps
    tokens: int  # tokens the trunk had trained on at that step
    total_steps: int  # the branch's (= the D-token run's) total steps


@dataclass
class BranchPlan:
    """Which trials are trunks and branches, and each one's schedule adjustments."""

    branches: dict[str, Branch] = field(default_factory=dict)  # branch id -> where it starts
    checkpoint_steps: dict[str, tuple[int, ...]] = field(default_factory=dict)  # trunk id -> branch points
    warmup: dict[str, float] = field(default_factory=dict)  # trial id -> its warmup fraction

    def trunk_of(self, trial_id: str) -> str | None:
        b = self.branches.get(trial_id)
        return b.trunk_id if b else None


def decay_steps(total_steps: int, warmup_steps: int, decay: float) -> int:
    """K, the steps of a WSD run's decay, as `trainers.schedules.lr_array` counts them.

    >>> decay_steps(100, 5, 0.2), decay_steps(10, 9, 0.2)
    (20, 1)
    """
    return min(total_steps - warmup_steps, int(round(decay * total_steps)))


def warmup_fraction(warmup_steps: int, total_steps: int) -> float:
    """The fraction f with round(f · total_steps) == warmup_steps (how the trainers read it).

    >>> f = warmup_fraction(5, 100); f, round(f * 100)
    (0.05, 5)
    """
    f = warmup_steps / total_steps
    if int(round(f * total_steps)) != warmup_steps:  # float rounding at a .5 boundary
        f = (warmup_steps + 1e-6) / total_steps
    return f


def plan_branches(trials: Iterable[_Trial], warmup: float, decay: float) -> BranchPlan:
    """Group WSD trials by (N, lr, batch, seed) and plan a trunk and its branches for each group.

    `warmup` and `decay` are the spec's fractions. A group member whose branch point would not
    lie in the trunk's stable phase (or before its own warmup ends) runs from scratch.

    >>> from types import SimpleNamespace as T
    >>> short, long = (T(trial_id=i, n_target=1, D=d, lr=1e-3, batch=1, seed=0) for i, d in (("a", 100), ("b", 200)))
    >>> plan = plan_branches([short, long], warmup=0.05, decay=0.2)
    >>> plan.branches["a"].trunk_id, plan.branches["a"].step, plan.checkpoint_steps["b"]
    ('b', 80, (80,))
    """
    groups: dict[tuple, list[_Trial]] = {}
    for t in trials:
        groups.setdefault((t.n_target, t.lr, t.batch, t.seed), []).append(t)
    plan = BranchPlan()
    for members in groups.values():
        members = sorted(members, key=lambda t: (t.D, t.trial_id))
        steps = {t.trial_id: max(1, t.D // t.batch) for t in members}
        w = int(round(warmup * min(steps.values())))
        for t in members:
            plan.warmup[t.trial_id] = warmup_fraction(w, steps[t.trial_id])
        trunk = members[-1]
        t_k = steps[trunk.trial_id]
        stable_end = t_k - decay_steps(t_k, w, decay)  # the trunk's lr is the peak on [w, stable_end)
        points = []
        for t in members[:-1]:
            t_i = steps[t.trial_id]
            if t_i >= t_k:
                continue  # same steps as the trunk (D rounds to the same batches): a twin, not a branch
            s = t_i - decay_steps(t_i, w, decay)
            if w <= s <= stable_end and s < t_i:
                plan.branches[t.trial_id] = Branch(trunk.trial_id, s, s * t.batch, t_i)
                points.append(s)
        if points:
            plan.checkpoint_steps[trunk.trial_id] = tuple(sorted(set(points)))
    return plan


def spent_flops(reported_flops: float, record: dict) -> float:
    """The FLOPs a trial itself spent, from a report's `flops` and its planned-trial record: a
    branch's reports count its trunk's share too (it *is* the D-token run), which it did not spend.

    >>> spent_flops(1e12, {"branch_flops": 8e11}), spent_flops(1e12, {})
    (200000000000.0, 1000000000000.0)
    """
    return float(reported_flops) - float(record.get("branch_flops", 0.0))
