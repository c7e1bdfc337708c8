"""Wiring of a sweep: spec → store, MLflow, planner → Ray Tune Tuner → fit and proposals."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import yaml

from ..core.laws.result import jsonable
from ..core.planning.protocol import HparamAdvice
from ..core.planning.trial import PlannedTrial
from ..config.trials import trial_config
from ..config.planners import make_planner
from .query import SweepData, sweep_fit
from .progress import SweepProgress
from ..core.proposals import SweepFit
from ..config.spec import SpecError, SweepSpec
from ..io.store import (RESUME_SKIPS, STOPPED_BY_USER, ObservationStore, StoreError, drop_checkpoints_past_reports,
                    ended_trials)

log = logging.getLogger(__name__)

# A multi-worker trial's driver process only launches the TorchTrainer; it must reserve
# no CPU (its workers reserve theirs) yet Tune needs a non-empty bundle.
DRIVER_RESOURCES = {"CPU": 0, "memory": 16 * 1024**2}
ERROR_LOG = "error.log"  # tracebacks of failed runs of this sweep, appended
TAG_ERROR = "scalesweep.error"  # on the parent run of a sweep that failed: the error in one line
TAG_INTERRUPTED = "scalesweep.interrupted"  # on the parent run of a sweep the user stopped: how and when
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + signal number, as a shell reports a signalled program


class SweepFailed(RuntimeError):
    """A sweep that started and then failed. The MLflow parent run is ended FAILED with the
    error as a tag, the store is flushed, the traceback is in `log_path`; `scalesweep resume`
    continues. `str()` is one line."""

    def __init__(self, line: str, log_path: Optional[Path]):
        super().__init__(line)
        self.line, self.log_path = line, log_path


class SweepInterrupted(RuntimeError):
    """The user stopped a sweep (Ctrl-C, SIGTERM, `scalesweep stop`). Running trials were ended and
    marked `stopped-by-user`, the store flushed, the MLflow parent run ended KILLED with a
    `scalesweep.interrupted` tag; no fit was written. `scalesweep resume` continues. `str()` is one line."""

    def __init__(self, ended: int, total: int, signame: str, sweep_dir: Path, hard: bool = False):
        self.ended, self.total, self.signame, self.sweep_dir, self.hard = ended, total, signame, sweep_dir, hard
        super().__init__(f"interrupted after {ended} of {total} trials; `scalesweep resume {sweep_dir}` continues")

    @property
    def exit_code(self) -> int:
        """130 after SIGINT (Ctrl-C), 143 after SIGTERM: what a shell reports for a program killed by it."""
        return EXIT_CODES.get(self.signame, 130)


class StopRequest:
    """SIGINT / SIGTERM while a sweep runs: the first asks the sweep to stop (Tune stops its trials,
    the controller records them, see `_finish_interrupted`); the second stops at once
    (`KeyboardInterrupt`), still leaving a resumable sweep. Replaces Ray Tune's own SIGINT
    handler (`TUNE_DISABLE_SIGINT_HANDLER`, see `tune_env`), which would end the Tuner's loop
    without ending the trials' records. Handlers are installed only from the main thread
    (a sweep run by the API server runs in a worker thread: it is stopped another way).
    """

    def __init__(self, stop_key: Optional[str] = None) -> None:
        self.signame: Optional[str] = None
        self.hard = False
        # Raised at the request (Ray's GCS, seen from every node: tune.stop_signal): running trials
        # see it after their next report, save a checkpoint there and end (trainable._reporter);
        # removed once the stop is recorded or the sweep has ended.
        self.stop_key = stop_key
        self.requested_at: Optional[float] = None
        self.finishing = False  # recording the stop (_finish_interrupted): a further signal waits for it
        self._saved: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signame is not None

    def request(self, signame: str = "SIGINT") -> None:
        """Ask the sweep to stop, as the first signal does."""
        if self.signame is None:
            self.signame = signame
            self.requested_at = time.monotonic()
            if self.stop_key is not None:  # not published: trials end when Tune stops them (stop_timeout_s)
                from ..adapters.tune.stop_signal import raise_flag

                raise_flag(self.stop_key, signame)

    def clear(self) -> None:
        """Lower the stop flag (a stop fully recorded; the sweep ended)."""
        if self.stop_key is not None:
            from ..adapters.tune.stop_signal import clear_flag

            clear_flag(self.stop_key)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if not self.requested:
            self.request(name)
            if sys.stderr.isatty():  # a person pressed Ctrl-C: say that it was heard
                sys.stderr.write(f"\n{name}: stopping the sweep; running trials save a checkpoint at their next "
                                 "report and end (press Ctrl-C again to stop at once)\n")
            return
        if self.hard or self.finishing:  # recording the stop already: let it finish (seconds)
            return
        self.hard = True
        raise KeyboardInterrupt(name)


_ACTIVE: Optional[StopRequest] = None  # the stop request of the sweep this process runs now


def _stop_requested_at() -> Optional[float]:
    """When (time.monotonic) the user asked the running sweep to stop, or None."""
    return _ACTIVE.requested_at if _ACTIVE is not None else None


def stop_requested() -> bool:
    """Whether the user asked the running sweep to stop. A module function, not a closure: Tune
    copies its callbacks and stoppers (pickling them), and a copy must still see the request."""
    return _ACTIVE is not None and _ACTIVE.requested


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, at most `limit` characters.

    >>> one_line(ValueError("no trial finished\\nsecond line"))
    'ValueError: no trial finished'
    """
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def check_capacity(spec: SweepSpec, cpus: float, gpus: float, where: str = "this machine") -> None:
    """Every trial's workers fit the cluster at once (CPUs: workers x threads; GPUs: one per worker
    with use_gpu): otherwise Ray Tune waits for resources forever. Raises `SpecError`."""
    from ..config.trials import plan_grid

    workers = max((t.workers for t in plan_grid(spec)), default=1)
    need = workers * spec.resources.threads
    if need > cpus:
        raise SpecError(f"invalid spec\n  resources.threads: a trial needs {workers} worker(s) x "
                        f"{spec.resources.threads} thread(s) = {need} CPUs; {where} has {cpus:g}")
    if spec.resources.use_gpu and workers > gpus:
        raise SpecError(f"invalid spec\n  resources.use_gpu: a trial needs {workers} GPU(s); {where} has "
                        f"{gpus:g}" + ("" if gpus else " (set use_gpu: false, or run on a cluster with GPUs)"))


