"""Sweep strategies for the efficiency benchmark, run over one shared grid of simulated trials.

Every strategy picks trials from the same planned grid (`orchestrator.config.trials.plan_grid` of one
spec, so every strategy runs byte-identical `TrialConfig`s and sees identical noise draws) and
ends with the same offline fit. Two ways to run the trials:

- **replay** (default): an in-process discrete-event loop in *simulated* time. `concurrency`
  trials run at once; each report arrives at the trial's start time plus its cumulative
  `step_time_s` (the world's throughput model), so reports of concurrent trials interleave as
  they would on a cluster of identical accelerators. Schedulers are the real objects (Ray Tune's
  `ASHAScheduler`, Optuna's `HyperbandPruner`, our `GridPlanner`), called with exactly what Ray
  Tune would pass them (`training_iteration` = report index, the report's metrics; on a stop or
  the last report, `on_trial_complete` with the last result, as `TuneController.stop_trial` does).
- **tuner**: the real `ray.tune.Tuner` (ASHA over the grid with `orchestrator.adapters.tune.trainable.run_trial`)
  or the real `orchestrator.app.session.run_sweep` (scalesweep). Slower (Ray's per-trial overhead),
  order driven by Ray's event loop instead of simulated time.
"""
from __future__ import annotations

import heapq
import math
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Union

from orchestrator.core.planning.branching import spent_flops
from orchestrator.core.planning import Done, Wait
from orchestrator.core.planning.trial import PlannedTrial
from orchestrator.config.planners import GridPlanner
from orchestrator.config.trials import plan_grid, trial_config
from orchestrator.config.planners import make_planner
from orchestrator.config.spec import SweepSpec, parse_spec
from trainers.contract import TrialConfig
from trainers.simulated import train
from trainers.worlds import World


@dataclass
class TrialRecord:
    """What one trial of a strategy did: its grid cell, the compute it spent and how it ended."""

    trial_id: str
    N: float  # the simulated model's N (the trial's n_params: what the world sees)
    D: int  # planned training tokens
    lr: float
    batch: int
    planned_flops: float
    flops: float  # spent: FLOPs at the last processed report
    iterations: int  # reports processed
    status: str  # finished | stopped | diverged
    final_loss: float  # last eval loss (NaN when diverged); a final loss only when finished

    def point(self) -> dict[str, Any]:
        """The fit's input row (N, D, lr, batch, loss, and the trial id a search's loss correction reads)."""
        return {"N": self.N, "D": self.D, "lr": self.lr, "batch": self.batch, "loss": self.final_loss,
                "trial_id": self.trial_id}


