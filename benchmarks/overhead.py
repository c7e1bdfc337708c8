"""Controller overhead: simulated trials through the real Ray Tune Tuner, our searcher/callback vs ASHA.

Two arms, each in its own driver process (so peak RSS is that arm's alone), each a real
`ray.tune.Tuner` built as `orchestrator.controller.run_sweep` builds it (GridPlanner →
PlannerSearcher, SweepCallback → ObservationStore + MLflow on SQLite, `run_trial` with the
simulated backend), with `reuse_actors=True` and `concurrency` trials at once:

- `scalesweep`: no scheduler yet unless `orchestrator/tune/scheduler.py` exists (then its
  TrialScheduler is timed too);
- `asha`: the same Tuner with Ray Tune's `ASHAScheduler` (defaults, metric eval_loss/min).

Timed per call: `PlannerSearcher.suggest` (planner decision per trial), the scheduler's
`on_trial_result` (decision per report), `SweepCallback.on_trial_result` (store + MLflow per
report). Plus the driver's peak RSS and, separately, `ObservationStore.append` rows/s.
If the run hits --time-limit-s, the figures cover the trials that finished and the wall time
is extrapolated to --trials (said so in the output).

    python -m benchmarks.overhead --trials 10000 --json results/overhead.json
    python -m benchmarks.overhead --quick --json /tmp/overhead.json     # smoke test
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
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import numpy as np

from orchestrator.tune.callback import SweepCallback
from orchestrator.tune.searcher import PlannerSearcher

TIMINGS: dict[str, list[float]] = defaultdict(list)  # driver-side: name -> seconds per call


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
    """SweepCallback whose per-report work (store append, MLflow log, display) is timed."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        return _timed("callback.on_trial_result", super().on_trial_result, iteration, trials, trial, result, **info)


def _timed_scheduler(base: type, label: str) -> type:
    """A subclass of a Ray Tune TrialScheduler whose on_trial_result is timed under `label`."""

    def on_trial_result(self, tune_controller, trial, result):
        return _timed(label, base.on_trial_result, self, tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        return _timed(label.replace("on_trial_result", "on_trial_complete"), base.on_trial_complete, self,
                      tune_controller, trial, result)

    cls = type(f"Timed{base.__name__}", (base,), {"on_trial_result": on_trial_result,
                                                   "on_trial_complete": on_trial_complete})
    cls.__module__ = __name__
    globals()[cls.__name__] = cls  # picklable by name (Tune saves its scheduler with the experiment)
    return cls


def our_scheduler_class() -> Optional[type]:
    """Our pruner's TrialScheduler if `orchestrator/tune/scheduler.py` exists, else None."""
    try:
        import orchestrator.tune.scheduler as mod
    except ImportError:
        return None
    from ray.tune.schedulers import TrialScheduler

    found = [v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, TrialScheduler)
             and v.__module__ == mod.__name__]
    return found[0] if found else None


def overhead_spec(trials: int, out_dir: str, world: str = "tiny") -> dict[str, Any]:
    """A simulated sweep with at least `trials` small trials (N 1e4–1e5, D 5–40 tokens per parameter)."""
    # 25 sizes x 10 ratios x k lrs x 2 batches >= trials; lrs stay below the divergence limit.
    k = max(1, math.ceil(trials / 500))
    return {
        "name": "overhead",
        "model": {"n_params": {"min": 10000, "max": 100000, "count": 25}, "seq_len": 128},
        "tokens": {"per_param": {"min": 5, "max": 40, "count": 10}},
        "learning_rates": {"min": 0.005, "max": 0.05, "count": k} if k > 1 else [0.02],
        "batch_sizes": [1024, 2048],
        "eval": {"every": 30, "tokens": 16384},  # 1 report for the smallest trial, ~130 for the largest
        "budget": {"targets": [1e14]},
        "fit": {"bootstrap": 0},
        "checkpoints": False,
        "trainer": {"backend": "simulated", "world": world},
        "output_dir": out_dir,
    }


def _pct(xs: list[float]) -> dict[str, Any]:
    if not xs:
        return {"calls": 0}
    a = np.asarray(xs) * 1e6
    return {"calls": len(xs), "p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)),
            "mean_us": float(a.mean()), "max_us": float(a.max())}


