"""Wiring of a sweep: spec → store, MLflow, planner → Ray Tune Tuner → fit and proposals."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from .laws.chinchilla import ChinchillaLaw
from .laws.result import jsonable
from .planner import PlannedTrial, make_planner, proposal_resources, trial_config
from .progress import SweepProgress
from .proposals import SweepFit, fit_and_propose
from .spec import SweepSpec
from .store import ObservationStore, StoreError, diverged_configs, final_points, final_task_points

log = logging.getLogger(__name__)

# A multi-worker trial's driver process only launches the TorchTrainer; it must reserve
# no CPU (its workers reserve theirs) yet Tune needs a non-empty bundle.
DRIVER_RESOURCES = {"CPU": 0, "memory": 16 * 1024**2}


@dataclass
class SweepOutcome:
    """What a finished sweep returns."""

    sweep_dir: Path
    statuses: dict[str, int]
    fit: SweepFit
    wall_s: float
    train_s: float  # seconds inside training steps, summed over trials
    mlflow_parent_run: Optional[str]


def prepare_dir(spec: SweepSpec, spec_path: Optional[str]) -> Path:
    """Create the sweep directory and record the spec in it."""
    sweep_dir = spec.sweep_dir()
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        if spec_path:
            shutil.copyfile(spec_path, sweep_dir / "spec.original.yaml")
    except OSError as exc:  # a full disk, a permission, a path through a file: say which and stop
        raise StoreError(f"cannot write the sweep directory {sweep_dir}: {exc.strerror or exc}") from exc
    return sweep_dir


def _init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    # Trial output is noisy (DeepSpeed banners); it stays in the Ray session logs.
    # The dashboard serves Ray's State API, which Ray Train V2's placement-group cleaner
    # needs: without it a finished multi-worker trial can leak its workers' CPUs.
    ray.init(address=address or None, include_dashboard=None if address else True, log_to_driver=False,
             logging_level=logging.WARNING, configure_logging=True)


def tune_env(spec: SweepSpec) -> dict[str, str]:
    """Ray Tune settings (environment, read when `Tuner.fit` starts) for a sweep's controller.

    Chosen for sweeps of many short trials (the simulated backend: thousands of trials of
    milliseconds each) without changing what a real run records or decides.
    """
    env = {
        # Tune's automatic per-trial CSV / JSON / TensorBoard loggers write every result again
        # (≈3 ms per report on the driver's event loop, plus files per trial); the store and
        # MLflow already record every report. Tune's own experiment state is unaffected.
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    }
    if spec.trainer.backend == "simulated" and not spec.checkpoints.enabled:
        # One remote call fetches every result a trial produced in 20 ms (up to 64), not one:
        # simulated reports come microseconds apart. Only without checkpoints: a buffered
        # report is acknowledged to the trainer before the driver stores it, so a trial could
        # checkpoint past rows a killed controller never logged. A scheduler's STOP then lands
        # at most one buffer late (for a simulated trial, that costs nothing).
        env.update(TUNE_RESULT_BUFFER_LENGTH="64", TUNE_RESULT_BUFFER_MIN_TIME_S="0.02",
                   TUNE_RESULT_BUFFER_MAX_TIME_S="0.02")
    return env


class _environ:
    """Set environment variables for a block, restore them after (Tune reads its knobs from it)."""

    def __init__(self, env: dict[str, str]):
        self.env, self.saved = env, {}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _max_concurrent(spec: SweepSpec, trials: list[PlannedTrial]) -> int:
    import ray

    have = ray.cluster_resources()
    workers = max((t.workers for t in trials), default=1)
    fit = max(1, math.floor(have.get("CPU", 1.0) / (workers * spec.resources.threads)))
    if spec.resources.use_gpu:  # one GPU per worker: the GPUs bound it too
        fit = max(1, min(fit, math.floor(have.get("GPU", 0.0) / workers)))
    # Ray Tune cannot see the CPUs (GPUs) a TorchTrainer will ask for, so concurrency is capped
    # so that every running trial's workers fit at once (no trial waits on another's devices).
    return min(fit, spec.resources.max_concurrent or fit)


def run_sweep(spec: SweepSpec, spec_path: Optional[str] = None, *, show_progress: bool = True) -> SweepOutcome:
    """Run the spec's trials through a Ray Tune Tuner, record everything, fit and propose."""
    from ray import tune

    from .tracking import SweepTracker
    from .tune.callback import SweepCallback, mlflow_end
    from .tune.scheduler import PrunerScheduler
    from .tune.searcher import PlannerSearcher
    from .tune.trainable import run_trial

    t0 = time.monotonic()
    sweep_dir = prepare_dir(spec, spec_path)
    store = ObservationStore(sweep_dir, fsync=spec.checkpoints.enabled)  # see ObservationStore.fsync
    recovered = store.recover()  # reports a killed controller had logged but not flushed
    if recovered:
        log.warning("recovered %d report(s) from the store's write-ahead log of an interrupted run", recovered)
    planner = make_planner(spec)
    ended = ended_trials(store)
    planner.resume(ended)  # a resumed sweep: what ended is not run again
    records = {t.trial_id: t.record() for t in planner.trials}

    tracker = SweepTracker(spec.tracking_uri(), spec.tracking.experiment, spec.name,
                           buffer_dir=sweep_dir / "mlflow-spool")
    state_file = sweep_dir / "sweep.json"  # survives a crash: lets a resumed sweep reuse its parent run
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    parent = tracker.start(spec.model_dump(mode="json"), spec_path=spec_path,
                           resume_run_id=state.get("mlflow_parent_run"))
    if parent:
        state_file.write_text(json.dumps({**state, "mlflow_parent_run": parent}))
    if parent and ended:  # a trial that ended just before a crash may have a run still RUNNING
        recs = store.trials()
        tracker.end_stale_trials({tid: mlflow_end(recs[tid]["status"], recs[tid]["summary"]) for tid in ended})
    _init_ray()
    cache = os.environ.get("SCALESWEEP_CACHE")  # built-in corpus cache; None = the trainer's default
    # Fault-injection tests only: every report sleeps this long, so a (simulated) sweep lasts
    # long enough to kill something mid-run. Read here and passed in the trial config, so it
    # reaches trials on any cluster.
    report_delay = float(os.environ.get("SCALESWEEP_REPORT_DELAY_S", "0") or 0)

    decisions: dict[str, dict[str, Any]] = {}  # trial id -> why the planner chose it

    def to_config(t: PlannedTrial) -> dict[str, Any]:
        records.setdefault(t.trial_id, t.record())  # a planner may plan trials as it goes (transfer)
        why = next((d for d in reversed(planner.decisions) if d.get("trial_id") == t.trial_id), None)
        if why is not None:
            decisions[t.trial_id] = why
        ckpt = str(sweep_dir / "checkpoints" / t.trial_id)
        config = {"trial": trial_config(spec, t, ckpt, cache).to_dict(), "backend": spec.trainer.backend,
                  "world": spec.trainer.world, "storage": str(sweep_dir / "ray"), "use_gpu": spec.resources.use_gpu,
                  "max_failures": spec.checkpoints.max_failures, "cell_D": t.cell.D}
        if report_delay:
            config["report_delay_s"] = report_delay
        return config

    def resources(config: dict[str, Any]):
        trial = config["trial"]
        if trial["workers"] > 1:
            return DRIVER_RESOURCES
        return {"CPU": trial["threads"], **({"GPU": 1} if spec.resources.use_gpu else {})}

    planned = planner.runnable()
    progress = SweepProgress(spec.name, planner.trial_cap, sum(t.flops for t in planned),
                             spec.budget.total_flops, enabled=show_progress)
    scheduler = PrunerScheduler(spec.pruning) if spec.pruning.enabled else None
    callback = SweepCallback(store, tracker, progress, records, decisions,
                             stops=scheduler.decisions if scheduler is not None else None)
    searcher = PlannerSearcher(planner, to_config)
    tuner = tune.Tuner(
        tune.with_resources(run_trial, resources),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=max(1, planner.trial_cap),
                                    max_concurrent_trials=_max_concurrent(spec, planner.trials),
                                    # A fresh trial process costs seconds (torch + DeepSpeed
                                    # imports), often more than a small trial's training; the
                                    # trainer leaves no global state behind, so processes are
                                    # reused -- but Tune cannot reuse one across resource shapes.
                                    reuse_actors=all(t.workers == 1 for t in planner.trials)),
        run_config=tune.RunConfig(name=spec.name, storage_path=str(sweep_dir / "ray"), callbacks=[callback],
                                  verbose=0,
                                  # a crashed trial is restarted and resumes from its last checkpoint
                                  failure_config=tune.FailureConfig(max_failures=spec.checkpoints.max_failures)),
    )
    status = "FINISHED"
    # Tune's ResultGrid reads the per-trial files of the loggers tune_env turns off and warns
    # for every trial when they are missing; the store and MLflow are the sweep's record.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    try:
        with progress, _environ(tune_env(spec)):
            tuner.fit()
    except BaseException:
        status = "FAILED"
        raise
    finally:
        try:
            store.flush()
        except StoreError:
            if status != "FAILED":
                raise
            # the sweep is failing already (most likely on this very error): keep that one;
            # the rows stay unwritten, the parts on disk stay whole, and `resume` continues
            log.exception("could not flush the store while the sweep failed")
        finally:
            if status == "FAILED":
                tracker.close("FAILED")
    outcome = summarise(spec, store, tracker, parent, t0, planner.decisions,
                        getattr(planner, "predict_hparams", None), getattr(planner, "hparam_intervals", None))
    tracker.close("FINISHED")
    return outcome