def _local_cpus() -> float:
    """CPUs this process may use, as Ray counts them: the affinity mask, capped by a cgroup quota."""
    try:
        cpus = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cpus = float(os.cpu_count() or 1)
    try:  # cgroup v2: "max 100000" (no quota) or "<quota> <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1.0, float(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def local_capacity(gpus: bool = True) -> tuple[float, float]:
    """(CPUs, GPUs) a local Ray cluster started here would have; GPUs counted only when asked
    (counting imports Ray: seconds)."""
    cpus = _local_cpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not gpus or visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return cpus, 0.0
    try:  # Ray's own count (NVML), as `ray.init` would see it
        from ray._private.accelerators import get_accelerator_manager_for_resource

        n = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
        if visible:
            n = min(n, len([v for v in visible.split(",") if v.strip()]))
    except Exception:  # noqa: BLE001 -- a private API: fall back to the device files
        n = len([p for p in Path("/dev").glob("nvidia[0-9]*")])
    return cpus, float(n)


@dataclass
class SweepOutcome:
    """What a finished sweep returns."""

    sweep_dir: Path
    statuses: dict[str, int]
    fit: SweepFit
    wall_s: float
    train_s: float  # seconds inside training steps in this run, summed over trials (sweep_summary.train_seconds)
    mlflow_parent_run: Optional[str]
    slots: int = 1  # concurrent trial slots the summary measured useful work against (sweep_summary.useful_work_fraction)


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
    """Run the spec's trials through a Ray Tune Tuner, record everything, fit and propose.

    Raises `SpecError` (nothing written) when a local cluster cannot hold a trial (a remote one
    may autoscale: a warning); `StoreError`
    when the sweep directory cannot be written; `SweepFailed` (one line) for any other error
    after the sweep started, having flushed the store, ended the MLflow parent run FAILED
    with the error as a tag and appended the traceback to `<sweep dir>/error.log`.
    """
    t0 = time.monotonic()
    _init_ray()
    try:
        check_capacity(spec, *ray_capacity(), where="the Ray cluster")  # before anything is written
    except SpecError as exc:
        if not os.environ.get("RAY_ADDRESS"):
            raise  # a local cluster never grows: the trial would wait forever
        # a remote cluster may autoscale: its size now is not its size later
        log.warning("%s; trials wait until the cluster grows", str(exc).splitlines()[-1].strip())
    sweep_dir = prepare_dir(spec, spec_path)
    global _ACTIVE
    from ..adapters.tune.stop_signal import new_key

    stop = _ACTIVE = StopRequest(new_key(spec.name))  # a fresh flag: no earlier run's stop applies
    stash: dict[str, Any] = {"stop": stop}  # what _run has opened so far: the store, the tracker, the planner
    stop.install()
    pid_file = _write_pid(sweep_dir)
    try:
        return _run(spec, spec_path, sweep_dir, show_progress, t0, stash)
    except SweepInterrupted:
        raise
    except BaseException as exc:
        if stop.requested or isinstance(exc, KeyboardInterrupt):  # a hard stop, or an error while stopping
            stop.request("SIGINT")
            stop.hard = True
            raise _finish_interrupted(stash, sweep_dir) from None
        log_path = _record_failure(exc, sweep_dir, stash.get("store"), stash.get("tracker"))
        _cache_search(stash)
        if isinstance(exc, Exception) and not isinstance(exc, (StoreError, TrainerContractError)):
            raise SweepFailed(one_line(exc), log_path) from exc
        raise
    finally:
        stop.restore()
        stop.clear()
        _ACTIVE = None
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)