class Grid:
    """The planned grid of one spec, its trial configs and their simulated reports (memoised)."""

    def __init__(self, spec: SweepSpec, world: World):
        self.spec = spec
        self.world = world
        self.trials: list[PlannedTrial] = plan_grid(spec)
        self.by_id = {t.trial_id: t for t in self.trials}
        self._reports: dict[tuple, list[dict[str, float]]] = {}
        # Optuna's categorical space: (n_target, tokens-per-param index, lr, batch) -> trial.
        self.sizes = sorted({t.n_target for t in self.trials})
        self.lrs = sorted({t.lr for t in self.trials})
        self.batches = sorted({t.batch for t in self.trials})
        self.cells: dict[tuple, PlannedTrial] = {}
        self.ratio_index: dict[str, int] = {}
        groups: dict[tuple, list[PlannedTrial]] = {}
        for t in self.trials:
            groups.setdefault((t.n_target, t.lr, t.batch, t.seed), []).append(t)
        self.n_ratios = 0
        for (n, lr, b, _seed), ts in groups.items():
            for i, t in enumerate(sorted(ts, key=lambda t: t.D)):
                self.cells[(n, i, lr, b)] = t
                self.ratio_index[t.trial_id] = i
                self.n_ratios = max(self.n_ratios, i + 1)

    @property
    def flops(self) -> float:
        """Planned FLOPs of the whole grid."""
        return sum(t.flops for t in self.trials)

    def adopt(self, t: PlannedTrial) -> None:
        """A trial a planner handed out: made off the grid (transfer's learned point; its cell is the
        nearest token budget), or a grid trial re-planned (the law search's WSD runs: `by_id` holds the
        version that ran)."""
        if t.trial_id not in self.by_id:
            ds = self.spec.tokens.for_size(t.N)
            self.ratio_index[t.trial_id] = min(range(len(ds)), key=lambda i: abs(math.log(t.D / ds[i])))
        self.by_id[t.trial_id] = t

    def nominal_D(self, trial_id: str) -> float:
        """The trial's tokens before rounding up to whole batches (ratio × N): one value per (N, D) cell."""
        return self.by_id[trial_id].cell.D

    def config(self, t: PlannedTrial) -> TrialConfig:
        """The trainer's config of a planned trial (no checkpoints, no data cache: simulated)."""
        return trial_config(self.spec, t, None, None)

    def reports(self, t: PlannedTrial) -> list[dict[str, float]]:
        """Every report the simulated trainer makes for this trial."""
        key = (t.trial_id, t.warmup, t.branch_step)  # one trial id, run under another schedule or branch point
        if key not in self._reports:
            out: list[dict[str, float]] = []
            train(self.config(t), out.append, self.world)
            self._reports[key] = out
        return self._reports[key]


# ---------------------------------------------------------------------------------------------
# sources (what to run next) and schedulers (whether a running trial continues)
class Source(Protocol):
    def next(self) -> Optional[PlannedTrial]: ...
    def done(self, run: int, t: PlannedTrial, rec: TrialRecord) -> None: ...


class ListSource:
    """A fixed sequence of trials."""

    def __init__(self, trials: list[PlannedTrial]):
        self._todo = list(trials)

    def next(self) -> Optional[PlannedTrial]:
        return self._todo.pop(0) if self._todo else None

    def done(self, run: int, t: PlannedTrial, rec: TrialRecord) -> None:
        pass


class PlannerSource:
    """scalesweep's planner, exactly as `orchestrator.adapters.tune.searcher.PlannerSearcher` drives it
    (`next` may return WAIT: nothing to start until a running trial ends; None: the planner is Done)."""

    def __init__(self, planner, grid: Optional[Grid] = None):
        self.planner = planner
        self.grid = grid

    def next(self) -> Union[PlannedTrial, Wait, None]:
        t = self.planner.next_trial()
        if isinstance(t, Done):
            return None
        if self.grid is not None and isinstance(t, PlannedTrial):
            self.grid.adopt(t)
        return t

    def report(self, t: PlannedTrial, report: dict[str, float]) -> None:
        self.planner.observe_report(t.trial_id, report)

    def done(self, run: int, t: PlannedTrial, rec: TrialRecord) -> None:
        self.planner.observe(t.trial_id, None if rec.status == "failed" else {
            "eval_loss": rec.final_loss, "flops": rec.flops, "done": float(rec.status == "finished")})


class Scheduler(Protocol):
    def add(self, run: int, t: PlannedTrial) -> None: ...
    def result(self, run: int, t: PlannedTrial, iteration: int, report: dict[str, float]) -> bool: ...
    def complete(self, run: int, t: PlannedTrial, iteration: int, report: dict[str, float], finished: bool) -> None: ...


class NoScheduler:
    """FIFO: every trial runs to its end."""

    def add(self, run, t): pass

    def result(self, run, t, iteration, report) -> bool:
        return False

    def complete(self, run, t, iteration, report, finished) -> None: pass


