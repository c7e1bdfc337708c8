"""A sweep run through Ray Tune: the store, MLflow and planner opened for it, its trials handed to a
`tune.Tuner` (searcher, scheduler, resources, callbacks, Tune's environment), then `outcome.summarise`."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from ..config.planners import make_planner
from ..config.spec import SweepSpec
from ..config.trials import trial_config
from ..core.planning.trial import PlannedTrial
from ..io.store import ObservationStore, drop_checkpoints_past_reports, ended_trials, interrupted_trials
from .capacity import max_concurrent_trials
from .outcome import SweepOutcome, remember_parent, summarise
from .progress import SweepProgress
from .stopping import finish_interrupted, stop_requested, stop_requested_at

log = logging.getLogger(__name__)

# A multi-worker trial's driver process only launches the TorchTrainer; it must reserve
# no CPU (its workers reserve theirs) yet Tune needs a non-empty bundle.
DRIVER_RESOURCES = {"CPU": 0, "memory": 16 * 1024**2}


def spec_set(spec: SweepSpec, state_file: Path) -> dict[str, Any]:
    """The fields of ``spec`` the user set: the sweep's MLflow params (kept in ``state_file``).

    Only these are params: the ~100 defaults would crowd the UI's column picker; the resolved
    spec goes along as an artifact. They are kept in sweep.json on the first call because a
    resume loads the recorded spec.yaml, where every field reads as set (a sweep from before
    this kept none: the first call's answer is then the whole spec, its params already logged).
    """
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if "spec_set" not in state:
        state["spec_set"] = spec.model_dump(mode="json", exclude_unset=True)
        state_file.write_text(json.dumps(state))
    return state["spec_set"]


def init_ray() -> None:
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
        # Ctrl-C / SIGTERM are the controller's (StopRequest): Tune's own handler would end its
        # loop with the trials' records open and the parent run unended.
        "TUNE_DISABLE_SIGINT_HANDLER": "1",
        # Tune's new output engine prints its "Configuration for experiment" box and results path to
        # stdout even at verbose=0 (the CLI's output is the sweep's own); the legacy engine at verbose=0
        # prints nothing. The controller logs the same facts before `Tuner.fit`.
        "RAY_AIR_NEW_OUTPUT": "0",
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


class set_environ:
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


class TrainerContractError(RuntimeError):
    """A user's trainer broke the trial contract (no first report in time, a malformed report);
    the message names the spec field or the problem. The CLI exits 2 on it."""


def own_trainer_settings(spec: SweepSpec) -> dict[str, Any]:
    """How a trial runs the user's trainer (`trainer.backend: command | python`), as plain data."""
    t = spec.trainer
    return {"command": t.command, "entrypoint": t.entrypoint, "cwd": t.cwd, "env": dict(t.env),
            "grace_period_s": t.grace_period_s, "first_report_timeout_s": t.first_report_timeout_s,
            "warm_start": list(t.warm_start)}


def run_tuner(spec: SweepSpec, spec_path: Optional[str], sweep_dir: Path, show_progress: bool, t0: float,
         stash: dict[str, Any]) -> SweepOutcome:
    from ray import tune

    from trainers.checkpoint_mirror import delayed_open

    from ..config.pruning import completed_from_store, trial_meta
    from ..io.tracking import SweepTracker
    from ..adapters.tune.callback import SweepCallback, mlflow_end
    from ..adapters.tune.envelope import TrialEnvelope
    from ..adapters.tune.forget import ForgetEndedTrials
    from ..adapters.tune.scheduler import PrunerScheduler
    from ..adapters.tune.searcher import PlannerSearcher
    from ..adapters.tune.trainable import run_trial

    store = stash["store"] = ObservationStore(sweep_dir, fsync=spec.checkpoints.enabled,  # see ObservationStore.fsync
                                              location=spec.store)
    recovered = store.recover()  # reports a killed controller had logged but not flushed
    if recovered:
        log.warning("recovered %d report(s) from the store's write-ahead log of an interrupted run", recovered)
    planner = stash["planner"] = make_planner(spec)
    ended = ended_trials(store)
    planner.resume(ended, interrupted_trials(store))  # a resumed sweep: what ended is not run again
    train_tokens = _train_tokens(spec, os.environ.get("SCALESWEEP_CACHE"))

    def record_of(t: PlannedTrial) -> dict[str, Any]:
        rec = t.record()
        if train_tokens:  # passes over the training data (> 1: repeated tokens, data.allow_repeats)
            rec["epochs"] = t.D / train_tokens
        return rec

    records = {t.trial_id: record_of(t) for t in planner.trials}

    tracker = stash["tracker"] = SweepTracker(spec.tracking_uri(), spec.tracking.experiment, spec.name,
                                              buffer_dir=sweep_dir / "mlflow-spool",
                                              artifact_location=spec.artifact_location())
    state_file = sweep_dir / "sweep.json"  # survives a crash: lets a resumed sweep reuse its parent run
    params = spec_set(spec, state_file)
    state = json.loads(state_file.read_text())
    parent = tracker.start(params, spec_path=spec_path, resume_run_id=state.get("mlflow_parent_run"),
                           resolved=spec.model_dump(mode="json"))
    if parent:
        state_file.write_text(json.dumps({**state, "mlflow_parent_run": parent}))
    if parent and ended:  # a trial that ended just before a crash may have a run still RUNNING
        recs = store.trials()
        tracker.end_stale_trials({tid: mlflow_end(recs[tid]["status"], recs[tid]["summary"]) for tid in ended})
    cache = os.environ.get("SCALESWEEP_CACHE")  # built-in corpus cache; None = the trainer's default
    # Fault-injection tests only: every report sleeps this long, so a (simulated) sweep lasts
    # long enough to kill something mid-run. Read here and passed in the trial config, so it
    # reaches trials on any cluster.
    report_delay = float(os.environ.get("SCALESWEEP_REPORT_DELAY_S", "0") or 0)

    decisions: dict[str, dict[str, Any]] = {}  # trial id -> why the planner chose it
    # A store on S3: Tune's files and the trials' checkpoints go to the same bucket, so trials may
    # run (and restart) on any node with no shared path (docs/cluster.md, "The observation store on S3").
    storage_path, storage_fs = store.location.tune_storage(sweep_dir / "ray")
    train_storage = delayed_open(store.location.describe("ray")) if store.location.remote else storage_path
    mirror = store.location.describe("checkpoints") if store.location.remote and spec.checkpoints.enabled else None
    # a command trainer's attempt folders (config, metrics, logs) go to the bucket as well
    runs_mirror = store.location.describe("runs") if store.location.remote and spec.trainer.backend == "command" else None
    if mirror:  # a controller lost with its disk lost its last reports: no trial may resume past them
        for tid, at in drop_checkpoints_past_reports(store, mirror).items():
            log.warning("trial %s: its checkpoint at step %d is past the store's last report (a controller lost with "
                        "its unflushed reports); it starts again from step 0", tid, at)

    stop_key = stash["stop"].stop_key  # (not `stash` in the closure: Tune pickles the searcher that holds it)

    def to_config(t: PlannedTrial) -> dict[str, Any]:
        # a planner may plan trials as it goes (transfer) or re-plan one before it hands it out (the law
        # search's WSD runs: their warmup, checkpoints, branch point): what the store records is what runs
        records[t.trial_id] = record_of(t)
        why = next((d for d in reversed(planner.decisions) if d.get("trial_id") == t.trial_id), None)
        if why is not None:
            decisions[t.trial_id] = why
        ckpt = str(sweep_dir / "checkpoints" / t.trial_id)
        own = spec.trainer.own  # a user's trainer (docs/trainers.md): how to run it, where its files go
        # A user's stop: the trial checkpoints after its next report and ends (on several Ray Train
        # workers, every rank at the same report, once the store has acknowledged it: tune.report_ack).
        trial = trial_config(spec, t, ckpt, cache)
        if mirror:
            trial = replace(trial, checkpoint_mirror=f"{mirror}/{t.trial_id}")
        return TrialEnvelope(trial, backend=spec.trainer.backend,
                             world=spec.trainer.world, storage=train_storage, use_gpu=spec.resources.use_gpu,
                             max_failures=spec.checkpoints.max_failures, cell_D=t.cell.D,
                             own=own_trainer_settings(spec) if own else None,
                             run_dir=str(sweep_dir / "runs" / t.trial_id) if own else None, N=t.N if own else None,
                             run_mirror=f"{runs_mirror}/{t.trial_id}" if runs_mirror else None,
                             report_delay_s=report_delay, stop_key=stop_key, branch_of=t.branch_of,
                             ).to_config()

    def resources(config: dict[str, Any]):
        trial = TrialEnvelope.from_config(config).trial
        if trial.workers > 1 and spec.trainer.backend == "command":
            # the trial process launches every worker's program itself, on its own node
            return {"CPU": trial.threads * trial.workers, **({"GPU": trial.workers} if spec.resources.use_gpu else {})}
        if trial.workers > 1:
            return DRIVER_RESOURCES
        return {"CPU": trial.threads, **({"GPU": 1} if spec.resources.use_gpu else {})}

    planned = planner.runnable()
    progress = SweepProgress(spec.name, planner.trial_cap, sum(t.flops for t in planned),
                             spec.budget.total_flops, enabled=show_progress)
    scheduler = None
    if spec.pruning.enabled:  # a resumed sweep's pruner starts from the trials that finished before
        # the ended trials, and the trunks of their WSD branches (a branch's early curve is its trunk's)
        by_id = {t.trial_id: t for t in planner.trials}
        need, todo = set(), [tid for tid in ended if tid in by_id]
        while todo:
            tid = todo.pop()
            if tid not in need:
                need.add(tid)
                if by_id[tid].branch_of in by_id:
                    todo.append(by_id[tid].branch_of)
        metas = {tid: trial_meta(trial_config(spec, by_id[tid], None, cache), cell_D=by_id[tid].cell.D,
                                 trunk=by_id[tid].branch_of) for tid in need}
        scheduler = PrunerScheduler(spec.pruning, background=spec.pruning.background, history=completed_from_store(store, metas, spec.pruning.metric))
    callback = SweepCallback(store, tracker, progress, records, decisions,
                             stops=scheduler.decisions if scheduler is not None else None,
                             interrupted=stop_requested)
    from ..adapters.tune.callback import ContractStopper
    searcher = PlannerSearcher(planner, to_config, paused=stop_requested)  # no new trial once stopping
    tuner = tune.Tuner(
        tune.with_resources(run_trial, resources),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=max(1, planner.trial_cap),
                                    max_concurrent_trials=max_concurrent_trials(spec, planner.trials),
                                    # A fresh trial process costs seconds (torch + DeepSpeed
                                    # imports), often more than a small trial's training; the
                                    # trainer leaves no global state behind, so processes are
                                    # reused -- but Tune cannot reuse one across resource shapes.
                                    reuse_actors=all(t.workers == 1 for t in planner.trials)),
        # ForgetEndedTrials: Tune would keep every ended trial's metric analysis (≈90 KB a trial)
        run_config=tune.RunConfig(name=spec.name, storage_path=storage_path, storage_filesystem=storage_fs,
                                  callbacks=[callback, ForgetEndedTrials()],
                                  verbose=0,
                                  # a user's trainer that breaks the contract (no first report, ...)
                                  # would fail every trial alike: the sweep ends at the first one
                                  stop=ContractStopper(callback, stop_timeout_s=spec.checkpoints.stop_timeout_s,
                                                       requested_at=stop_requested_at),
                                  # a crashed trial is restarted and resumes from its last checkpoint
                                  failure_config=tune.FailureConfig(max_failures=spec.checkpoints.max_failures)),
    )
    # Tune's ResultGrid reads the per-trial files of the loggers tune_env turns off and warns
    # for every trial when they are missing; the store and MLflow are the sweep's record.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    from ..adapters.tune import sync_race

    sync_race.install()  # Tune's own sync racing its temporary files: one line, not a traceback
    # Any exception from here on reaches run_sweep, which flushes the store (a failing flush
    # keeps the first error: the rows stay unwritten, the parts on disk whole, `resume`
    # continues) and ends the parent run FAILED.
    log.info("Ray Tune experiment %s in %s: searcher %s, scheduler %s, up to %d trials", spec.name, storage_path,
             type(searcher).__name__, type(scheduler).__name__ if scheduler is not None else "FIFOScheduler",
             max(1, planner.trial_cap))
    with progress, set_environ(tune_env(spec)):
        tuner.fit()
    if stash["stop"].requested:  # Tune stopped every trial (ContractStopper.stop_all): record it, exit
        raise finish_interrupted(stash, sweep_dir)
    store.flush()
    if callback.contract_errors:  # run_sweep ends the parent run FAILED and re-raises it (exit 2)
        tid, msg = next(iter(callback.contract_errors.items()))
        raise TrainerContractError(f"{msg}\n(the sweep stopped: trial {tid} broke the trial contract; "
                                   f"see docs/trainers.md)")
    if not parent:  # MLflow was slow to create the parent run at the start
        parent = remember_parent(sweep_dir, tracker)
    outcome = summarise(spec, store, tracker, parent, t0, planner.decisions, planner.hparam_advice())
    from .query import save_live_search

    save_live_search(store, spec, planner)  # the first `propose`/`status` reads the live search, no replay
    tracker.close("FINISHED", timeout=spec.tracking.close_timeout_s or 30.0)
    return outcome


def _train_tokens(spec: SweepSpec, cache: Optional[str]) -> Optional[int]:
    """Training tokens of the sweep's data (each trial's record then carries its epochs), or None
    where there is no data (simulated) or it cannot be read here (the trials will say why)."""
    if spec.trainer.backend == "simulated" or (spec.trainer.own and spec.data == "builtin"):
        return None
    try:
        from trainers.corpus import load_data

        return len(load_data(spec.data_config(), cache).train)
    except (OSError, ValueError) as exc:
        log.warning("data: cannot count the training tokens here (%s); trials carry no epoch count", exc)
        return None

