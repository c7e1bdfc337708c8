"""The sweeps' controller processes: start, watch, stop, and the record each leaves behind.

The server starts `python -m orchestrator.app.api supervise DIR` in its own session; that supervisor
runs `scalesweep run` on the sweep's spec and records the controller's exit code in
`controller.json`, so a restarted server still knows how a sweep ended. When the server shuts
down (SIGTERM, Ctrl-C) it signals every sweep it started at once — the supervisor forwards the
signal, the controller asks running trials to checkpoint at their next report, marks them
stopped-by-user and exits; a sweep still running after a short grace period gets a second signal
(stopped at once, as a second Ctrl-C: still recorded and resumable), and whatever of its process
group is left after that is killed: no orphan outlives the server.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

log = logging.getLogger("orchestrator.app.api")

CONTROLLER_FILE = "controller.json"
LOG_FILE = "controller.log"
STOP_GRACE_S = 2.0  # a graceful stop: trials checkpoint at their next report (a simulated sweep's
# controller ended 2-5 s after the request on 2 busy cores: 0.3 s to stop the trials, the rest to end
# MLflow and Ray); a sweep still running then is stopped at once (a second signal)
HARD_STOP_S = 15.0  # a stop at once: the store flushed, MLflow ended (5 s at most), Ray shut down; what is
# left of the sweep then is killed. 2 + 15 s stays under Kubernetes' default termination grace (30 s)
STOP_CODES = (130, 143, -int(signal.SIGINT), -int(signal.SIGTERM))  # how a controller exits when stopped


@contextlib.contextmanager
def _locked(sweep_dir: Path) -> Iterator[None]:
    """An exclusive lock for read-modify-write of controller.json (server and supervisor)."""
    with open(sweep_dir / ".controller.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_controller(sweep_dir: Path) -> Optional[dict[str, Any]]:
    """The sweep's controller record, or None when no server started it."""
    try:
        doc = json.loads((sweep_dir / CONTROLLER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def update_controller(sweep_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into controller.json atomically."""
    with _locked(sweep_dir):
        doc = read_controller(sweep_dir) or {}
        doc.update(fields)
        tmp = sweep_dir / f".{CONTROLLER_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, sweep_dir / CONTROLLER_FILE)
    return doc


def pid_alive(pid: int, sweep_dir: Path) -> bool:
    """Whether `pid` is still our supervisor for this sweep (not a zombie, not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else: check the command line below
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True  # no procfs (macOS): trust kill(0)
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and "supervise" in cmdline and str(sweep_dir) in cmdline


def ended_state(code: int, doc: dict[str, Any]) -> str:
    """finished, stopped (a stop request: the user's, or the server's shutdown) or failed.

    >>> ended_state(0, {}), ended_state(143, {}), ended_state(-9, {"stop_requested": 1.0}), ended_state(1, {})
    ('finished', 'stopped', 'stopped', 'failed')
    """
    if code == 0:
        return "finished"
    return "stopped" if code in STOP_CODES or doc.get("stop_requested") else "failed"


def child_env(token_env: str) -> dict[str, str]:
    """The environment of a supervised sweep: this checkout first on the path, no API token."""
    env = dict(os.environ)
    # The child must import this checkout's packages even when the server was started elsewhere.
    pkg_root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop(token_env, None)  # the sweep has no business holding the API token
    return env


class Supervisor:
    """The controller processes this server started, and how each sweep's controller stands."""

    def __init__(self, token_env: str):
        self.token_env = token_env
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(self, sweep_id: str, sweep_dir: Path) -> None:
        """Start the sweep's supervisor in a session of its own (its process group is the sweep's)."""
        cmd = [sys.executable, "-m", "orchestrator.app.api", "supervise", str(sweep_dir)]
        update_controller(sweep_dir, launched=True, created_at=time.time(), command=cmd)
        try:
            with open(sweep_dir / LOG_FILE, "ab") as logf:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                        cwd=sweep_dir, start_new_session=True, env=child_env(self.token_env))
        except OSError as exc:
            update_controller(sweep_dir, reason=f"could not start the controller: {exc}", finished_at=time.time())
            raise
        self.procs[sweep_id] = (proc, sweep_dir)
        update_controller(sweep_dir, pid=proc.pid)

    def state(self, sweep_id: str, d: Path) -> tuple[str, Optional[int], Optional[dict[str, Any]]]:
        """(status, exit_code, controller record) of a sweep."""
        proc = self.procs.get(sweep_id, (None, d))[0]
        if proc is not None:
            proc.poll()  # reap: a finished child must not linger as a zombie
        doc = read_controller(d)
        if doc is None:
            return "unmanaged", None, None
        if not doc.get("launched"):
            return "not_started", None, doc
        code = doc.get("exit_code")
        if code is None and doc.get("pid") is None and doc.get("reason"):
            return "failed", None, doc  # the controller could not be started at all
        if code is not None:
            return ended_state(int(code), doc), int(code), doc
        pid = doc.get("pid")
        if proc is not None and proc.returncode is None:
            return "running", None, doc
        if proc is None and isinstance(pid, int) and pid_alive(pid, d):
            return "running", None, doc
        if proc is not None and proc.returncode is not None:
            # The supervisor records the code before exiting; re-read in case we raced it.
            doc = read_controller(d) or doc
            code = int(doc.get("exit_code", proc.returncode))
            return ended_state(code, doc), code, doc
        if pid is None:
            return "running", None, doc  # between mkdir and Popen of a concurrent request
        return "failed", None, {**doc, "reason": "the controller exited without recording an exit code"}

    def shutdown(self, grace_s: float = STOP_GRACE_S, hard_s: float = HARD_STOP_S) -> None:
        """Stop every sweep this server started, all at once: SIGTERM (the controller stops
        gracefully); after `grace_s`, SIGTERM again to those still running (stopped at once, still
        resumable); after `hard_s` more, SIGKILL to whatever of their process groups is left."""
        running = [(p, d) for p, d in self.procs.values() if p.poll() is None]
        t0 = time.monotonic()
        if running:
            log.info("stopping %d running sweep(s): %s", len(running), ", ".join(d.name for _, d in running))
        for proc, d in running:
            update_controller(d, stop_requested=time.time(), stop_reason="the API server shut down")
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # the supervisor forwards it to the controller
        late = _still_running(running, grace_s)
        for proc, d in late:  # a second signal: the controller records the stop and exits now
            update_controller(d, hard_stop_requested=time.time())
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc, d in _still_running(late, hard_s):
            _kill_group(proc.pid)
            proc.wait()
            update_controller(d, exit_code=proc.returncode, finished_at=time.time(),
                              reason=f"killed {grace_s + hard_s:.0f} s after the stop request")
        for proc, _ in self.procs.values():
            _kill_group(proc.pid)  # the sweep's own children (a trial, a Ray worker) must not outlive it
        if running:
            log.info("sweeps stopped in %.1f s", time.monotonic() - t0)


def _still_running(procs: list[tuple[subprocess.Popen, Path]], timeout_s: float) -> list[tuple[subprocess.Popen, Path]]:
    """Those of `procs` (signalled together) that have not exited `timeout_s` seconds from now."""
    deadline = time.monotonic() + timeout_s
    left = []
    for proc, d in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            left.append((proc, d))
    return left


def _kill_group(pgid: int) -> None:
    """SIGKILL every process left in a process group (nothing when it is empty)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def supervise(sweep_dir: str | Path) -> int:
    """Run `scalesweep run` on the sweep's spec and record its exit code in controller.json."""
    sweep_dir = Path(sweep_dir).resolve()
    cmd = [sys.executable, "-m", "orchestrator.app.cli", "run", str(sweep_dir / "spec.yaml"), "--no-progress"]
    child = subprocess.Popen(cmd, cwd=sweep_dir)
    update_controller(sweep_dir, controller_pid=child.pid, started_at=time.time())
    stopped: list[int] = []

    def forward(signum, frame):  # stopping the supervisor stops the sweep (a second signal: hard stop)
        stopped.append(signum)
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:
            continue
    extra: dict[str, Any] = {}
    if stopped:  # the server's own stop request, when it sent one, keeps its time
        extra["stop_signal"] = signal.Signals(stopped[0]).name
        if not (read_controller(sweep_dir) or {}).get("stop_requested"):
            extra["stop_requested"] = time.time()
    update_controller(sweep_dir, exit_code=code, finished_at=time.time(), **extra)
    return code