PID_FILE = "controller.pid"  # "<pid> <host>" of the controller running this sweep: `scalesweep stop DIR`


def _write_pid(sweep_dir: Path) -> Optional[Path]:
    import socket

    path = sweep_dir / PID_FILE
    try:
        path.write_text(f"{os.getpid()} {socket.gethostname()}\n")
    except OSError:
        return None  # informative only: `scalesweep stop DIR` then says no controller is running
    return path


def controller_pid(sweep_dir: Path) -> Optional[int]:
    """The pid of the controller running the sweep in `sweep_dir` on this host, or None."""
    import socket

    try:
        pid, host = (sweep_dir / PID_FILE).read_text().split()[:2]
        pid_n = int(pid)
    except (OSError, ValueError):
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid_n


def _finish_interrupted(stash: dict[str, Any], sweep_dir: Path) -> SweepInterrupted:
    """After a stop request: mark the trials still running `stopped-by-user`, flush the store, end
    their MLflow runs and the parent run KILLED with a tag; the `SweepInterrupted` to raise.
    Writes no fit: the grid is partial (`scalesweep resume` fits once every trial has ended)."""
    stop: StopRequest = stash["stop"]
    stop.finishing = True
    store, tracker, planner = stash.get("store"), stash.get("tracker"), stash.get("planner")
    how = ("a second signal: stopped at once" if stop.hard
           else "running trials ended at their next report, with a checkpoint there")
    reason = f"stopped by the user ({stop.signame}; {how}); `scalesweep resume` reruns it from its last checkpoint"
    stopped: list[str] = []
    ended, total = 0, 0
    if store is not None:
        try:
            store.flush()
            trials = store.trials()
            stopped = [tid for tid, rec in trials.items() if rec["status"] == "running"]
            for tid in stopped:
                store.set_status(tid, STOPPED_BY_USER, summary={"reason": reason})
            store.flush()
            ended = sum(1 for rec in trials.values() if rec["status"] in RESUME_SKIPS)
            total = len(trials)
        except Exception:  # noqa: BLE001 -- the parts on disk stay whole; resume reruns what is not ended
            log.exception("could not record the stopped trials in the store")
    if planner is not None:
        total = max(total, planner.trial_cap)
    if tracker is not None:
        try:
            for tid in stopped:
                tracker.end_trial(tid, "KILLED", {"scalesweep.status": STOPPED_BY_USER, "scalesweep.reason": reason})
            tracker.set_tags(None, {TAG_INTERRUPTED: f"stopped by the user ({stop.signame}; {how}) after {ended} "
                                                     f"of {total} trials; `scalesweep resume` continues"})
            tracker.close("KILLED", timeout=5.0 if stop.hard else 30.0)
            _remember_parent(sweep_dir, tracker)  # created after tracker.start gave up waiting: resume reuses it
        except Exception:  # noqa: BLE001 -- MLflow must not turn a stop into a crash
            log.exception("could not end the MLflow run of the stopped sweep")
    if not stop.hard:  # a second signal stops at once: no replay of the search then
        _cache_search(stash)
    return SweepInterrupted(ended, total, stop.signame or "SIGINT", sweep_dir, stop.hard)