class TuneScheduler:
    """Drives any Ray Tune `TrialScheduler` (e.g. ASHAScheduler) as the Tune controller would."""

    def __init__(self, scheduler, grid: Optional["Grid"] = None):
        from ray.tune.experiment import Trial

        self.scheduler = scheduler
        self.grid = grid  # when given, stubs carry config["trial"] (schedulers that read the contract)
        self._trials: dict[int, Any] = {}
        self._Trial = Trial

    @staticmethod
    def _result(iteration: int, report: dict[str, float]) -> dict[str, Any]:
        return {**report, "training_iteration": iteration}

    def add(self, run: int, t: PlannedTrial) -> None:
        # as the controller's trial config: the contract, and the cell's nominal D (the pruner's peers)
        config = ({"trial": self.grid.config(t).to_dict(), "backend": "simulated", "cell_D": t.cell.D,
                   "branch_of": t.branch_of} if self.grid is not None else {})
        stub = self._Trial("run_trial", config=config, stub=True)
        self._trials[run] = stub
        self.scheduler.on_trial_add(None, stub)

    def result(self, run: int, t: PlannedTrial, iteration: int, report: dict[str, float]) -> bool:
        from ray.tune.schedulers import TrialScheduler

        return self.scheduler.on_trial_result(None, self._trials[run], self._result(iteration, report)) == TrialScheduler.STOP

    def complete(self, run: int, t: PlannedTrial, iteration: int, report: dict[str, float], finished: bool) -> None:
        self.scheduler.on_trial_complete(None, self._trials.pop(run), self._result(iteration, report))


class OptunaTPE:
    """Optuna TPE sampler + Hyperband pruner over the grid's categorical space (ask/tell, report by report).

    The objective is the trial's final eval loss (what a user hands Optuna); a diverged trial
    is told FAIL, a pruned one PRUNED. Intermediate values are reported at step = report index.
    """

    def __init__(self, grid: Grid, n_trials: int, seed: int):
        import optuna

        import warnings

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", module="optuna")
        self.optuna = optuna
        self.grid = grid
        # named: HyperbandPruner's brackets hash the study's name (an unnamed study is not reproducible)
        self.study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
                                         pruner=optuna.pruners.HyperbandPruner(), study_name=f"optuna-tpe-{seed}")
        self.left = n_trials
        self._asked = None  # the optuna trial behind the last `next()`, bound to its run by `add`
        self.live: dict[int, Any] = {}  # run -> optuna trial

    # source
    def next(self) -> Optional[PlannedTrial]:
        if self.left <= 0:
            return None
        self.left -= 1
        g = self.grid
        ot = self.study.ask()
        n = ot.suggest_categorical("N", g.sizes)
        i = ot.suggest_categorical("tokens_per_param_index", list(range(g.n_ratios)))
        lr = ot.suggest_categorical("lr", g.lrs)
        b = ot.suggest_categorical("batch", g.batches)
        self._asked = ot
        return g.cells[(n, i, lr, b)]

    def done(self, run: int, t: PlannedTrial, rec: TrialRecord) -> None:
        ot = self.live.pop(run)
        S = self.optuna.trial.TrialState
        if rec.status == "finished":
            self.study.tell(ot, rec.final_loss)
        elif rec.status == "stopped":
            self.study.tell(ot, state=S.PRUNED)
        else:
            self.study.tell(ot, state=S.FAIL)

    # scheduler
    def add(self, run: int, t: PlannedTrial) -> None:
        self.live[run], self._asked = self._asked, None

    def result(self, run: int, t: PlannedTrial, iteration: int, report: dict[str, float]) -> bool:
        ot = self.live[run]
        loss = report["eval_loss"]
        if not math.isfinite(loss):
            return False  # a diverged trial ends on this report anyway; Optuna rejects NaN values
        ot.report(loss, step=iteration)
        return ot.should_prune()

    def complete(self, run, t, iteration, report, finished) -> None: pass


