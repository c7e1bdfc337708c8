"""Stopping a running sweep: SIGINT / SIGTERM / `scalesweep stop` (`StopRequest`, the controller's pid
file), and what a stop records (`finish_interrupted`: trials `stopped-by-user`, the parent run KILLED)."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from ..io.store import RESUME_SKIPS, STOPPED_BY_USER
from .outcome import cache_search, remember_parent

log = logging.getLogger(__name__)

TAG_INTERRUPTED = "scalesweep.interrupted"  # on the parent run of a sweep the user stopped: how and when
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + signal number, as a shell reports a signalled program


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
    the controller records them, see `finish_interrupted`); the second stops at once
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
        self.finishing = False  # recording the stop (finish_interrupted): a further signal waits for it
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



def ignore_further_signals() -> None:
    """The stop is recorded and this process is exiting: from now on SIGINT and SIGTERM are ignored,
    so that one arriving now (the API server's second signal after its grace period, a third Ctrl-C)
    does not cut Ray's shutdown at exit short (a traceback from its atexit handler). Main thread only."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


_ACTIVE: Optional[StopRequest] = None  # the stop request of the sweep this process runs now


def stop_requested_at() -> Optional[float]:
    """When (time.monotonic) the user asked the running sweep to stop, or None."""
    return _ACTIVE.requested_at if _ACTIVE is not None else None


def stop_requested() -> bool:
    """Whether the user asked the running sweep to stop. A module function, not a closure: Tune
    copies its callbacks and stoppers (pickling them), and a copy must still see the request."""
    return _ACTIVE is not None and _ACTIVE.requested



def activate(stop: Optional[StopRequest]) -> None:
    """Make `stop` the request of the sweep this process runs now (None: the sweep ended)."""
    global _ACTIVE
    _ACTIVE = stop


PID_FILE = "controller.pid"  # "<pid> <host>" of the controller running this sweep: `scalesweep stop DIR`


def write_pid(sweep_dir: Path) -> Optional[Path]:
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


def finish_interrupted(stash: dict[str, Any], sweep_dir: Path) -> SweepInterrupted:
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
            remember_parent(sweep_dir, tracker)  # created after tracker.start gave up waiting: resume reuses it
        except Exception:  # noqa: BLE001 -- MLflow must not turn a stop into a crash
            log.exception("could not end the MLflow run of the stopped sweep")
    if not stop.hard:  # a second signal stops at once: no replay of the search then
        cache_search(stash)
    return SweepInterrupted(ended, total, stop.signame or "SIGINT", sweep_dir, stop.hard)