def _cache_search(stash: dict[str, Any]) -> None:
    """A law/transfer sweep that stopped or failed: cache the search a resume rebuilds, so the first query
    does not replay it (`query.cache_search_of_stopped_sweep`; a finished sweep caches its live search)."""
    store = stash.get("store")
    if store is None:
        return
    try:
        from .query import cache_search_of_stopped_sweep

        cache_search_of_stopped_sweep(store)
    except Exception:  # noqa: BLE001 -- only a cache: the first query replays instead
        log.warning("could not cache the sweep's search (the first query replays it)", exc_info=True)


def _remember_parent(sweep_dir: Path, tracker) -> Optional[str]:
    """Record the sweep's MLflow parent run in sweep.json, so that `scalesweep resume` reuses it; its id."""
    run_id = tracker.run_id(None)
    state_file = sweep_dir / "sweep.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if run_id and state.get("mlflow_parent_run") != run_id:
        state_file.write_text(json.dumps({**state, "mlflow_parent_run": run_id}))
    return run_id


def ray_capacity() -> tuple[float, float]:
    """(CPUs, GPUs) of the Ray cluster this process is connected to."""
    import ray

    have = ray.cluster_resources()
    return float(have.get("CPU", 0.0)), float(have.get("GPU", 0.0))


def _record_failure(exc: BaseException, sweep_dir: Path, store, tracker) -> Optional[Path]:
    """After a sweep failed: flush the store, end the parent run FAILED with the error as a tag,
    append the traceback to the sweep's error log (returned; None if it cannot be written)."""
    if store is not None:
        try:
            store.flush()
        except Exception:  # noqa: BLE001 -- most likely the very error; the parts on disk stay whole
            log.exception("could not flush the store while the sweep failed")
    if tracker is not None:
        try:
            tracker.set_tags(None, {TAG_ERROR: one_line(exc)})
            tracker.close("FAILED")
        except Exception:  # noqa: BLE001 -- MLflow must not hide the sweep's own error
            log.exception("could not end the MLflow run while the sweep failed")
    path = sweep_dir / ERROR_LOG
    try:
        with path.open("a") as fh:
            fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {one_line(exc)}\n")
            fh.write("".join(traceback.format_exception(exc)))
    except OSError:
        return None
    return path