# ---------------------------------------------------------------------------------------------
def replay(grid: Grid, source: Source, scheduler: Scheduler, concurrency: int) -> list[TrialRecord]:
    """Run trials from `source` under `scheduler`, `concurrency` at a time, in simulated time."""
    events: list[tuple[float, int, int]] = []  # (time, tie-break, slot)
    running: dict[int, tuple[int, PlannedTrial, float, int]] = {}  # slot -> (run, trial, start, next report index)
    records: list[TrialRecord] = []
    counter = 0
    exhausted = False
    idle: set[int] = set()  # slots waiting for the source (it said WAIT)

    def start(slot: int, now: float) -> bool:
        nonlocal counter, exhausted
        if exhausted:
            return False
        t = source.next()
        if t is None or isinstance(t, Wait):
            exhausted = t is None
            idle.add(slot)
            return False
        idle.discard(slot)
        counter += 1
        scheduler.add(counter, t)
        reps = grid.reports(t)
        running[slot] = (counter, t, now, 0)
        heapq.heappush(events, (now + reps[0]["step_time_s"], counter, slot))
        return True

    idle.update(range(concurrency))
    for slot in range(concurrency):
        if not start(slot, 0.0):
            break
    while events:
        now, _, slot = heapq.heappop(events)
        run, t, t0, i = running[slot]
        reps = grid.reports(t)
        rep = reps[i]
        last = i == len(reps) - 1
        if hasattr(source, "report"):
            source.report(t, rep)  # as PlannerSearcher.on_trial_result (a WSD trunk releases branches)
        stop = scheduler.result(run, t, i + 1, rep)
        if stop or last:
            finished = last and math.isfinite(rep["eval_loss"])
            status = "finished" if finished else ("diverged" if last else "stopped")
            scheduler.complete(run, t, i + 1, rep, finished)
            # a WSD branch's reports count its trunk's share, which it did not spend
            rec = TrialRecord(t.trial_id, float(t.n_target), t.D, t.lr, t.batch, t.flops,
                              spent_flops(rep["flops"], {"branch_flops": t.branch_flops}), i + 1, status, rep["eval_loss"])
            records.append(rec)
            source.done(run, t, rec)
            del running[slot]
            idle.add(slot)
            for s in sorted(idle):  # a trial's end may unblock a waiting source
                if not start(s, now):
                    break
        else:
            running[slot] = (run, t, t0, i + 1)
            counter += 1
            heapq.heappush(events, (t0 + reps[i + 1]["step_time_s"], counter, slot))
    return records


def completed_points(records: list[TrialRecord]) -> list[dict[str, Any]]:
    """Fit input: trials that ran to their end with a finite final loss (stopped trials excluded)."""
    return [r.point() for r in records if r.status == "finished"]


# ---------------------------------------------------------------------------------------------
# strategies
@dataclass
class StrategyRun:
    """One strategy's trials for one seed, how they were run, and what was active."""

    records: list[TrialRecord]
    mode: str
    notes: list[str] = field(default_factory=list)
    active_parts: Optional[dict[str, Any]] = None
    # FLOPs the parts saved: {"pruner_flops", "pruner_stopped", "branching_flops", "branches"} (scalesweep)
    saved: Optional[dict[str, float]] = None
    # The product's own proposal for the target (run_sweep's fit, with its hparam rule) when it ran.
    product_proposal: Optional[dict[str, Any]] = None

    @property
    def compute(self) -> float:
        """FLOPs spent (stopped and diverged trials count up to their last report)."""
        return sum(r.flops for r in self.records)

    @property
    def committed(self) -> float:
        """Planned FLOPs of every trial started (what a budget commits when it hands a trial out)."""
        return sum(r.planned_flops for r in self.records)


def run_full_grid(grid: Grid, concurrency: int) -> StrategyRun:
    """Every trial of the grid to its end."""
    return StrategyRun(replay(grid, ListSource(grid.trials), NoScheduler(), concurrency), "replay")