def run_arm(arm: str, trials: int, concurrency: int, time_limit_s: float, mlflow: bool,
            own_ray: bool = True) -> dict[str, Any]:
    """One arm in this process: build the Tuner like run_sweep, fit it, return the figures."""
    import logging

    import ray
    from ray import tune

    from orchestrator.controller import _environ, prepare_dir, tune_env
    from orchestrator.planner import GridPlanner, trial_config
    from orchestrator.progress import SweepProgress
    from orchestrator.spec import parse_spec
    from orchestrator.store import ObservationStore
    from orchestrator.tracking import SweepTracker
    from orchestrator.tune.trainable import run_trial

    TIMINGS.clear()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tmp = tempfile.mkdtemp(prefix=f"overhead-{arm}-")
    spec = parse_spec(overhead_spec(trials, str(Path(tmp) / "sweep")))
    t_plan = time.perf_counter()
    sweep_dir = prepare_dir(spec, None)
    store = ObservationStore(sweep_dir, fsync=spec.checkpoints.enabled)  # as run_sweep
    planner = GridPlanner(spec)
    runnable = planner.runnable()[:trials]
    records = {t.trial_id: t.record() for t in runnable}  # the Tuner runs the first `trials` (num_samples)
    plan_s = time.perf_counter() - t_plan

    tracker = SweepTracker(spec.tracking_uri(), "overhead", f"overhead-{arm}", buffer_dir=sweep_dir / "mlflow-spool") if mlflow else None
    if tracker is not None:
        tracker.start(spec.model_dump(mode="json"))
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    cpus = ray.cluster_resources().get("CPU", 1.0)

    def to_config(t):
        return {"trial": trial_config(spec, t, None, None).to_dict(), "backend": "simulated", "world": spec.trainer.world,
                "storage": str(sweep_dir / "ray"), "use_gpu": False}

    progress = SweepProgress(spec.name, len(runnable), sum(t.flops for t in runnable), None, enabled=False)
    callback = TimedSweepCallback(store, tracker, progress, records)
    searcher = TimedPlannerSearcher(planner, to_config)
    scheduler, sched_label = None, None
    if arm == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler, sched_label = _timed_scheduler(ASHAScheduler, "scheduler.on_trial_result")(metric="eval_loss", mode="min"), "ASHAScheduler"
    else:
        ours = our_scheduler_class()
        if ours is not None:
            try:
                scheduler = _timed_scheduler(ours, "scheduler.on_trial_result")()
                sched_label = ours.__name__
            except TypeError as exc:  # its constructor needs arguments this benchmark does not know yet
                sched_label = f"{ours.__name__} (not constructed: {exc})"
    tuner = tune.Tuner(
        tune.with_resources(run_trial, {"CPU": cpus / concurrency}),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=len(runnable),
                                    max_concurrent_trials=concurrency, reuse_actors=True,
                                    time_budget_s=time_limit_s or None),
        run_config=tune.RunConfig(name=f"overhead-{arm}", storage_path=str(sweep_dir / "ray"), callbacks=[callback],
                                  verbose=0, failure_config=tune.FailureConfig(max_failures=0)),
    )
    t0 = time.perf_counter()
    with progress, _environ(tune_env(spec)):  # run_sweep's Tune settings
        tuner.fit()
    fit_s = time.perf_counter() - t0
    sched_pending = scheduler.pending() if hasattr(scheduler, "pending") else 0
    store.flush()
    mlflow_backlog = tracker.pending if tracker is not None else 0
    t1 = time.perf_counter()
    mlflow_left = tracker.close("FINISHED", timeout=600) if tracker is not None else 0
    mlflow_drain_s = time.perf_counter() - t1
    if own_ray:
        ray.shutdown()
    states = defaultdict(int)
    for rec in store.trials().values():
        states[rec["status"]] += 1
    done = states["finished"] + states["diverged"] + states["stopped"]
    reports = len(TIMINGS["callback.on_trial_result"])
    return {
        "arm": arm,
        "scheduler": sched_label or "none (FIFO): our pruner scheduler does not exist yet",
        "trials_requested": len(runnable),
        "trials_ended": done,
        "statuses": dict(states),
        "reports": reports,
        "concurrency": concurrency,
        "mlflow": mlflow,
        "planning_s": plan_s,
        "tune_env": tune_env(spec),
        "scheduler_backlog_at_end": sched_pending,
        "mlflow_ops_pending_at_end": mlflow_backlog,
        "mlflow_drain_s": mlflow_drain_s,
        "mlflow_ops_left_spooled": mlflow_left,
        "tuner_fit_s": fit_s,
        "trials_per_s": done / fit_s if fit_s else None,
        "extrapolated_fit_s_for_requested": fit_s * len(runnable) / done if done else None,
        "hit_time_limit": done < len(runnable),
        "latency": {k: _pct(v) for k, v in TIMINGS.items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss0 / 1024,
    }


def store_throughput(rows: int = 200_000, trials: int = 2000) -> dict[str, Any]:
    """ObservationStore.append rows/s (buffered, with its periodic flushes) and the final flush/read."""
    from orchestrator.store import ObservationStore

    with tempfile.TemporaryDirectory(prefix="store-") as tmp:
        store = ObservationStore(tmp)
        rep = {"step": 0.0, "tokens": 0.0, "flops": 1e12, "lr": 1e-3, "train_loss": 3.0, "eval_loss": 3.1,
               "tokens_per_s": 1e5, "step_time_s": 1.0, "done": 0.0}
        ids = [f"trial-{i:05d}" for i in range(trials)]
        t0 = time.perf_counter()
        for i in range(rows):
            rep["step"] = float(i // trials + 1)
            store.append(ids[i % trials], rep)
        append_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        store.flush()
        flush_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        n = store.observations().num_rows
        read_s = time.perf_counter() - t2
    return {"rows": rows, "append_rows_per_s": rows / append_s, "append_s": append_s,
            "final_flush_s": flush_s, "rows_per_s_incl_final_flush": rows / (append_s + flush_s),
            "read_back_s": read_s, "rows_read": n}


def _arm_subprocess(arm: str, args) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    cmd = [sys.executable, "-m", "benchmarks.overhead", "--_arm", arm, "--trials", str(args.trials),
           "--concurrency", str(args.concurrency), "--time-limit-s", str(args.time_limit_s), "--_out", out]
    if args.no_mlflow:
        cmd.append("--no-mlflow")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"arm {arm} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    doc = json.loads(Path(out).read_text())
    os.unlink(out)
    return doc


def print_table(doc: dict[str, Any]) -> None:
    """Latency and throughput tables (rich)."""
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title=f"controller overhead: {doc['trials']} simulated trials requested per arm")
    for col in ("arm", "scheduler", "trials ended", "reports", "Tuner.fit s", "trials/s", "est. s for all",
                "peak RSS MB"):
        t.add_column(col, justify="left" if col in ("arm", "scheduler") else "right")
    for a in doc["arms"].values():
        t.add_row(a["arm"], a["scheduler"], str(a["trials_ended"]), str(a["reports"]), f"{a['tuner_fit_s']:.1f}",
                  f"{a['trials_per_s']:.2f}" if a["trials_per_s"] else "—",
                  f"{a['extrapolated_fit_s_for_requested']:.0f}" + (" (extrapolated)" if a["hit_time_limit"] else ""),
                  f"{a['peak_rss_mb']:.0f}")
    con.print(t)
    lt = Table(title="decision latency per call (driver)")
    for col in ("arm", "call", "calls", "p50 µs", "p99 µs", "max µs"):
        lt.add_column(col, justify="left" if col in ("arm", "call") else "right")
    for a in doc["arms"].values():
        for name, s in sorted(a["latency"].items()):
            if s["calls"]:
                lt.add_row(a["arm"], name, str(s["calls"]), f"{s['p50_us']:.0f}", f"{s['p99_us']:.0f}", f"{s['max_us']:.0f}")
    con.print(lt)
    s = doc["store"]
    con.print(f"ObservationStore.append: {s['append_rows_per_s']:,.0f} rows/s ({s['rows']:,} rows; "
              f"{s['rows_per_s_incl_final_flush']:,.0f} rows/s with the final flush; read back in {s['read_back_s']:.2f} s)")


def main(argv: Optional[list[str]] = None) -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10000, help="simulated trials per arm")
    ap.add_argument("--concurrency", type=int, default=2, help="trials at once (fractional CPUs each)")
    ap.add_argument("--time-limit-s", type=float, default=500.0,
                    help="per-arm Tuner time budget (0 = none); trials beyond it are extrapolated")
    ap.add_argument("--arms", default="scalesweep,asha", help="comma list of scalesweep, asha")
    ap.add_argument("--store-rows", type=int, default=200_000, help="rows for the store append benchmark")
    ap.add_argument("--no-mlflow", action="store_true", help="leave MLflow out of the callback")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 10 trials per arm, 2 at once, both arms in this process (one Ray start; "
                         "peak RSS is then cumulative), 20k store rows")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--_arm", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._arm:
        Path(args._out).write_text(json.dumps(run_arm(args._arm, args.trials, args.concurrency, args.time_limit_s,
                                                      not args.no_mlflow)))
        return
    if args.quick:
        args.trials, args.store_rows, args.concurrency = 10, 20_000, 2
    t0 = time.perf_counter()
    doc: dict[str, Any] = {"benchmark": "overhead", "command": "python -m benchmarks.overhead " + " ".join(sys.argv[1:]),
                           "trials": args.trials, "cpus": os.cpu_count(), "arms": {}}
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for arm in arms:
        if args.quick:
            doc["arms"][arm] = run_arm(arm, args.trials, args.concurrency, args.time_limit_s, not args.no_mlflow,
                                       own_ray=arm == arms[-1])
        else:
            doc["arms"][arm] = _arm_subprocess(arm, args)
    doc["store"] = store_throughput(args.store_rows)
    doc["wall_s"] = time.perf_counter() - t0
    print_table(doc)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
