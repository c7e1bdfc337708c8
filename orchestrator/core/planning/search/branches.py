"""WSD branching inside the transfer search: a single-run cell starts from a checkpoint of another
run of its size, so it trains only what that run did not (docs/search.md, "Branching and pruning").

After transfer's initial design every cell runs once at the learned (lr*, batch*). Under a WSD
schedule (`schedule.branch`) two runs of one size at the same (lr, batch) share everything up to
the shorter one's decay: warmup (the same number of steps), then the peak lr. So each such run saves
a checkpoint at the decay start of every budget of its size it passes (its own included), and a later
cell of that size starts from a finished run's checkpoint at the latest step its own schedule shares:

- a **cooldown branch** of a longer run (Hägele et al. 2024): restored at its own decay start, it
  trains only its decay (~`decay` of its FLOPs);
- an **extension** of a shorter run: restored at that run's decay start, it continues the stable
  phase and decays at its own length (a 2× longer budget trains ~60 % of its steps).

Either way it runs at the earlier run's (lr, batch) — a stable phase has one peak lr — while the
learned laws put the cell's own optimum elsewhere (lr* and batch* grow with D). It does so only where
the shared bowl of the joint surface fit (`laws.hparam_surface`) says the offset costs at most the
noise of one loss (`noise`):

    penalty = w·u² + w_b·v² + x·u·v  (w = w_lr, × the asymmetry above lr*),
    u = log(lr_run / lr*(N, D)), v = log(batch_run / batch*(D))

and the cell's loss enters the L(N, D) fit divided by exp(penalty) (`corrected_loss`): the loss the
bowl predicts at the cell's own law point. The acquisition counts a cell at the FLOPs it would
spend; a cell that a still-running run of its size would make cheaper waits for it (`offer`).

The law search (`plan_point`) has no single-run cells: each lattice run is planned the same way
(the size's shared warmup, checkpoints at its budgets' decay starts) and starts from a finished
**exact twin** — the same (N, lr, batch, seed) at another budget of its size — where one exists: the
same run up to the checkpoint, so no penalty and no correction.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Mapping, Optional, Sequence

from ...laws.hparam_surface import SurfaceFit
from ..branching import decay_steps, warmup_fraction
from ..design import Design, plan_trial
from ..trial import PlannedTrial
from ...resources import ResourceError
from .lattice import LAW_POINT, SearchCell

Predict = Callable[[float, float], tuple[Optional[float], Optional[float]]]
# what `plan_point` sets on a lattice run (`_scratch`, `_from_checkpoint`)
_PLAN_FIELDS = ("warmup", "checkpoint_steps", "branch_of", "branch_step", "branch_flops", "flops")


def enabled(design: Design) -> bool:
    """Whether the design asks for WSD branching (`schedule.branch`, a WSD schedule).

    >>> from orchestrator.core.planning.design import Design, plan_grid
    >>> d = Design("gpt", 64, (20000, 80000), ((640000, 1280000), (1280000,)), (1e-3, 3e-3, 9e-3), (1024, 2048), (0,))
    >>> from dataclasses import replace
    >>> enabled(d), enabled(replace(d, branch=True)), enabled(replace(d, branch=True, schedule="cosine"))
    (False, True, False)
    """
    return design.branching


def bowl_penalty(surface: Optional[SurfaceFit], u: float, v: float) -> float:
    """Log-loss cost of running log lr u and log batch v away from the optimum on the fitted bowl
    (inf without a joint surface: no offset can be judged).

    >>> from orchestrator.core.laws.hparams import BatchLaw, LrLaw
    >>> s = SurfaceFit(LrLaw(1.0, 0.0, 0.0), BatchLaw(1.0, 0.0), 0.01, 0.01, 0.0, 0, 0, 0.0, lr_asym=2.0)
    >>> round(bowl_penalty(s, 0.5, 0.0), 4), round(bowl_penalty(s, -0.5, 0.0), 4)
    (0.005, 0.0025)
    """
    if surface is None:
        return math.inf
    w = surface.lr_width * (surface.lr_asym if u > 0 else 1.0)
    return float(w * u * u + surface.batch_width * v * v + surface.cross * u * v)


def _steps(t: PlannedTrial) -> int:
    return max(1, t.D // t.batch)  # as core.planning.branching counts a WSD run's steps


class Branches:
    """The single runs the search planned per model size, their checkpoints, and what they offer."""

    def __init__(self, design: Design, cells: Sequence[SearchCell], noise: float):
        self.design = design
        self.noise = noise  # the most a run's offset from its cell's own law point may cost (one loss's noise)
        self.warmup, self.decay = float(design.warmup), float(design.decay)
        self.budgets: dict[int, list[float]] = {}  # size -> its cells' nominal D
        for c in cells:
            self.budgets.setdefault(c.key[0], []).append(c.key[1])
        self.runs: dict[str, dict[str, Any]] = {}  # trial id -> size, lr, batch, seed, warmup steps, ckpts, state

    # ---- planning ----------------------------------------------------------------------------
    def _at(self, cell: SearchCell, lr: float, batch: int, seed: int) -> Optional[PlannedTrial]:
        try:
            return plan_trial(self.design, cell.key[0], cell.key[1], lr, batch, seed)
        except ResourceError:
            return None

    def _decay_start(self, T: int, w: int) -> int:
        return T - decay_steps(T, w, self.decay)

    def _checkpoints(self, t: PlannedTrial, w: int, after: int) -> tuple[int, ...]:
        """Decay starts of every budget of t's size (at t's batch) that t's stable phase passes, after `after`."""
        own = self._decay_start(_steps(t), w)
        out = set()
        for d in self.budgets.get(t.n_target, []):
            T = max(1, int(math.ceil(d / t.batch)))  # whole batches, as plan_trial rounds D up
            s = self._decay_start(T, w)
            if after < s <= own and s >= w:
                out.add(s)
        return tuple(sorted(out))

    def _shared_warmup(self, t: PlannedTrial) -> int:
        """Warmup steps of every run of t's size at t's batch: the shortest budget's (so all can share it)."""
        shortest = min(self.budgets.get(t.n_target, [t.D]))
        return int(round(self.warmup * max(1, int(math.ceil(shortest / t.batch)))))

    def _scratch(self, t: PlannedTrial, w: int) -> PlannedTrial:
        return replace(t, warmup=warmup_fraction(w, _steps(t)), checkpoint_steps=self._checkpoints(t, w, 0))

    def _from_checkpoint(self, t: PlannedTrial, src: str, step: int, w: int) -> PlannedTrial:
        """t restored from run `src`'s checkpoint at `step`: it spends only the steps after it."""
        T = _steps(t)
        return replace(t, warmup=warmup_fraction(w, T), branch_of=src, branch_step=step,
                       branch_flops=t.flops * step / T, flops=t.flops * (1.0 - step / T),
                       checkpoint_steps=self._checkpoints(t, w, step))

    def _kind(self, t: PlannedTrial, step: int, w: int) -> str:
        return "cooldown branch" if step == self._decay_start(_steps(t), w) else "extension"

    def _shared_step(self, run: dict[str, Any], t: PlannedTrial) -> Optional[int]:
        """The latest checkpoint of `run` that t's schedule shares (after its warmup, up to its decay start)."""
        w = run["w"]
        usable = [s for s in run["ckpts"] if w <= s <= self._decay_start(_steps(t), w)]
        return max(usable) if usable else None

    def first(self, t: PlannedTrial) -> PlannedTrial:
        """A cell's run from scratch (no finished run offers a start): its warmup in steps that of the
        shortest budget of its size at its batch (so every later run of the size can share it), and
        checkpoints at the decay starts it passes."""
        w = self._shared_warmup(t)
        out = self._scratch(t, w)
        self._record(out, w)
        return out

    # ---- the law search: exact twins ---------------------------------------------------------
    def plan_point(self, t: PlannedTrial) -> tuple[PlannedTrial, str]:
        """The law search's run of lattice point `t` and why (pure: `hand` records it once handed out).

        Its **exact twin** is a finished run at the same (size, lr, batch, seed) and another budget:
        under the size's shared warmup both train the same steps up to the shorter one's decay start,
        so `t` starts from the twin's latest checkpoint its schedule shares — a cooldown branch of a
        longer twin (at its own decay start), an extension of a shorter one (at the twin's) — with
        no bowl penalty and no loss correction (the same run). Without one, from scratch, saving
        checkpoints at the decay starts of its size's budgets it passes, for its own twins.

        >>> from orchestrator.core.planning.design import Design, plan_grid
        >>> from orchestrator.core.planning.search.lattice import cells_of
        >>> d = Design("gpt", 64, (20000,), ((320000, 1280000),), (1e-3,), (1024,), (0,))  # the lattice, no grid trunks
        >>> cells = cells_of(plan_grid(d), d)
        >>> br = Branches(d, cells, noise=0.003)
        >>> short, long_ = (next(iter(c.trials.values())) for c in cells)
        >>> t, why = br.plan_point(short); br.hand(t); br.ended(t.trial_id, ok=True)
        >>> t.branch_of, t.checkpoint_steps
        (None, (250,))
        >>> u, why = br.plan_point(long_)
        >>> u.branch_of == t.trial_id, u.branch_step, round(u.flops / long_.flops, 2), why.split(" of ")[0]
        (True, 250, 0.8, 'WSD extension')
        """
        w = self._shared_warmup(t)
        best: Optional[tuple[int, str]] = None
        for tid, run in self.runs.items():
            if tid == t.trial_id or run["state"] != "ok" or \
                    (run["size"], run["lr"], run["batch"], run["seed"]) != (t.n_target, t.lr, t.batch, t.seed):
                continue
            step = self._shared_step(run, t)
            if step is not None and (best is None or step > best[0]):
                best = (step, tid)
        if best is None:
            out = self._scratch(t, w)
            why = ("WSD branching: from scratch (no finished exact twin), checkpoints at steps "
                   f"{list(out.checkpoint_steps)} for its twins" if out.checkpoint_steps
                   else "WSD branching: from scratch (no finished exact twin)")
            return out, why
        step, src = best
        out = self._from_checkpoint(t, src, step, w)
        return out, (f"WSD {self._kind(out, step, w)} of {src}, its exact twin (same N, lr, batch, seed; "
                     f"another budget), from its checkpoint at step {step}: spends {out.flops:.3g} FLOPs, "
                     f"not {t.flops:.3g}")

    @staticmethod
    def as_recorded(t: PlannedTrial, config: Mapping[str, Any]) -> PlannedTrial:
        """Lattice run `t` as an earlier run of the sweep planned it (`config`, its stored record): a run
        that run started and did not end continues from its own checkpoint, so it must keep the branch
        point, warmup and checkpoints it started with, whatever twins have finished since.

        >>> from orchestrator.core.planning.design import Design, plan_grid
        >>> t = plan_grid(Design("gpt", 64, (20000,), ((1280000,),), (1e-3,), (1024,), (0,)))[0]
        >>> u = Branches.as_recorded(t, {**t.record(), "branch_of": "twin", "branch_step": 250,
        ...                              "checkpoint_steps": [1000], "flops": 1.0})
        >>> u.branch_of, u.branch_step, u.checkpoint_steps, u.flops, u.lr == t.lr
        ('twin', 250, (1000,), 1.0, True)
        """
        got = {k: config[k] for k in _PLAN_FIELDS if k in config}
        got["checkpoint_steps"] = tuple(int(s) for s in got.get("checkpoint_steps", t.checkpoint_steps))
        return t if all(getattr(t, k) == v for k, v in got.items()) else replace(t, **got)

    def hand(self, t: PlannedTrial) -> None:
        """A run `plan_point` planned was handed out: its checkpoints count once it ends well."""
        self._record(t, self._shared_warmup(t))

    def _record(self, t: PlannedTrial, w: int) -> None:
        self.runs[t.trial_id] = {"size": t.n_target, "lr": t.lr, "batch": t.batch, "seed": t.seed, "w": w,
                                 "ckpts": t.checkpoint_steps, "state": "running"}

    def ended(self, trial_id: str, ok: bool) -> None:
        """A run ended: its checkpoints are usable only if it ran to its end."""
        if trial_id in self.runs:
            self.runs[trial_id]["state"] = "ok" if ok else "bad"

    def offer(self, cell: SearchCell, predict: Predict, surface: Optional[SurfaceFit],
              pending: bool = False) -> Optional[dict[str, Any]]:
        """The best start for `cell`'s run from a checkpoint — {trial, penalty, source, share} with the
        largest share of its steps already trained, among runs of its size within the bowl's noise — or
        None. `pending`: runs still going count too (what the cell would cost if it waited)."""
        lr, batch = predict(cell.N, cell.D)
        if lr is None or batch is None:
            return None
        best = None
        for tid, run in self.runs.items():
            if run["size"] != cell.key[0] or run["state"] == "bad" or (run["state"] == "running" and not pending):
                continue
            pen = bowl_penalty(surface, math.log(run["lr"] / lr), math.log(run["batch"] / batch))
            if not pen <= self.noise:
                continue
            t = self._at(cell, run["lr"], run["batch"], run["seed"])
            if t is None:
                continue
            step = self._shared_step(run, t)
            if step is None:
                continue
            w, share = run["w"], step / _steps(t)
            if best is None or (share, -pen) > (best["share"], -best["penalty"]):
                best = {"trial": t, "penalty": pen, "source": tid, "step": step, "share": share, "w": w,
                        "state": run["state"]}
        return best

    def cost(self, cell: SearchCell, predict: Predict, surface: Optional[SurfaceFit]) -> float:
        """FLOPs of the cell's one run if started now or after the runs of its size still going."""
        o = self.offer(cell, predict, surface, pending=True)
        return cell.flops * (1.0 - o["share"]) if o is not None else cell.flops

    def adopt(self, cell: SearchCell, offer: dict[str, Any], lr: float, batch: float) -> PlannedTrial:
        """The cell's one run from the offered checkpoint, queued; the penalty is kept for its loss."""
        step, w, src = offer["step"], offer["w"], offer["source"]
        t = self._from_checkpoint(offer["trial"], src, step, w)
        self._record(t, w)
        kind = self._kind(t, step, w)
        cell.open_info = {**cell.open_info, "branch_of": src, "branch_step": step, "bowl_penalty": offer["penalty"]}
        cell.start_from = f"WSD {kind} of {src} from step {step}"
        cell.queue = [LAW_POINT]
        cell.why[LAW_POINT] = (f"transfer + WSD branching: the cell's law point is lr*={lr:.3g}, batch*={batch:.0f}; "
                               f"it runs as a {kind} of {src} from its checkpoint at step {step} (lr={t.lr:.3g}, "
                               f"batch={t.batch}), {math.expm1(offer['penalty']):.3%} worse by the fitted bowl, "
                               f"which the cell's loss is corrected for; spends {t.flops:.3g} FLOPs, not "
                               f"{t.flops + t.branch_flops:.3g}")
        return t

    def summary(self, handed: Sequence[PlannedTrial]) -> dict[str, Any]:
        """Runs that started from a checkpoint and the FLOPs that saved them."""
        runs = [t for t in handed if t.branch_of and t.trial_id in self.runs]
        return {"runs": len(self.runs), "from_checkpoint": len(runs),
                "saved_flops": float(sum(t.branch_flops for t in runs))}


def corrected_loss(cell: SearchCell, loss: float) -> float:
    """A cell's best loss as the L(N, D) fit sees it: a branched run's divided by its bowl penalty.

    >>> c = SearchCell((1, 1), 1e6, 2e7, 1.2e14, [1e-3], [1024], {}, open_info={"bowl_penalty": 0.01})
    >>> round(corrected_loss(c, 3.0), 4)
    2.9701
    """
    return loss * math.exp(-float(cell.open_info.get("bowl_penalty", 0.0)))