def _shuffled(grid: Grid, seed: int) -> list[PlannedTrial]:
    order = list(grid.trials)
    random.Random(seed).shuffle(order)
    return order


def run_random(grid: Grid, budget: float, seed: int, concurrency: int) -> StrategyRun:
    """A seeded random subset of the grid whose planned FLOPs fit in `budget` (filled greedily)."""
    chosen, spent = [], 0.0
    for t in _shuffled(grid, seed):
        if spent + t.flops <= budget * (1 + 1e-12):
            chosen.append(t)
            spent += t.flops
    return StrategyRun(replay(grid, ListSource(chosen), NoScheduler(), concurrency), "replay",
                       [f"random subset: {len(chosen)}/{len(grid.trials)} trials within {budget:.3g} FLOPs"])


def asha_scheduler():
    """Ray Tune's ASHA with its defaults (time_attr=training_iteration, max_t=100, grace 1, rf 4, 1 bracket)."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(metric="eval_loss", mode="min")


def run_asha(grid: Grid, seed: int, concurrency: int, mode: str = "replay", world_ref: str = "tiny") -> StrategyRun:
    """ASHA (defaults) over the whole grid in a seeded random order (a grid_search in shuffled order)."""
    order = _shuffled(grid, seed)
    if mode == "tuner":
        return _asha_tuner(grid, order, concurrency, world_ref)
    return StrategyRun(replay(grid, ListSource(order), TuneScheduler(asha_scheduler()), concurrency), "replay")


def _asha_tuner(grid: Grid, order: list[PlannedTrial], concurrency: int, world_ref: str) -> StrategyRun:
    import ray
    from ray import tune

    from orchestrator.adapters.tune.trainable import run_trial

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    cpus = ray.cluster_resources().get("CPU", 1.0)
    configs = [grid.config(t).to_dict() for t in order]
    with tempfile.TemporaryDirectory(prefix="asha-") as tmp:
        tuner = tune.Tuner(
            tune.with_resources(run_trial, {"CPU": cpus / concurrency}),
            param_space={"trial": tune.grid_search(configs), "backend": "simulated", "world": world_ref},
            tune_config=tune.TuneConfig(scheduler=asha_scheduler(), max_concurrent_trials=concurrency, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=tmp, verbose=0, failure_config=tune.FailureConfig(max_failures=0)),
        )
        results = tuner.fit()
        records = []
        for res in results:
            tid = res.config["trial"]["trial_id"]
            t = grid.by_id[tid]
            df = res.metrics_dataframe
            last = df.iloc[-1] if df is not None and len(df) else None
            if last is None:
                continue
            complete = int(last["tokens"]) >= t.D  # ran to its planned end (not stopped by ASHA)
            loss = float(last["eval_loss"])
            status = "diverged" if not math.isfinite(loss) else ("finished" if complete else "stopped")
            records.append(TrialRecord(tid, float(t.n_target), t.D, t.lr, t.batch, t.flops, float(last["flops"]),
                                       len(df), status, loss))
    return StrategyRun(records, "tuner", [f"real ray.tune.Tuner, {concurrency} concurrent trials, reuse_actors"])


def run_optuna(grid: Grid, seed: int, concurrency: int) -> StrategyRun:
    """Optuna TPE + HyperbandPruner (defaults) driven directly, as many trials as the grid has."""
    opt = OptunaTPE(grid, len(grid.trials), seed)
    records = replay(grid, opt, opt, concurrency)
    dup = len(records) - len({r.trial_id for r in records})
    return StrategyRun(records, "replay", [f"optuna {len(records)} trials ({dup} repeats of an already-run cell)"])


def scalesweep_parts(spec: SweepSpec) -> dict[str, Any]:
    """Which parts of scalesweep a spec turns on (the planner kind, search, pruner, WSD branching)."""
    fields = type(spec).model_fields

    def enabled(name: str) -> bool:
        if name not in fields or getattr(spec, name) is None:
            return False
        sec = getattr(spec, name)
        if hasattr(sec, "enabled"):
            return bool(sec.enabled)
        # search.strategy: grid | law (a kind-like field: anything but the grid turns it on)
        kind = getattr(sec, "strategy", getattr(sec, "kind", None))
        return kind not in (None, "none", "grid")

    parts = {
        "planner": "grid",
        "search": enabled("search"),
        "pruner": enabled("pruning"),
        # the grid, transfer and law plan branches (docs/search.md)
        "wsd_branching": bool(spec.schedule.branch) and spec.schedule.kind == "wsd",
    }
    missing = [n for n in ("search", "pruning") if n not in fields]
    active = [k for k in ("search", "pruner", "wsd_branching") if parts[k]]
    parts["note"] = ("active: " + ", ".join(active) if active else "grid planner only") + (
        "; not in the spec yet: " + ", ".join(f"spec.{n}" for n in missing) if missing else "")
    if parts["search"]:
        parts["planner"] = f"search.strategy={spec.search.strategy}"
    return parts


def our_pruner_scheduler():
    """Our pruner's Tune scheduler with its default PruneConfig, or None while it does not exist."""
    try:
        from orchestrator.adapters.tune.scheduler import PrunerScheduler
    except ImportError:
        return None
    return PrunerScheduler()


