"""Warm start for Python command programs (`trainer.warm_start`): fork each trial from a pre-imported process.

A `command` trial is a fresh interpreter per trial, so a program that trains with torch and
DeepSpeed pays their imports (~3-5 s) every trial, where the built-in trainer's reused Ray actor
pays them once. With `trainer.warm_start: [MODULE, "MODULE:FUNCTION", ...]` the trial process
starts one **zygote** (a small fork server, this file run by the command's own interpreter in
`trainer.cwd`) that imports those modules (and calls each FUNCTION once: a warm-up that imports
more), then forks each attempt's program from it. The zygote lives as long as the trial process,
and Ray Tune reuses that process for the next trial of its slot (`reuse_actors`), so like the
built-in trainer a slot pays the imports once.

A forked program behaves as `python -m MODULE ARGS` / `python SCRIPT.py ARGS` started fresh would:
its own session (process group = pid, so the runner's SIGTERM-then-SIGKILL reaches it), the
trial's cwd, environment (`os.environ` replaced), stdin /dev/null, stdout/stderr to the attempt's
log files, `sys.argv` and `sys.path[0]` as the interpreter sets them, Python's default signal
handlers, NumPy's global RNG reseeded (Python's `random` reseeds itself at fork), SIGKILL when the
zygote dies (PR_SET_PDEATHSIG; the zygote exits when the trial process does). At its end, as the
interpreter: non-daemon threads joined, atexit handlers run, exit status 0 / the SystemExit code /
1 with the traceback on stderr for an exception / death by SIGINT for an uncaught
KeyboardInterrupt. The zygote reports each child's exit status (negative: killed by that signal)
to the runner, which sees a `WarmProcess` with Popen's `pid`, `poll()`, `wait()`, `returncode`.

What differs from a fresh process, by design: the preloaded modules were imported once, under
the environment of the trial that started the zygote (minus the per-trial SCALESWEEP_* variables
and ranks), so a module that reads an environment variable at import keeps that value; the
string hash seed is the zygote's; `python` flags other than `-m` are not supported (refused by
validation). Forking is only safe before CUDA or an OpenMP pool is initialised: after its
preload the zygote refuses to serve (and each attempt falls back to a fresh process, its reason
in `exit.json` as `warm_start`) when the CUDA driver is loaded (`libcuda` mapped) or torch's CUDA
state is initialised. It is started with PYTORCH_NVML_BASED_CUDA_CHECK=1 so that
`torch.cuda.is_available()` (DeepSpeed's accelerator probe) asks NVML instead of initialising
CUDA. Threads of fork-safe libraries (OpenBLAS, jemalloc) are allowed; the zygote lists the
threads it has in its ready message. Not tested on a GPU node.

>>> python_program(["/usr/bin/python3", "-m", "pkg.train", "--config", "c.json"])
('module', 'pkg.train', ['--config', 'c.json'])
>>> python_program(["bash", "run.sh"])
"the program is not a Python interpreter ('bash')"

Long because both sides of the fork server live here: the trial process's `Zygote` and `zygote_main`, which
the command's own interpreter runs as this file (it imports only the standard library).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

# the trial's own variables: never part of the zygote's (shared) environment
PER_TRIAL_ENV = ("SCALESWEEP_TRIAL_CONFIG", "SCALESWEEP_METRICS_FILE", "SCALESWEEP_CHECKPOINT_DIR", "RANK",
                 "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_BOOT = ("import importlib.util as u, sys; s = u.spec_from_file_location('scalesweep_zygote', sys.argv[1]); "
         "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m); m.zygote_main(sys.argv[2:])")


def python_program(argv: Sequence[str]) -> Union[tuple[str, str, list[str]], str]:
    """('module', NAME, args) for `python -m NAME args`, ('script', PATH, args) for `python PATH args`,
    else why the command cannot be warm-started (a string)."""
    if not argv:
        return "empty command"
    if not Path(argv[0]).name.startswith("python"):
        return f"the program is not a Python interpreter ({Path(argv[0]).name!r})"
    if len(argv) >= 3 and argv[1] == "-m":
        return "module", argv[2], list(argv[3:])
    if len(argv) >= 2 and not argv[1].startswith("-"):
        return "script", argv[1], list(argv[2:])
    return "only `python -m MODULE ...` or `python SCRIPT.py ...` can be warm-started (no other interpreter flags)"


def bad_preload(entry: str) -> Optional[str]:
    """Why a `trainer.warm_start` entry is not `package.module` or `package.module:function`, or None.

    >>> bad_preload("trainers.deepspeed_trainer:preload") is None, bad_preload("torch; rm")
    (True, "'torch; rm' is not 'package.module' or 'package.module:function'")
    """
    module, _, fn = entry.partition(":")
    if not all(p.isidentifier() for p in module.split(".")) or (fn and not fn.isidentifier()):
        return f"{entry!r} is not 'package.module' or 'package.module:function'"
    return None


def warm_start_problem(preload: Sequence[str], argv: Sequence[str], cwd: str) -> Optional[str]:
    """Why `trainer.warm_start: preload` cannot serve the command `argv` run in `cwd`, or None.

    Checks the form of the command and of each entry, and (for `{python}`, scalesweep's own interpreter)
    that each entry's top-level package is importable, without importing it.

    >>> warm_start_problem(["json"], ["{python}", "-m", "http.server"], ".") is None
    True
    >>> warm_start_problem(["no_such_pkg_xyz"], ["{python}", "train.py"], ".")
    "'no_such_pkg_xyz' is not importable (top-level package 'no_such_pkg_xyz' not found)"
    """
    import importlib.machinery

    kind = python_program([sys.executable if a == "{python}" else a for a in argv])
    if isinstance(kind, str):
        return kind
    for entry in preload:
        why = bad_preload(entry)
        if why:
            return why
        top = entry.partition(":")[0].split(".")[0]
        if argv[0] == "{python}" and top not in sys.builtin_module_names and \
                importlib.machinery.PathFinder.find_spec(top, [cwd, *sys.path]) is None:
            return f"{entry!r} is not importable (top-level package {top!r} not found)"
    return None


# ---------------------------------------------------------------- the runner's side
class WarmProcess:
    """A program forked by the zygote, with the part of subprocess.Popen's interface the runner uses."""

    def __init__(self, zygote: "Zygote", pid: int):
        self.zygote, self.pid, self.returncode = zygote, pid, None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            self.returncode = self.zygote.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"warm pid {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode


class Zygote:
    """The runner's handle on one zygote process: start it, fork programs from it, collect exit codes."""

    def __init__(self, python: str, preload: Sequence[str], cwd: str, env: dict[str, str]):
        env = {k: v for k, v in env.items() if k not in PER_TRIAL_ENV}
        env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # a CUDA probe that does not initialise CUDA
        self.proc = subprocess.Popen([python, "-c", _BOOT, str(Path(__file__).resolve()), *preload], cwd=cwd,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        self._buf, self._exits, self._lock = b"", {}, threading.Lock()
        self.dead = False
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.ready: Optional[dict[str, Any]] = None  # its ready message, once read
        self.refused: Optional[str] = None  # why it cannot serve, once known

    def wait_ready(self, timeout_s: float, should_stop: Callable[[], bool] = lambda: False) -> Optional[bool]:
        """True once it serves, False if it cannot (`refused` says why), None when `should_stop()` turned
        true first (it goes on starting, for the next trial)."""
        deadline = time.monotonic() + timeout_s
        while self.ready is None and self.refused is None:
            msg = self._message(min(0.1, max(0.0, deadline - time.monotonic())))
            if msg is not None:
                self.ready = msg
                self.refused = None if msg.get("ok") else str(msg.get("error"))
            elif self.dead:
                self.refused = f"it exited before it was ready ({self.proc.wait()})"
            elif time.monotonic() >= deadline:
                self.refused = f"no ready message within {timeout_s:g} s"
            elif should_stop():
                return None
        if self.refused is not None:
            self.close()
        return self.refused is None

    def _read(self, timeout: float) -> bool:
        """Move whatever the zygote wrote into the buffer (waiting up to `timeout` for something)."""
        fd = self.proc.stdout.fileno()
        if self.dead or not select.select([fd], [], [], max(0.0, timeout))[0]:
            return False
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        if not chunk:
            self.dead = True  # EOF: its children were SIGKILLed with it (PR_SET_PDEATHSIG)
        self._buf += chunk
        return True

    def _message(self, timeout: float) -> Optional[dict[str, Any]]:
        """The next message that is not an exit notice (those are recorded), or None on timeout/EOF."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                msg = json.loads(line)
                if "exit" in msg:
                    self._exits[msg["exit"]] = msg["code"]
                else:
                    return msg
            if self.dead:
                return None
            left = deadline - time.monotonic()
            if not self._read(left) and left <= 0:
                return None

    def spawn(self, argv: Sequence[str], cwd: str, env: dict[str, str], stdout: str, stderr: str) -> WarmProcess:
        """Fork the program `argv` (a `python -m` / `python SCRIPT` command) from the zygote."""
        kind = python_program(argv)
        if isinstance(kind, str):
            raise ValueError(kind)
        mode, target, args = kind
        req = {"mode": mode, "target": target, "args": args, "cwd": cwd, "env": env, "stdout": stdout,
               "stderr": stderr}
        with self._lock:
            try:
                self.proc.stdin.write(json.dumps(req).encode() + b"\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self.dead = True
            msg = None if self.dead else self._message(60.0)
        if not msg or "pid" not in msg:
            raise RuntimeError(f"the warm-start process did not start the program: {msg or 'it is gone'}")
        return WarmProcess(self, int(msg["pid"]))

    def exit_code(self, pid: int) -> Optional[int]:
        """The program's exit code once the zygote reaped it (negative: killed by that signal), else None."""
        with self._lock:
            self._message(0.0)
            if pid in self._exits:
                return self._exits.pop(pid)
            if self.dead:
                return -signal.SIGKILL  # died with the zygote
            return None

    def alive(self) -> bool:
        return not self.dead and self.proc.poll() is None

    def close(self) -> None:
        """End the zygote (its running children get SIGKILL through PR_SET_PDEATHSIG)."""
        self.dead = True
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_ZYGOTES: dict[tuple, Zygote] = {}


def zygote(python: str, preload: Sequence[str], cwd: str, env: dict[str, str]) -> Zygote:
    """This process's zygote for (python, preload, cwd), started on first use and kept for later trials
    (`Zygote.wait_ready` before use). One that refused (`Zygote.refused`) is kept too: the next trials
    fall back to fresh processes at once; one that died is started again.
    """
    key = (python, tuple(preload), cwd)
    z = _ZYGOTES.get(key)
    if z is None or (z.refused is None and not z.alive()):
        z = _ZYGOTES[key] = Zygote(python, preload, cwd, env)
    return z


# ---------------------------------------------------------------- the zygote's side (stdlib only)
def _fork_hazard() -> Optional[str]:
    """Why forking this process now would be unsafe for the children, or None."""
    try:
        with open("/proc/self/maps") as f:
            if any("libcuda.so" in line for line in f):
                return "the CUDA driver is loaded in the warm-start process (forked children could not use CUDA)"
    except OSError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch, "cuda", None) is not None and torch.cuda.is_initialized():
        return "torch initialised CUDA in the warm-start process"
    return None


def _threads() -> list[str]:
    try:
        return [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")]
    except OSError:
        return []


def _send(fd: int, msg: dict[str, Any]) -> None:
    os.write(fd, json.dumps(msg).encode() + b"\n")


_STARTUP_HANDLERS: dict = {}  # set by zygote_main


def zygote_main(preload: list[str]) -> None:
    """The zygote: import `preload`, say ready, then fork a program per request until stdin closes."""
    import importlib
    import traceback

    global _STARTUP_HANDLERS
    # The interpreter's own start-up dispositions, before any preload can change them: a fresh
    # program run from this trial process would get exactly these (a signal its launcher ignores,
    # e.g. SIGINT under a shell's `&`, stays ignored through exec, and Python then leaves it so).
    _STARTUP_HANDLERS = {sig: signal.getsignal(sig) for sig in signal.valid_signals()
                         if sig not in (signal.SIGKILL, signal.SIGSTOP)}
    proto_in, proto_out = os.dup(0), os.dup(1)
    os.dup2(2, 1)  # what the preloaded modules print goes to stderr, not into the protocol
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.path[0] = os.getcwd()  # as `python -m` in the trial's cwd
    t0 = time.monotonic()
    try:
        for entry in preload:
            module, _, fn = entry.partition(":")
            mod = importlib.import_module(module)
            if fn:
                getattr(mod, fn)()
    except BaseException as exc:  # noqa: BLE001 - reported, and the runner falls back to fresh processes
        _send(proto_out, {"ok": False, "error": f"preload {entry!r} failed: {type(exc).__name__}: {exc}"})
        return
    hazard = _fork_hazard()
    _send(proto_out, {"ok": hazard is None, "error": hazard, "pid": os.getpid(), "threads": _threads(),
                      "preload_s": time.monotonic() - t0})
    if hazard:
        return
    children: set[int] = set()
    buf = b""
    while True:
        ready = select.select([proto_in], [], [], 0.02 if children else None)[0]
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            _send(proto_out, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})
        if not ready:
            continue
        chunk = os.read(proto_in, 1 << 16)
        if not chunk:
            return  # the trial process is gone: exiting SIGKILLs the children (PR_SET_PDEATHSIG)
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                pid = _fork(json.loads(line), (proto_in, proto_out))
                children.add(pid)
                _send(proto_out, {"pid": pid})
            except Exception as exc:  # noqa: BLE001
                _send(proto_out, {"error": "".join(traceback.format_exception_only(type(exc), exc)).strip()})


def _fork(req: dict[str, Any], proto: tuple[int, int]) -> int:
    """Fork one program; returns once it leads its own session (so the runner can signal its group)."""
    import warnings

    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    with warnings.catch_warnings():  # Python >= 3.12 warns on fork with threads (OpenBLAS, jemalloc: fork-safe)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 127
        try:
            os.close(r)
            for fd in proto:
                os.close(fd)
            code = _become(req, w)
        except BaseException:  # noqa: BLE001 - set-up failed: say so on whatever stderr is
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    os.read(r, 1)  # b"" when the child died before it got there: its exit status says why
    os.close(r)
    return pid


def _become(req: dict[str, Any], sync: int) -> int:
    """In the forked child: become the fresh program `req` describes, run it, return its exit code."""
    import runpy

    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux
        pass
    os.write(sync, b"1")
    os.close(sync)
    os.chdir(req["cwd"])
    for fd, path, flags in ((1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND),
                            (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)):
        new = os.open(path, flags, 0o666)
        os.dup2(new, fd)
        os.close(new)
    os.environ.clear()
    os.environ.update(req["env"])
    for sig, want in _STARTUP_HANDLERS.items():  # what a fresh interpreter started here would have
        try:
            if signal.getsignal(sig) not in (want, None):
                signal.signal(sig, want)
        except (OSError, ValueError):
            pass
    if "numpy.random" in sys.modules:  # a fresh process seeds NumPy's global RNG from the OS
        sys.modules["numpy.random"].seed()
    mode, target, args = req["mode"], req["target"], req["args"]
    code = 0
    try:
        if mode == "module":
            sys.argv = [target, *args]  # runpy puts the module's file in argv[0], as `python -m` does
            sys.path[0] = os.getcwd()
            runpy._run_module_as_main(target, alter_argv=True)
        else:
            sys.argv = [target, *args]
            sys.path[0] = str(Path(target).resolve().parent)
            _run_script(target)
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt as exc:
        _print_exception(exc)
        _finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # as the interpreter ends on an uncaught KeyboardInterrupt
    except BaseException as exc:  # noqa: BLE001
        _print_exception(exc)
        code = 1
    _finish()
    return code


def _print_exception(exc: BaseException) -> None:
    """The traceback as the interpreter prints it: from the program's first frame (not runpy's or ours)."""
    import runpy

    ours = (__file__, runpy.__file__)
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and (
            tb.tb_frame.f_code.co_filename in ours or tb.tb_frame.f_code.co_filename.startswith("<frozen runpy")):
        tb = tb.tb_next
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)


def _run_script(target: str) -> None:
    """Run a script file as `python SCRIPT` does: in a module `__main__` whose `__file__` (and the code's
    file name) is absolute while sys.argv[0] stays as given; a directory or zip archive through runpy."""
    import builtins
    import importlib.machinery
    import runpy
    import types

    path = os.path.abspath(target)
    if not path.endswith(".py") or not os.path.isfile(path):
        runpy.run_path(target, run_name="__main__")
        return
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=path, __cached__=None, __builtins__=builtins,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", path))
    sys.modules["__main__"] = main
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    exec(code, main.__dict__)


def _exit_code(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finish() -> None:
    """What the interpreter does at exit: join non-daemon threads, run atexit handlers, flush stdio."""
    import atexit

    try:
        threading._shutdown()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        pass
    atexit._run_exitfuncs()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:  # noqa: BLE001
            pass