def ended_trials(store: ObservationStore) -> dict[str, Optional[dict[str, Any]]]:
    """Trials that ended in an earlier run of this sweep, with their last report (a planner's input)."""
    trials = store.trials()
    last = store.last_reports()
    return {tid: last.get(tid) for tid, rec in trials.items() if rec["status"] in ("finished", "diverged", "stopped")}


def summarise(spec: SweepSpec, store: ObservationStore, tracker, parent: Optional[str], t0: float,
              decisions: Optional[list[dict[str, Any]]] = None, hparams=None, hparam_intervals=None) -> SweepOutcome:
    """Fit the law on the finished trials, write fit + proposals to the sweep dir and MLflow."""
    from .plots import loss_vs_compute

    points = final_points(store)
    task_rows = final_task_points(store, points)  # empty unless the spec named eval.tasks
    fit = fit_and_propose(points, spec.budget.targets, loss=spec.fit.loss, bootstrap=spec.fit.bootstrap,
                          level=spec.fit.level, seed=spec.seed, hparams=hparams, resources=proposal_resources(spec),
                          diverged=diverged_configs(store), family=spec.model.family,
                          hparam_intervals=hparam_intervals, task_rows=task_rows)
    sweep_dir = spec.sweep_dir()
    doc = jsonable(fit.to_json())
    task_doc, task_plot_data = None, {}
    if task_rows:
        from .task_summary import summarise_tasks

        task_doc, task_plot_data = summarise_tasks(task_rows, fit, bootstrap=spec.fit.bootstrap, level=spec.fit.level,
                                                   seed=spec.seed, targets=spec.budget.targets)
        doc["downstream"] = task_doc
    (sweep_dir / "fit.json").write_text(json.dumps(doc, indent=2, allow_nan=False))
    trials = store.trials()
    statuses: dict[str, int] = {}
    for rec in trials.values():
        statuses[rec["status"]] = statuses.get(rec["status"], 0) + 1
    train_s = sum(row["step_time_s"] for row in store.last_reports(finite="step_time_s").values())
    wall = time.monotonic() - t0
    if tracker is not None:
        params = {f"law.{k}": v for k, v in (fit.fit.params.items() if fit.fit else [])}
        metrics = {"trials_finished": statuses.get("finished", 0), "wall_s": wall, "train_s": train_s,
                   "useful_work_fraction": train_s / wall if wall else 0.0}
        if fit.fit is not None:
            metrics["law_objective"] = fit.fit.objective
        figures = {"loss_vs_compute": _plot(fit, spec, points, loss_vs_compute)}
        artifacts = {"fit": doc, "proposals": doc["proposals"], "decisions": jsonable(decisions or [])}
        if task_doc is not None:
            from .task_summary import task_plot

            artifacts["downstream"] = task_doc
            figure = task_plot(task_plot_data, level=spec.fit.level)
            if figure is not None:
                figures["accuracy_vs_compute"] = figure
        tracker.log_sweep_results(params, metrics, artifacts, figures)
    return SweepOutcome(sweep_dir, statuses, fit, wall, train_s, parent)