def saved_by_parts(records: list[TrialRecord], trials: dict[str, PlannedTrial]) -> dict[str, float]:
    """Compute the pruner and WSD branching saved: a stopped trial's planned FLOPs it did not run,
    a branch's trunk share (what it would have cost from scratch minus its decay)."""
    stopped = [r for r in records if r.status == "stopped"]
    branches = [trials[r.trial_id] for r in records if r.trial_id in trials and trials[r.trial_id].branch_of]
    return {"pruner_flops": float(sum(max(0.0, r.planned_flops - r.flops) for r in stopped)),
            "pruner_stopped": len(stopped),
            "branching_flops": float(sum(t.branch_flops for t in branches)), "branches": len(branches)}


def replay_planner(grid: Grid, spec: SweepSpec, concurrency: int):
    """The spec's planner (`make_planner`) driven as `PlannerSearcher` drives it, under the spec's
    pruner when `pruning.enabled` (the controller's `PrunerScheduler`, inline: deterministic);
    returns (planner, records)."""
    planner = make_planner(spec)
    sched: Scheduler = NoScheduler()
    if spec.pruning.enabled:
        from orchestrator.adapters.tune.scheduler import PrunerScheduler

        sched = TuneScheduler(PrunerScheduler(spec.pruning, background=False, process=False), grid)
    return planner, replay(grid, PlannerSource(planner, grid), sched, concurrency)


