"""A sweep's entry point: spec → sweep directory → `tune_run.run_tuner` (Ray Tune) → fit and proposals, and
what a failed or stopped run leaves (`SweepFailed`, `SweepInterrupted`, the error log). Its parts:
`capacity` (what fits the cluster), `tune_run` (the Tuner's wiring), `stopping` (signals, `scalesweep stop`),
`outcome` (the end-of-sweep fit and summary). Each name is imported from the module that defines it (none
is re-exported here)."""
from __future__ import annotations

import logging
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import yaml

from ..config.spec import SpecError, SweepSpec
from ..io.store import StoreError
from .capacity import check_capacity, ray_capacity
from .outcome import SweepOutcome, cache_search
from .stopping import StopRequest, SweepInterrupted, activate, finish_interrupted, write_pid
from .tune_run import TrainerContractError, init_ray, run_tuner

__all__ = ["ERROR_LOG", "TAG_ERROR", "SweepFailed", "one_line", "prepare_dir", "run_sweep"]

log = logging.getLogger(__name__)

ERROR_LOG = "error.log"  # tracebacks of failed runs of this sweep, appended
TAG_ERROR = "scalesweep.error"  # on the parent run of a sweep that failed: the error in one line


class SweepFailed(RuntimeError):
    """A sweep that started and then failed. The MLflow parent run is ended FAILED with the
    error as a tag, the store is flushed, the traceback is in `log_path`; `scalesweep resume`
    continues. `str()` is one line."""

    def __init__(self, line: str, log_path: Optional[Path]):
        super().__init__(line)
        self.line, self.log_path = line, log_path


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, at most `limit` characters.

    >>> one_line(ValueError("no trial finished\\nsecond line"))
    'ValueError: no trial finished'
    """
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


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


def run_sweep(spec: SweepSpec, spec_path: Optional[str] = None, *, show_progress: bool = True) -> SweepOutcome:
    """Run the spec's trials through a Ray Tune Tuner, record everything, fit and propose.

    Raises `SpecError` (nothing written) when a local cluster cannot hold a trial (a remote one
    may autoscale: a warning); `StoreError`
    when the sweep directory cannot be written; `SweepFailed` (one line) for any other error
    after the sweep started, having flushed the store, ended the MLflow parent run FAILED
    with the error as a tag and appended the traceback to `<sweep dir>/error.log`.
    """
    t0 = time.monotonic()
    init_ray()
    try:
        check_capacity(spec, *ray_capacity(), where="the Ray cluster")  # before anything is written
    except SpecError as exc:
        if not os.environ.get("RAY_ADDRESS"):
            raise  # a local cluster never grows: the trial would wait forever
        # a remote cluster may autoscale: its size now is not its size later
        log.warning("%s; trials wait until the cluster grows", str(exc).splitlines()[-1].strip())
    sweep_dir = prepare_dir(spec, spec_path)
    from ..adapters.tune.stop_signal import new_key

    stop = StopRequest(new_key(spec.name))  # a fresh flag: no earlier run's stop applies
    stash: dict[str, Any] = {"stop": stop}  # what run_tuner has opened so far: the store, the tracker, the planner
    activate(stop)
    stop.install()
    pid_file = write_pid(sweep_dir)
    try:
        return run_tuner(spec, spec_path, sweep_dir, show_progress, t0, stash)
    except SweepInterrupted:
        raise
    except BaseException as exc:
        if stop.requested or isinstance(exc, KeyboardInterrupt):  # a hard stop, or an error while stopping
            stop.request("SIGINT")
            stop.hard = True
            raise finish_interrupted(stash, sweep_dir) from None
        log_path = _record_failure(exc, sweep_dir, stash.get("store"), stash.get("tracker"))
        cache_search(stash)
        if isinstance(exc, Exception) and not isinstance(exc, (StoreError, TrainerContractError)):
            raise SweepFailed(one_line(exc), log_path) from exc
        raise
    finally:
        stop.restore()
        stop.clear()
        activate(None)
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)


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