def _plot(fit: SweepFit, spec: SweepSpec, points: list[dict[str, Any]], loss_vs_compute):
    import numpy as np

    runs = [{"N": p["N"], "D": p["D"], "C": 6.0 * p["N"] * p["D"], "loss": p["loss"]} for p in points]
    frontier = None
    if fit.fit is not None and runs:
        cs = [r["C"] for r in runs] + list(spec.budget.targets)
        grid = np.geomspace(min(cs) / 2, max(cs) * 2, 60)
        frontier = {"C": grid, "mid": fit.fit.law.frontier(grid)["loss_opt"]}
        samples = fit.fit.samples
        if samples is not None and len(samples) >= 10:
            # Band: pointwise percentiles of the bootstrap replicates' frontiers.
            reps = np.array([ChinchillaLaw(*row).frontier(grid)["loss_opt"] for row in samples])
            alpha = (1 - spec.fit.level) / 2
            frontier["low"], frontier["high"] = np.quantile(reps, [alpha, 1 - alpha], axis=0)
    proposals = [{"C": p["budget"], "predicted_loss": p["predicted_loss"],
                  "low": p["intervals"].get("loss_opt", {}).get("low"),
                  "high": p["intervals"].get("loss_opt", {}).get("high")} for p in fit.proposals]
    return loss_vs_compute(runs, frontier=frontier, proposals=proposals)

