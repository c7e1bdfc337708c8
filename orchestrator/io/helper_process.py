"""An object served by a helper process: method calls go over a socket, the work runs there.

The sweep's driver runs Ray Tune's event loop, which blocks in short `ray.wait` calls and must
re-acquire the GIL after each. A thread of the same process that runs pure-Python work for
milliseconds at a time (MLflow's SQLAlchemy store, the pruner's curve fits) holds the GIL
meanwhile, so the loop waits up to the interpreter's switch interval (5 ms) again and again:
a sweep of many short trials ran 3-4x slower. `HelperProcess` moves such an object into a
plain child interpreter: the calling thread only pickles the call and blocks on the socket
(GIL released), and the work runs in the child, on another core when there is one.

Calls are synchronous and in order, with the same arguments and results (both must pickle).
An exception raised in the child comes back as the same type when it can be rebuilt
(`MlflowException` with its error code; otherwise a `RuntimeError` naming the original type).
If the child dies, the call raises `HelperProcessError` and the next call starts a new child,
whose object is built afresh (callers whose object holds state must handle that: see
`orchestrator.adapters.tune.scheduler`). The child exits when told to, or when the parent goes away
(its end of the socket closes).
"""
from __future__ import annotations

import importlib
import os
import pickle
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Optional


class HelperProcessError(ConnectionError):
    """The helper process died, or could not be started (the call did not complete)."""


class HelperProcess:
    """Serve ``factory(*args)`` in a child interpreter; ``helper.call("method", ...)`` runs it there.

    ``factory`` is ``"module:attribute"``. ``getattr(helper, "name")(...)`` is ``call("name", ...)``.
    """

    def __init__(self, factory: str, *args: Any, name: str = "scalesweep-helper") -> None:
        self.factory, self.args, self.name = factory, args, name
        self._lock = threading.Lock()
        self._conn: Optional[Connection] = None
        self._proc: Optional[subprocess.Popen] = None
        try:  # started now: the child's imports overlap with the caller's own start-up
            self._start()
        except (OSError, ValueError):
            self._conn = self._proc = None  # retried by the first call

    def _start(self) -> None:
        # A plain interpreter on one end of a socket pair: multiprocessing's spawn would
        # re-import the caller's __main__, and fork is unsafe in a process running Ray's threads.
        # Once served, it freezes its heap: the interpreter's last garbage collection of MLflow's
        # imports took ~3 s at every close (orchestrator.app.quick_exit).
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # this package's copy, wherever it was imported from
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        spec = pickle.dumps((self.factory, self.args)).hex()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from orchestrator.io.helper_process import serve; "
                 "serve(int(sys.argv[1]), sys.argv[2]); import gc; gc.freeze()", str(theirs.fileno()), spec],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            theirs.close()
        self._conn, self._proc = Connection(ours.detach()), proc

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``obj.method(*args, **kwargs)`` in the child and return its result (or raise its error)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._stop()
                try:
                    self._start()
                except (OSError, ValueError) as exc:
                    raise HelperProcessError(f"cannot start the {self.name} process: {exc}") from exc
            try:
                self._conn.send((method, args, kwargs))
                ok, value = self._conn.recv()
            except (EOFError, OSError) as exc:  # the child died mid-call
                self._stop()
                raise HelperProcessError(f"the {self.name} process died during {method}: {exc!r}") from exc
        if ok:
            return value
        raise _rebuild(value)

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)

    @property
    def pid(self) -> Optional[int]:
        """The child's process id (None before it started or after it stopped)."""
        return self._proc.pid if self._proc is not None else None

    def _stop(self) -> None:
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is not None:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
            conn.close()
        if proc is not None:
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5.0)

    def close(self) -> None:
        """Stop the child (it also exits on its own when this process goes away)."""
        with self._lock:
            self._stop()

    def __getstate__(self):
        raise TypeError("a HelperProcess cannot be pickled (it owns a live child process)")


def _error_of(exc: BaseException) -> tuple:
    mod = type(exc).__module__
    if mod.startswith("mlflow") and hasattr(exc, "error_code") and hasattr(exc, "message"):
        return ("mlflow", str(exc.message), str(exc.error_code))
    return ("other", f"{type(exc).__name__}: {exc}", None)


def _rebuild(value: tuple) -> BaseException:
    kind, message, code = value
    if kind == "mlflow":
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import ErrorCode

        try:
            return MlflowException(message, error_code=ErrorCode.Value(code))
        except ValueError:
            return MlflowException(message)
    return RuntimeError(message)


def serve(fd: int, spec_hex: str) -> None:
    """The child's loop: build the object, then run calls from the socket ``fd`` until told to stop."""
    import signal

    # Ctrl-C reaches the whole foreground process group and `ray job stop` signals the driver's
    # children too: the parent decides how its sweep stops (and still needs this object to end
    # its MLflow runs); the child ends when the parent closes the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(fd)
    factory, args = pickle.loads(bytes.fromhex(spec_hex))
    module, _, attr = factory.partition(":")
    obj = getattr(importlib.import_module(module), attr)(*args)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if msg is None:
            return
        method, args, kwargs = msg
        try:
            reply = (True, getattr(obj, method)(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - sent back to the caller
            reply = (False, _error_of(exc))
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return
        except Exception as exc:  # noqa: BLE001 - a result that does not pickle
            conn.send((False, ("other", f"cannot return the result of {method}: {exc}", None)))