def run_scalesweep(grid: Grid, spec_data: dict[str, Any], concurrency: int, mode: str = "auto",
                   pruner: bool = False) -> StrategyRun:
    """scalesweep on the benchmark spec: the planner in replay, or the real `run_sweep` (mode=tuner).

    `auto` replays a search planner (law, transfer) with the spec's pruner (`PrunerScheduler`, the
    controller's Tune scheduler, inline) and the search's own WSD branches, and runs the grid
    planner through the real controller as soon as the spec enables pruning or branching.
    """
    spec = parse_spec(spec_data)
    parts = scalesweep_parts(spec)
    if pruner:
        sched = our_pruner_scheduler()
        if sched is None:
            raise SystemExit("--scalesweep-pruner: orchestrator/adapters/tune/scheduler.py (PrunerScheduler) does not exist yet")
        parts = {**parts, "pruner": True, "note": parts["note"] + "; pruner: PrunerScheduler() defaults, in replay"}
        recs = replay(grid, PlannerSource(GridPlanner(spec)), TuneScheduler(sched, grid), concurrency)
        return StrategyRun(recs, "replay", ["GridPlanner + orchestrator.adapters.tune.scheduler.PrunerScheduler (defaults)"], parts)
    if mode == "auto":  # the searcher only forwards to the planner: the replay drives it exactly
        mode = "tuner" if (parts["pruner"] or parts["wsd_branching"]) and not parts["search"] else "replay"
    if mode == "replay":
        if (parts["pruner"] or parts["wsd_branching"]) and not parts["search"]:
            raise SystemExit("--scalesweep-mode replay: the grid's pruner and WSD branching run only through "
                             "run_sweep (tuner)")
        planner, recs = replay_planner(grid, spec, concurrency)
        saved = saved_by_parts(recs, grid.by_id)
        parts = {**parts, "saved": saved}
        if not parts["search"]:
            return StrategyRun(recs, "replay", ["orchestrator.config.planners.GridPlanner driven as PlannerSearcher does"],
                               parts, saved=saved)
        # The product's own proposal, as run_sweep's summary makes it: its learned lr/batch laws.
        from orchestrator.app.query import SweepData, sweep_fit

        advice = planner.hparam_advice()
        fit = sweep_fit(SweepData(completed_points(recs), [], []), spec, spec.budget.targets, bootstrap=0,
                        advice=advice)
        notes = [f"{type(planner).__name__} driven as PlannerSearcher does; regret scores its own proposal "
                 "(its learned lr/batch laws)"]
        if parts["pruner"]:
            notes.append("pruner: orchestrator.adapters.tune.scheduler.PrunerScheduler(spec.pruning), inline, as run_sweep installs it")
        return StrategyRun(recs, "replay", notes, parts, product_proposal=fit.proposals[0] if fit.proposals else None,
                           saved=saved)
    return _scalesweep_tuner(grid, spec_data, concurrency, parts)


def _scalesweep_tuner(grid: Grid, spec_data: dict[str, Any], concurrency: int, parts: dict[str, Any]) -> StrategyRun:
    import ray

    from orchestrator.app.session import run_sweep
    from orchestrator.io.store import ObservationStore

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="scalesweep-") as tmp:
        data = dict(spec_data, output_dir=str(Path(tmp) / "sweep"))
        data["resources"] = {**data.get("resources", {}), "max_concurrent": concurrency}
        outcome = run_sweep(parse_spec(data), show_progress=False)
        proposal = outcome.fit.proposals[0] if outcome.fit.proposals else None
        store = ObservationStore(outcome.sweep_dir)
        trials = store.trials()
        last: dict[str, dict] = {}
        count: dict[str, int] = {}
        for row in store.observations().to_pylist():
            last[row["trial_id"]] = row
            count[row["trial_id"]] = count.get(row["trial_id"], 0) + 1
        records = []
        for tid, rec in trials.items():
            if tid not in last or not rec["config"]:
                continue
            cfg = rec["config"]
            if tid not in grid.by_id:  # planned by the search off the grid (transfer's learned point)
                grid.adopt(PlannedTrial(**{**cfg, "checkpoint_steps": tuple(cfg.get("checkpoint_steps") or ()),
                                           "shape": dict(cfg["shape"])}))
            t = grid.by_id[tid]
            row = last[tid]
            status = {"finished": "finished", "diverged": "diverged"}.get(rec["status"], "stopped")
            if status == "finished" and int(row["tokens"]) < t.D:
                status = "stopped"  # a trial a scheduler stopped is not a final loss
            spent = spent_flops(row["flops"], rec["config"] or {})
            records.append(TrialRecord(tid, float(t.n_target), t.D, t.lr, t.batch, t.flops, spent,
                                       count[tid], status, float(row["eval_loss"])))
    saved = saved_by_parts(records, grid.by_id)
    return StrategyRun(records, "tuner", ["real orchestrator.app.session.run_sweep (Ray Tune, store, MLflow); "
                                          "regret scores run_sweep's own proposal"], {**parts, "saved": saved},
                       product_proposal=proposal, saved=saved)