def _run(spec: SweepSpec, spec_path: Optional[str], sweep_dir: Path, show_progress: bool, t0: float,
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
    planner.resume(ended)  # a resumed sweep: what ended is not run again
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
        records.setdefault(t.trial_id, record_of(t))  # a planner may plan trials as it goes (transfer)
        why = next((d for d in reversed(planner.decisions) if d.get("trial_id") == t.trial_id), None)
        if why is not None:
            decisions[t.trial_id] = why
        ckpt = str(sweep_dir / "checkpoints" / t.trial_id)
        own = spec.trainer.own  # a user's trainer (docs/trainers.md): how to run it, where its files go
        # A user's stop: the trial checkpoints after its next report and ends. (Ray Train's workers
        # report asynchronously to Tune: a checkpoint there could be past the last recorded step.)
        stops = t.workers == 1 or spec.trainer.backend == "command"
        trial = trial_config(spec, t, ckpt, cache)
        if mirror:
            trial = replace(trial, checkpoint_mirror=f"{mirror}/{t.trial_id}")
        return TrialEnvelope(trial, backend=spec.trainer.backend,
                             world=spec.trainer.world, storage=train_storage, use_gpu=spec.resources.use_gpu,
                             max_failures=spec.checkpoints.max_failures, cell_D=t.cell.D,
                             own=own_trainer_settings(spec) if own else None,
                             run_dir=str(sweep_dir / "runs" / t.trial_id) if own else None, N=t.N if own else None,
                             run_mirror=f"{runs_mirror}/{t.trial_id}" if runs_mirror else None,
                             report_delay_s=report_delay, stop_key=stop_key if stops else None,
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
        metas = {t.trial_id: trial_meta(trial_config(spec, t, None, cache), cell_D=t.cell.D)
                 for t in planner.trials if t.trial_id in ended}
        scheduler = PrunerScheduler(spec.pruning, background=spec.pruning.background, history=completed_from_store(store, metas, spec.pruning.metric))
    callback = SweepCallback(store, tracker, progress, records, decisions,
                             stops=scheduler.decisions if scheduler is not None else None,
                             interrupted=stop_requested)
    from ..adapters.tune.callback import ContractStopper
    searcher = PlannerSearcher(planner, to_config, paused=stop_requested)  # no new trial once stopping
    tuner = tune.Tuner(
        tune.with_resources(run_trial, resources),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=max(1, planner.trial_cap),
                                    max_concurrent_trials=_max_concurrent(spec, planner.trials),
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
                                                       requested_at=_stop_requested_at),
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
        raise _finish_interrupted(stash, sweep_dir)
    store.flush()
    if callback.contract_errors:  # run_sweep ends the parent run FAILED and re-raises it (exit 2)
        tid, msg = next(iter(callback.contract_errors.items()))
        raise TrainerContractError(f"{msg}\n(the sweep stopped: trial {tid} broke the trial contract; "
                                   f"see docs/trainers.md)")
    if not parent:  # MLflow was slow to create the parent run at the start
        parent = _remember_parent(sweep_dir, tracker)
    outcome = summarise(spec, store, tracker, parent, t0, planner.decisions, planner.hparam_advice())
    from .query import save_live_search

    save_live_search(store, spec, planner)  # the first `propose`/`status` reads the live search, no replay
    tracker.close("FINISHED", timeout=spec.tracking.close_timeout_s or 30.0)
    return outcome


class TrainerContractError(RuntimeError):
    """A user's trainer broke the trial contract (no first report in time, a malformed report);
    the message names the spec field or the problem. The CLI exits 2 on it."""


def own_trainer_settings(spec: SweepSpec) -> dict[str, Any]:
    """How a trial runs the user's trainer (`trainer.backend: command | python`), as plain data."""
    t = spec.trainer
    return {"command": t.command, "entrypoint": t.entrypoint, "cwd": t.cwd, "env": dict(t.env),
            "grace_period_s": t.grace_period_s, "first_report_timeout_s": t.first_report_timeout_s,
            "warm_start": list(t.warm_start)}


def summarise(spec: SweepSpec, store: ObservationStore, tracker, parent: Optional[str], t0: float,
              decisions: Optional[list[dict[str, Any]]] = None, advice: Optional[HparamAdvice] = None) -> SweepOutcome:
    """Fit the law on the finished trials, write fit + proposals to the sweep dir and MLflow; `advice`:
    the planner's learned lr/batch laws (a law/transfer search's), used as they are."""
    data = SweepData.read(store)  # the query path `scalesweep propose` and the API answer through too
    points, task_rows = data.points, data.task_rows  # task rows: empty unless the spec named eval.tasks
    fit = sweep_fit(data, spec, spec.budget.targets, advice=advice)
    sweep_dir = spec.sweep_dir()
    doc = jsonable(fit.to_json())
    task_doc, task_plot_data = None, {}
    if task_rows:
        from .task_summary import summarise_tasks

        task_doc, task_plot_data = summarise_tasks(task_rows, fit, bootstrap=spec.fit.bootstrap, level=spec.fit.level,
                                                   seed=spec.seed, targets=spec.budget.targets)
        doc["downstream"] = task_doc
    (sweep_dir / "fit.json").write_text(json.dumps(doc, indent=2, allow_nan=False))
    from .sweep_summary import (law_metrics, proposals_table, summary_markdown, train_seconds,
                                useful_work_fraction, warnings)

    trials = store.trials()
    statuses: dict[str, int] = {}
    for rec in trials.values():
        statuses[rec["status"]] = statuses.get(rec["status"], 0) + 1
    wall = time.monotonic() - t0
    # this run's training seconds only: a resumed sweep's earlier runs are not in `wall`
    obs = store.observations().select(["trial_id", "wall_time", "step_time_s"]).to_pylist()
    train_s = train_seconds(obs, since=time.time() - wall, measured=spec.trainer.backend != "simulated")
    slots = _slots(spec)
    refit = _refit_step(sweep_dir, doc)
    if tracker is not None:
        fraction = useful_work_fraction(train_s, wall, slots)
        work = {"trials_finished": statuses.get("finished", 0), "wall_s": wall, "train_s": train_s,
                "slots": slots, "useful_work_fraction": fraction}
        metrics = {**{k: v for k, v in work.items() if v is not None}, **law_metrics(doc)}
        ws = warnings(doc)
        tags = {"scalesweep.law.form": (doc.get("law") or {}).get("form") or "none",
                "scalesweep.law.reason": ((doc.get("law") or {}).get("selection") or {}).get("reason", ""),
                "scalesweep.n_warnings": len(ws), "scalesweep.warnings": "\n".join(ws) or "none"}
        # no trial finished (all diverged, say): nothing to draw; the fit's warnings say why
        from .plots.evidence import sweep_figures

        figures = sweep_figures(spec, store, fit, points) if points else {}
        artifacts = {"fit": doc, "proposals": doc["proposals"], "decisions": jsonable(decisions or [])}
        if task_doc is not None:
            from .task_summary import task_plot

            artifacts["downstream"] = task_doc
            figure = task_plot(task_plot_data, level=spec.fit.level)
            if figure is not None:
                figures["accuracy_vs_compute"] = figure
        tracker.log_sweep_results({}, metrics, artifacts, figures, tables={"proposals": proposals_table(doc)},
                                  texts={"summary.md": summary_markdown(spec.name, doc, statuses, work)},
                                  tags=tags, step=refit)
    return SweepOutcome(sweep_dir, statuses, fit, wall, train_s, parent, slots)


def _slots(spec: SweepSpec) -> int:
    """Concurrent trial slots of this sweep on the connected Ray cluster (1 without one)."""
    try:
        import ray

        from ..config.trials import plan_grid

        if ray.is_initialized():  # never start a cluster just to count its slots
            return _max_concurrent(spec, plan_grid(spec))
    except Exception:  # noqa: BLE001 -- no Ray cluster (a summary outside a run): the spec's cap or 1
        pass
    return spec.resources.max_concurrent or 1


FIT_HISTORY = "fit_history.jsonl"  # one line per refit of this sweep (its MLflow step), across resumes


def _refit_step(sweep_dir: Path, doc: dict[str, Any]) -> int:
    """This refit's number (0, 1, ...), counted over every run of the sweep; records the refit."""
    path = sweep_dir / FIT_HISTORY
    try:
        step = sum(1 for _ in path.open()) if path.exists() else 0
        law = doc.get("law") or {}
        with path.open("a") as fh:
            fh.write(json.dumps({"step": step, "time": time.time(), "form": law.get("form"),
                                 "params": law.get("params"), "n_cells": law.get("n_points")},
                                allow_nan=False, default=str) + "\n")
    except (OSError, ValueError):  # an unwritable history must not lose the fit: count from 0
        return 0
    return step


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
