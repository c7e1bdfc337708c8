"""Controller overhead: simulated trials through the real Ray Tune Tuner; our scheduler and planner vs ASHA.

Each arm runs in its own driver process (its peak RSS is its own) and builds a real
`ray.tune.Tuner` as `orchestrator.app.session.run_sweep` builds it: GridPlanner → PlannerSearcher,
SweepCallback → ObservationStore + MLflow (SQLite, calls in a helper process), `run_trial` with the
simulated backend, `reuse_actors=True`, `concurrency` trials at once, run_sweep's Tune settings.

- `scalesweep` (all `--trials`): our `PrunerScheduler` (default `PruneConfig`; the pure pruner in
  its helper process). The same scheduler calls Tune makes on it are also made, with the same
  arguments, on a *shadow* Ray Tune `ASHAScheduler` (defaults; decisions not applied; once it
  says STOP for a trial it gets that trial's `on_trial_complete` and no more of its results,
  as Tune would do): both schedulers' per-report decision latencies on identical inputs.
- `asha` (the first `--asha-trials` of the same grid, under `--asha-time-limit-s`): the same
  Tuner with `ASHAScheduler` as the Tuner's scheduler, for trials/s and driver memory against
  the scalesweep arm over the same first trials (its timeline).
- `scalesweep-keep` (only when named in `--arms`): the scalesweep arm without run_sweep's
  `ForgetEndedTrials`, so Ray Tune keeps every ended trial as it did before: driver memory per
  trial side by side with the scalesweep arm in one run.

Driver memory: RSS growth per ended trial (least-squares slope over the timeline's later three
quarters); with `--trace-memory`, the Python allocations kept between a quarter and all of the
trials (or the two counts of `--trace-at`), per trial and by traceback (tracemalloc; slows the
driver several-fold). `--memory` is the cheap mode for that figure at 10,000 trials: the arms
`scalesweep-keep,scalesweep`, each trial a real Tune trial of the simulated backend that reports
once (at its last step), no MLflow, no shadow ASHA; the timeline every 1/40 of the trials.

Timed per call in the driver: `planner.suggest` (planner decision per trial),
`scheduler.on_trial_result` (what Tune's loop waits for per report), `pruner.on_report` (the
pruner's own work per report, timed inside its helper process; `pruner_call.*` are the worker
thread's round trips to it, a run of queued reports per call), `shadow.on_trial_result` (ASHA's decision per report), `callback.on_trial_result`
(store + MLflow per report), and the `on_trial_complete` of each. Plus peak RSS and CPU time of
the driver and of its helper processes, a timeline (trials ended, seconds, RSS), and, separately,
`ObservationStore.append` rows/s. If an arm hits its time limit, its figures cover the trials that
ended and the wall time is extrapolated (said so in the output).

    python -m benchmarks.overhead --trials 10000 --json results/overhead-10k.json
    python -m benchmarks.overhead --quick --json /tmp/overhead.json     # smoke test
    python -m benchmarks.overhead --trials 200 --arms scalesweep-keep,scalesweep --asha-trials 0   # memory
    python -m benchmarks.overhead --memory --trials 10000 --json results/overhead-memory-10k.json  # memory, cheap
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from array import array
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import numpy as np

from orchestrator.adapters.tune.callback import SweepCallback
from orchestrator.adapters.tune.pruner_process import ProcessPruner
from orchestrator.adapters.tune.searcher import PlannerSearcher

# driver-side: name -> seconds per call (8 bytes a call, not a float object's 32: the driver's memory is measured too)
TIMINGS: dict[str, Any] = defaultdict(lambda: array("d"))
EVAL_EVERY = 60  # steps between evaluations in the benchmark grid (see overhead_spec)
ONE_REPORT = 100_000  # --memory: steps between evaluations beyond any trial's (3,906 at most): one report, the last


def _timed(name: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        TIMINGS[name].append(time.perf_counter() - t0)


class TimedPlannerSearcher(PlannerSearcher):
    """PlannerSearcher whose decisions are timed (suggest per trial, observe per completed trial)."""

    def suggest(self, trial_id):
        return _timed("planner.suggest", super().suggest, trial_id)

    def on_trial_complete(self, trial_id, result=None, error=False):
        return _timed("planner.on_trial_complete", super().on_trial_complete, trial_id, result, error)


class TimedSweepCallback(SweepCallback):
    """SweepCallback whose per-report work (store append, MLflow log, display) is timed; keeps a timeline."""

    def __init__(self, *args, timeline_every: int = 500, snapshots_at: tuple[int, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.t0 = time.perf_counter()
        self.ended = 0
        self.timeline_every = max(1, timeline_every)
        self.timeline: list[dict[str, float]] = []
        self.snapshots_at = set(snapshots_at)  # trials ended at which to take a tracemalloc snapshot
        self.snapshots: dict[int, Any] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        return _timed("callback.on_trial_result", super().on_trial_result, iteration, trials, trial, result, **info)

    def _ended(self) -> None:
        self.ended += 1
        if self.ended % self.timeline_every == 0:
            self.timeline.append({"trials_ended": self.ended, "s": time.perf_counter() - self.t0,
                                  "rss_mb": _rss_mb(), "reports": len(TIMINGS["callback.on_trial_result"])})
        if self.ended in self.snapshots_at:
            import gc
            import tracemalloc

            gc.collect()
            self.snapshots[self.ended] = tracemalloc.take_snapshot()

    def on_trial_complete(self, iteration, trials, trial, **info):
        out = super().on_trial_complete(iteration, trials, trial, **info)
        self._ended()
        return out

    def on_trial_error(self, iteration, trials, trial, **info):
        out = super().on_trial_error(iteration, trials, trial, **info)
        self._ended()
        return out

    def __getstate__(self):
        return {**super().__getstate__(), "timeline": self.timeline, "snapshots_at": set(), "snapshots": {}}


class TimedProcessPruner(ProcessPruner):
    """The pruner in its helper process; each call (a batch of reports) timed on the scheduler's worker
    thread, round trip included (the pruner's own seconds per call are timed in the helper)."""

    def on_report(self, *args, **kwargs):
        return _timed("pruner_call.on_report", super().on_report, *args, **kwargs)

    def on_reports(self, batch):
        return _timed("pruner_call.on_reports", super().on_reports, batch)

    def on_complete(self, *args, **kwargs):
        return _timed("pruner_call.on_complete", super().on_complete, *args, **kwargs)


def _timed_scheduler(base: type, label: str) -> type:
    """A subclass of a Ray Tune TrialScheduler whose on_trial_result / on_trial_complete are timed.

    With ``shadow`` set (an ASHAScheduler), every call Tune makes on this scheduler is also made
    on the shadow, as Tune would make it were the shadow the Tuner's scheduler, and timed apart
    (``shadow.*``): the same (trial, result) stream, so the two schedulers' per-report decision
    latencies are measured on identical inputs. The shadow's decisions are not applied; once it
    says STOP for a trial it gets that trial's ``on_trial_complete`` (as Tune calls it on a
    stopped trial) and none of its later results.
    """
    from ray.tune.schedulers import TrialScheduler

    def on_trial_add(self, tune_controller, trial):
        base.on_trial_add(self, tune_controller, trial)
        if self.shadow is not None:
            _timed("shadow.on_trial_add", self.shadow.on_trial_add, tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        decision = _timed(label, base.on_trial_result, self, tune_controller, trial, result)
        if self.shadow is not None and trial.trial_id not in self.shadow_done:
            d = _timed("shadow.on_trial_result", self.shadow.on_trial_result, tune_controller, trial, result)
            if d == TrialScheduler.STOP:
                self.shadow_done.add(trial.trial_id)
                self.shadow_stops += 1
                _timed("shadow.on_trial_complete", self.shadow.on_trial_complete, tune_controller, trial, result)
        return decision

    def on_trial_complete(self, tune_controller, trial, result):
        out = _timed(label.replace("on_trial_result", "on_trial_complete"), base.on_trial_complete, self,
                     tune_controller, trial, result)
        if self.shadow is not None and trial.trial_id not in self.shadow_done:
            self.shadow_done.add(trial.trial_id)
            _timed("shadow.on_trial_complete", self.shadow.on_trial_complete, tune_controller, trial, result)
        return out

    def on_trial_error(self, tune_controller, trial):
        base.on_trial_error(self, tune_controller, trial)
        if self.shadow is not None and trial.trial_id not in self.shadow_done:
            self.shadow_done.add(trial.trial_id)
            self.shadow.on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial):
        base.on_trial_remove(self, tune_controller, trial)
        if self.shadow is not None and trial.trial_id not in self.shadow_done:
            self.shadow_done.add(trial.trial_id)
            self.shadow.on_trial_remove(tune_controller, trial)

    def __init__(self, *args, shadow=None, **kwargs):
        base.__init__(self, *args, **kwargs)
        self.shadow, self.shadow_done, self.shadow_stops = shadow, set(), 0

    cls = type(f"Timed{base.__name__}", (base,), {
        "__init__": __init__, "on_trial_add": on_trial_add, "on_trial_result": on_trial_result,
        "on_trial_complete": on_trial_complete, "on_trial_error": on_trial_error, "on_trial_remove": on_trial_remove})
    cls.__module__ = __name__
    globals()[cls.__name__] = cls  # picklable by name (Tune saves its scheduler with the experiment)
    return cls


def overhead_spec(trials: int, out_dir: str, world: str = "tiny", eval_every: int = EVAL_EVERY) -> dict[str, Any]:
    """A simulated sweep with at least `trials` small trials (N 1e4–1e5, D 5–40 tokens per parameter).

    25 sizes × 10 token ratios × k learning rates × 2 batches ≥ trials, ordered cheapest first by
    the planner; lrs stay below the divergence limit. With the default `eval_every` (60 steps) a
    trial reports 1 to 66 times (mean ≈ 9, median 6): its steps range from 25 to 3,906.
    """
    k = max(1, math.ceil(trials / 500))
    return {
        "name": "overhead",
        "model": {"n_params": {"min": 10000, "max": 100000, "count": 25}, "seq_len": 128},
        "tokens": {"per_param": {"min": 5, "max": 40, "count": 10}},
        "learning_rates": {"min": 0.005, "max": 0.05, "count": k} if k > 1 else [0.02],
        "batch_sizes": [1024, 2048],
        "eval": {"every": int(eval_every), "tokens": 16384},
        "budget": {"targets": [1e14]},
        "fit": {"bootstrap": 0},
        "checkpoints": False,
        "trainer": {"backend": "simulated", "world": world},
        "output_dir": out_dir,
    }


def _pct(xs) -> dict[str, Any]:
    if not len(xs):
        return {"calls": 0}
    a = np.asarray(xs) * 1e6
    return {"calls": len(xs), "p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)),
            "mean_us": float(a.mean()), "max_us": float(a.max()), "total_s": float(a.sum() / 1e6)}


def _rss_mb(pid: Optional[int] = None) -> float:
    """Current resident set size (MB) of this process or `pid` (from /proc; 0 if unreadable)."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _proc_usage(pid: Optional[int]) -> Optional[dict[str, float]]:
    """CPU seconds and peak RSS (MB) of a live helper process, from /proc."""
    if not pid:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        hz = os.sysconf("SC_CLK_TCK")
        peak = next((int(line.split()[1]) / 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                     if line.startswith("VmHWM:")), 0.0)
        return {"cpu_s": (int(stat[11]) + int(stat[12])) / hz, "peak_rss_mb": peak}
    except (OSError, IndexError, ValueError):
        return None


def run_arm(arm: str, trials: int, concurrency: int, time_limit_s: float, mlflow: bool,
            own_ray: bool = True, shadow_asha: bool = True, eval_every: int = EVAL_EVERY,
            trace: bool = False, trace_at: tuple[int, ...] = (), timeline_points: int = 20) -> dict[str, Any]:
    """One arm in this process: build the Tuner like run_sweep, fit it, return the figures.

    trace: Python allocations traced (tracemalloc, 25 frames; slows the driver several-fold) and
    snapshotted when a quarter and all of the trials have ended (or at the two counts `trace_at`):
    the growth between the two, grouped by traceback (`memory_trace`), says what the driver keeps per trial.
    """
    import logging

    import ray
    from ray import tune

    from orchestrator.app.session import prepare_dir
    from orchestrator.app.tune_run import set_environ, tune_env
    from orchestrator.config.planners import GridPlanner
    from orchestrator.config.trials import trial_config
    from orchestrator.app.progress import SweepProgress
    from orchestrator.core.pruning import PruneConfig
    from orchestrator.config.spec import parse_spec
    from orchestrator.io.store import ObservationStore
    from orchestrator.io.tracking import SweepTracker
    from orchestrator.adapters.tune.forget import ForgetEndedTrials
    from orchestrator.adapters.tune.envelope import TrialEnvelope
    from orchestrator.adapters.tune.scheduler import PrunerScheduler
    from orchestrator.adapters.tune.trainable import run_trial

    TIMINGS.clear()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    tmp = tempfile.mkdtemp(prefix=f"overhead-{arm}-")
    spec = parse_spec(overhead_spec(trials, str(Path(tmp) / "sweep"), eval_every=eval_every))
    t_plan = time.perf_counter()
    sweep_dir = prepare_dir(spec, None)
    store = ObservationStore(sweep_dir, fsync=spec.checkpoints.enabled)  # as run_sweep
    planner = GridPlanner(spec)
    runnable = planner.runnable()[:trials]
    records = {t.trial_id: t.record() for t in runnable}  # the Tuner runs the first `trials` (num_samples)
    plan_s = time.perf_counter() - t_plan

    tracker = SweepTracker(spec.tracking_uri(), "overhead", f"overhead-{arm}",
                           buffer_dir=sweep_dir / "mlflow-spool") if mlflow else None
    if tracker is not None:
        tracker.start(spec.model_dump(mode="json"))
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    cpus = ray.cluster_resources().get("CPU", 1.0)

    def to_config(t):
        return TrialEnvelope(trial_config(spec, t, None, None), backend="simulated", world=spec.trainer.world,
                             storage=str(sweep_dir / "ray")).to_config()

    progress = SweepProgress(spec.name, len(runnable), sum(t.flops for t in runnable), None, enabled=False)
    searcher = TimedPlannerSearcher(planner, to_config)
    shadow = None
    if arm == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = _timed_scheduler(ASHAScheduler, "scheduler.on_trial_result")(metric="eval_loss", mode="min")
        sched_label = "ASHAScheduler"
    else:
        if shadow_asha:
            from ray.tune.schedulers import ASHAScheduler

            shadow = ASHAScheduler(metric="eval_loss", mode="min")
        scheduler = _timed_scheduler(PrunerScheduler, "scheduler.on_trial_result")(
            PruneConfig(), pruner=TimedProcessPruner(PruneConfig(), timed=True), shadow=shadow)
        sched_label = "PrunerScheduler"
    # as run_sweep: the callback labels the trials our scheduler stopped with its decision
    # as run_sweep, except the `scalesweep-keep` arm: Tune keeps every ended trial (as before)
    forget = ForgetEndedTrials() if arm != "scalesweep-keep" else None
    marks = (tuple(trace_at) or (max(1, len(runnable) // 4), len(runnable))) if trace else ()
    callback = TimedSweepCallback(store, tracker, progress, records,
                                  timeline_every=max(1, len(runnable) // max(1, timeline_points)),
                                  snapshots_at=marks,
                                  stops=scheduler.decisions if isinstance(scheduler, PrunerScheduler) else None)
    tuner = tune.Tuner(
        tune.with_resources(run_trial, {"CPU": cpus / concurrency}),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=len(runnable),
                                    max_concurrent_trials=concurrency, reuse_actors=True,
                                    time_budget_s=time_limit_s or None),
        run_config=tune.RunConfig(name=f"overhead-{arm}", storage_path=str(sweep_dir / "ray"),
                                  callbacks=[callback] + ([forget] if forget is not None else []),
                                  verbose=0, failure_config=tune.FailureConfig(max_failures=0)),
    )
    # as run_sweep: Tune's ResultGrid warns per trial about the loggers tune_env turns off
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if trace:
        import tracemalloc

        tracemalloc.start(25)
    t0 = time.perf_counter()
    callback.t0 = t0
    with progress, set_environ(tune_env(spec)):  # run_sweep's Tune settings
        tuner.fit()
    fit_s = time.perf_counter() - t0
    memory_trace = _trace_growth(callback.snapshots) if trace else None
    if trace:
        tracemalloc.stop()
    ours = isinstance(scheduler, PrunerScheduler)  # the asha arm's scheduler is Ray Tune's
    sched_pending = scheduler.pending() if ours else 0
    pruner = scheduler.pruner if ours else None
    if ours:
        scheduler.drain()
    helpers = {}
    if pruner is not None:
        helpers["pruner"] = _proc_usage(pruner.pid)
    if tracker is not None:
        helpers["mlflow"] = _proc_usage(tracker.helper_pid)
    predictions = pruner.n_predictions if pruner is not None else None
    if pruner is not None:  # the pruner's own seconds per call, measured in its helper
        for name, xs in (pruner.timings() or {}).items():
            TIMINGS[f"pruner.{name}"] = xs
    store.flush()
    mlflow_backlog = tracker.pending if tracker is not None else 0
    t1 = time.perf_counter()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    mlflow_left = tracker.close("FINISHED", timeout=600) if tracker is not None else 0
    mlflow_drain_s = time.perf_counter() - t1
    if tracker is not None and helpers.get("mlflow"):  # the helper exited in close(): all its CPU, drain included
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        helpers["mlflow"]["cpu_s_total"] = (children1.ru_utime - children0.ru_utime) + \
            (children1.ru_stime - children0.ru_stime)
    if pruner is not None:
        pruner.close()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    if own_ray:
        ray.shutdown()
    states = defaultdict(int)
    for rec in store.trials().values():
        states[rec["status"]] += 1
    done = states["finished"] + states["diverged"] + states["stopped"]
    reports = len(TIMINGS["callback.on_trial_result"])
    return {
        "arm": arm,
        "scheduler": sched_label,
        "shadow": "ASHAScheduler (defaults; same calls, decisions not applied)" if shadow is not None else None,
        "shadow_stops": scheduler.shadow_stops if shadow is not None else None,
        "pruner_predictions": predictions,
        "pruner_stops": sum(d.action == "stop" for d in scheduler.decisions.values()) if pruner is not None else None,
        "pruner_diverged": sum(d.action == "diverged" for d in scheduler.decisions.values()) if pruner is not None else None,
        "trials_requested": len(runnable),
        "trials_ended": done,
        "statuses": dict(states),
        "reports": reports,
        "reports_planned": sum(_planned_reports(t, eval_every) for t in runnable),
        "eval_every": eval_every,
        "concurrency": concurrency,
        "mlflow": mlflow,
        "planning_s": plan_s,
        "tune_env": tune_env(spec),
        "scheduler_backlog_at_end": sched_pending,
        "mlflow_ops_pending_at_end": mlflow_backlog,
        "mlflow_drain_s": mlflow_drain_s,
        "mlflow_ops_left_spooled": mlflow_left,
        "mlflow_stats": dict(tracker.stats) if tracker is not None else None,
        "tuner_fit_s": fit_s,
        "trials_per_s": done / fit_s if fit_s else None,
        "reports_per_s": reports / fit_s if fit_s else None,
        "extrapolated_fit_s_for_requested": fit_s * len(runnable) / done if done else None,
        "hit_time_limit": done < len(runnable),
        "latency": {k: _pct(v) for k, v in TIMINGS.items()},
        "timeline": callback.timeline,
        "rss_growth_kb_per_trial": _growth_kb_per_trial(callback.timeline),
        "memory_trace": memory_trace,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss0 / 1024,
        "driver_cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "helpers": helpers,
    }


def _fit_points(timeline: list[dict[str, float]]) -> list[tuple[float, float]]:
    """(trials ended, RSS MB) of the timeline's later three quarters (the first holds Ray's and Tune's warm-up)."""
    pts = [(p["trials_ended"], p["rss_mb"]) for p in timeline]
    return [p for p in pts if p[0] >= pts[-1][0] / 4] if pts else []


def _growth_kb_per_trial(timeline: list[dict[str, float]]) -> Optional[float]:
    """Driver RSS growth per ended trial (KB): least-squares slope over the timeline's later three quarters."""
    pts = _fit_points(timeline)
    if len(pts) < 3:
        return None
    x, y = (np.array(v, dtype=float) for v in zip(*pts))
    return float(np.polyfit(x, y, 1)[0] * 1024)


def _trace_growth(snapshots: dict[int, Any], top: int = 25) -> Optional[dict[str, Any]]:
    """Traced Python memory kept between the two snapshots, per ended trial, and its largest sources."""
    if len(snapshots) < 2:
        return None
    (n1, s1), (n2, s2) = sorted(snapshots.items())[:2]
    stats = s2.compare_to(s1, "traceback")
    growth = sum(st.size_diff for st in stats)
    here = str(Path(__file__).resolve().parent.parent)
    rows = []
    for st in stats[:top]:
        frames = [f"{f.filename.replace(here + '/', '')}:{f.lineno}" for f in st.traceback
                  if "tracemalloc" not in f.filename]
        rows.append({"kb": st.size_diff / 1024, "count": st.count_diff, "per_trial_b": st.size_diff / (n2 - n1),
                     "frames": frames[-12:]})
    return {"from_trials": n1, "to_trials": n2, "traced_kb_per_trial": growth / 1024 / (n2 - n1),
            "top": rows}


def _planned_reports(t, eval_every: int, seq_len: int = 128) -> int:
    """Reports a planned trial sends: every `eval_every` steps and at its last step (as the trainers)."""
    b = (int(t.batch) // seq_len) * seq_len
    T = max(1, math.ceil(t.D / b))
    return T // eval_every + (T % eval_every != 0)


def store_throughput(rows: int = 200_000, trials: int = 2000) -> dict[str, Any]:
    """ObservationStore.append rows/s (buffered, with its periodic flushes), with and without the per-row fsync."""
    from orchestrator.io.store import ObservationStore

    out: dict[str, Any] = {"rows": rows}
    rep = {"step": 0.0, "tokens": 0.0, "flops": 1e12, "lr": 1e-3, "train_loss": 3.0, "eval_loss": 3.1,
           "tokens_per_s": 1e5, "step_time_s": 1.0, "done": 0.0}
    ids = [f"trial-{i:05d}" for i in range(trials)]
    for fsync in (False, True):
        n = rows if not fsync else max(1000, rows // 20)  # fsync per row: a smaller sample
        with tempfile.TemporaryDirectory(prefix="store-") as tmp:
            store = ObservationStore(tmp, fsync=fsync)
            t0 = time.perf_counter()
            for i in range(n):
                rep["step"] = float(i // trials + 1)
                store.append(ids[i % trials], rep)
            append_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            store.flush()
            flush_s = time.perf_counter() - t1
            t2 = time.perf_counter()
            read = store.observations().num_rows
            read_s = time.perf_counter() - t2
        key = "fsync" if fsync else "no_fsync"
        out[key] = {"rows": n, "append_rows_per_s": n / append_s, "append_s": append_s, "final_flush_s": flush_s,
                    "rows_per_s_incl_final_flush": n / (append_s + flush_s), "read_back_s": read_s, "rows_read": read}
    # top-level figures: the configuration of this benchmark's sweep (and run_sweep without checkpoints)
    out.update({k: out["no_fsync"][k] for k in ("append_rows_per_s", "rows_per_s_incl_final_flush", "read_back_s",
                                                 "rows_read", "final_flush_s")})
    out["rows"] = out["no_fsync"]["rows"]
    return out


def _arm_subprocess(arm: str, args, trials: int, time_limit_s: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    cmd = [sys.executable, "-m", "benchmarks.overhead", "--_arm", arm, "--trials", str(trials),
           "--concurrency", str(args.concurrency), "--time-limit-s", str(time_limit_s),
           "--eval-every", str(args.eval_every), "--_out", out]
    if args.no_mlflow:
        cmd.append("--no-mlflow")
    if args.no_shadow:
        cmd.append("--no-shadow")
    if args.trace_memory:
        cmd.append("--trace-memory")
    if args.trace_at:
        cmd += ["--trace-at", args.trace_at]
    cmd += ["--timeline-points", str(args.timeline_points)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"arm {arm} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    doc = json.loads(Path(out).read_text())
    os.unlink(out)
    return doc


def compare_prefix(doc: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Both arms over the same first trials: seconds to end them (scalesweep from its timeline)."""
    arms = doc["arms"]
    if "scalesweep" not in arms or "asha" not in arms:
        return None
    a, s = arms["asha"], arms["scalesweep"]
    n = a["trials_ended"]
    points = [(0, 0.0, 0)] + [(p["trials_ended"], p["s"], p["reports"]) for p in s["timeline"]] + \
             [(s["trials_ended"], s["tuner_fit_s"], s["reports"])]
    if not n or n > points[-1][0]:
        return None
    ns, ts, rs = (np.array(x, dtype=float) for x in zip(*points))
    t_s = float(np.interp(n, ns, ts))
    return {"trials": n, "asha_s": a["tuner_fit_s"], "scalesweep_s_interpolated": t_s,
            "asha_trials_per_s": n / a["tuner_fit_s"], "scalesweep_trials_per_s": n / t_s if t_s else None,
            "asha_peak_rss_mb": a["peak_rss_mb"],
            "scalesweep_rss_mb_at": next((p["rss_mb"] for p in s["timeline"] if p["trials_ended"] >= n), None)}


def print_table(doc: dict[str, Any]) -> None:
    """Latency and throughput tables (rich)."""
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 150))
    t = Table(title=f"controller overhead: {doc['trials']} simulated trials (scalesweep arm)")
    for col in ("arm", "scheduler", "trials ended", "reports", "Tuner.fit s", "trials/s", "est. s for all",
                "driver peak RSS MB", "driver CPU s"):
        t.add_column(col, justify="left" if col in ("arm", "scheduler") else "right")
    for a in doc["arms"].values():
        t.add_row(a["arm"], a["scheduler"] + (" + shadow ASHA" if a.get("shadow") else ""), str(a["trials_ended"]),
                  str(a["reports"]), f"{a['tuner_fit_s']:.1f}",
                  f"{a['trials_per_s']:.2f}" if a["trials_per_s"] else "—",
                  f"{a['extrapolated_fit_s_for_requested']:.0f}" + (" (extrapolated)" if a["hit_time_limit"] else ""),
                  f"{a['peak_rss_mb']:.0f}", f"{a['driver_cpu_s']:.0f}")
    con.print(t)
    lt = Table(title="decision latency per call (driver)")
    for col in ("arm", "call", "calls", "p50 µs", "p99 µs", "max µs", "total s"):
        lt.add_column(col, justify="left" if col in ("arm", "call") else "right")
    for a in doc["arms"].values():
        for name, s in sorted(a["latency"].items()):
            if s["calls"]:
                lt.add_row(a["arm"], name, str(s["calls"]), f"{s['p50_us']:.0f}", f"{s['p99_us']:.0f}",
                           f"{s['max_us']:.0f}", f"{s['total_s']:.1f}")
    con.print(lt)
    for a in doc["arms"].values():
        for name, h in (a.get("helpers") or {}).items():
            if h:
                con.print(f"{a['arm']}: {name} helper process: {h['cpu_s']:.0f} CPU s, peak RSS {h['peak_rss_mb']:.0f} MB")
    mt = Table(title="driver memory per ended trial (RSS: least-squares slope over the timeline's later three quarters)")
    for col in ("arm", "trials ended", "RSS MB at the fit's first point", "RSS MB at its last", "KB per trial",
                "traced Python KB per trial"):
        mt.add_column(col, justify="left" if col == "arm" else "right")
    for a in doc["arms"].values():
        pts = _fit_points(a["timeline"])
        g, tr = a.get("rss_growth_kb_per_trial"), a.get("memory_trace")
        mt.add_row(a["arm"], str(a["trials_ended"]),
                   f"{pts[0][1]:.0f} (trial {pts[0][0]:.0f})" if pts else "—",
                   f"{pts[-1][1]:.0f} (trial {pts[-1][0]:.0f})" if pts else "—",
                   f"{g:.1f}" if g is not None else "—",
                   f"{tr['traced_kb_per_trial']:.1f} ({tr['from_trials']}→{tr['to_trials']})" if tr else "—")
    con.print(mt)
    for a in doc["arms"].values():
        g, tr = a.get("rss_growth_kb_per_trial"), a.get("memory_trace")
        line = f"{a['arm']}: driver RSS grows {g:.1f} KB per ended trial" if g is not None else ""
        if tr:
            line += (f"; traced Python memory {tr['traced_kb_per_trial']:.1f} KB per trial "
                     f"(trials {tr['from_trials']}→{tr['to_trials']}); largest sources:")
        if line:
            con.print(line)
        for row in (tr or {}).get("top", [])[:12]:
            con.print(f"  {row['per_trial_b']:8.0f} B/trial {row['count']:+7d} blocks  " + " <- ".join(
                reversed(row["frames"][-4:])))
    if doc.get("prefix"):
        p = doc["prefix"]
        con.print(f"first {p['trials']} trials: asha {p['asha_s']:.0f} s ({p['asha_trials_per_s']:.1f}/s), "
                  f"scalesweep {p['scalesweep_s_interpolated']:.0f} s ({p['scalesweep_trials_per_s']:.1f}/s)")
    s = doc["store"]
    con.print(f"ObservationStore.append: {s['append_rows_per_s']:,.0f} rows/s without fsync ({s['rows']:,} rows; "
              f"{s['rows_per_s_incl_final_flush']:,.0f} rows/s with the final flush; read back in {s['read_back_s']:.2f} s); "
              f"{s['fsync']['append_rows_per_s']:,.0f} rows/s with an fsync per row")


def main(argv: Optional[list[str]] = None) -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10000, help="simulated trials of the scalesweep arm")
    ap.add_argument("--concurrency", type=int, default=2, help="trials at once (fractional CPUs each)")
    ap.add_argument("--time-limit-s", type=float, default=0.0,
                    help="scalesweep arm's Tuner time budget (0 = none); trials beyond it are extrapolated")
    ap.add_argument("--eval-every", type=int, default=EVAL_EVERY, help="steps between a trial's evaluations (reports)")
    ap.add_argument("--asha-trials", type=int, default=1000, help="trials of the full ASHA Tuner arm (the grid's first)")
    ap.add_argument("--asha-time-limit-s", type=float, default=120.0, help="ASHA arm's Tuner time budget (0 = none)")
    ap.add_argument("--arms", default=None,
                    help="comma list of asha, scalesweep, scalesweep-keep (run in this order; scalesweep-keep: the "
                         "scalesweep arm without ForgetEndedTrials, Tune keeping every ended trial, as before); "
                         "default asha,scalesweep (--memory: scalesweep-keep,scalesweep)")
    ap.add_argument("--store-rows", type=int, default=200_000, help="rows for the store append benchmark")
    ap.add_argument("--no-mlflow", action="store_true", help="leave MLflow out of the callback")
    ap.add_argument("--no-shadow", action="store_true",
                    help="do not feed the scalesweep arm's scheduler calls to a shadow ASHAScheduler")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 12 trials (ASHA arm 8), 2 at once, both arms in this process (one Ray start; "
                         "peak RSS is then cumulative), 20k store rows")
    ap.add_argument("--trace-memory", action="store_true",
                    help="trace the scalesweep arms' Python allocations (tracemalloc; slow) and print what grows per trial")
    ap.add_argument("--trace-at", default="",
                    help="with --trace-memory: the two trial counts to snapshot at, e.g. 1000,2000 (default: a quarter, all)")
    ap.add_argument("--timeline-points", type=int, default=20, help="timeline points (RSS samples) per arm")
    ap.add_argument("--memory", action="store_true",
                    help="driver memory per trial, cheaply: arms scalesweep-keep,scalesweep, one report per trial (its "
                         "last), no MLflow, no shadow ASHA, no ASHA arm, 40 timeline points, 2,000 store rows")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--_arm", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    trace_at = tuple(int(x) for x in args.trace_at.split(",") if x.strip())
    if args.memory:
        args.arms = args.arms or "scalesweep-keep,scalesweep"
        args.asha_trials, args.no_mlflow, args.no_shadow = 0, True, True
        args.eval_every, args.timeline_points, args.store_rows = ONE_REPORT, 40, 2000
    args.arms = args.arms or "asha,scalesweep"
    if args._arm:
        Path(args._out).write_text(json.dumps(run_arm(args._arm, args.trials, args.concurrency, args.time_limit_s,
                                                      not args.no_mlflow, shadow_asha=not args.no_shadow,
                                                      eval_every=args.eval_every,
                                                      trace=args.trace_memory and args._arm.startswith("scalesweep"),
                                                      trace_at=trace_at, timeline_points=args.timeline_points)))
        return
    if args.quick:
        args.trials, args.asha_trials, args.store_rows, args.concurrency = 12, 8, 20_000, 2
    t0 = time.perf_counter()
    doc: dict[str, Any] = {"benchmark": "overhead", "command": "python -m benchmarks.overhead " + " ".join(sys.argv[1:]),
                           "trials": args.trials, "asha_trials": args.asha_trials, "eval_every": args.eval_every,
                           "memory_mode": args.memory, "mlflow": not args.no_mlflow,
                           "cpus": os.cpu_count(), "load_avg_start": os.getloadavg(), "arms": {}}
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if args.asha_trials <= 0:
        arms = [a for a in arms if a != "asha"]
    for arm in arms:
        trials, limit = (args.asha_trials, args.asha_time_limit_s) if arm == "asha" else (args.trials, args.time_limit_s)
        if args.quick:
            doc["arms"][arm] = run_arm(arm, trials, args.concurrency, limit, not args.no_mlflow,
                                       own_ray=arm == arms[-1], shadow_asha=not args.no_shadow,
                                       eval_every=args.eval_every, trace=args.trace_memory and arm.startswith("scalesweep"),
                                       trace_at=trace_at, timeline_points=args.timeline_points)
        else:
            doc["arms"][arm] = _arm_subprocess(arm, args, trials, limit)
    doc["prefix"] = compare_prefix(doc)
    doc["store"] = store_throughput(args.store_rows)
    doc["wall_s"] = time.perf_counter() - t0
    doc["load_avg_end"] = os.getloadavg()
    print_table(doc)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
