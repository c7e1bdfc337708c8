"""`trainer.backend: command`: any program as a trial, on the trial contract over files.

Per trial attempt (a restart after a crash is a new attempt) the runner makes a folder
`<run_dir>/attempt-<k>/` holding

    config.json    the trial's config document: `TrialConfig.document()` (contract_version, N,
                   D, lr, batch, schedule, seed, checkpoint and branch fields, options) plus
                   `metrics_file`, `attempt` and `resume` (true when checkpoint_dir already
                   holds something from an earlier attempt or run)
    metrics.jsonl  the program appends one JSON object per report (keys: trainers.contract)
    stdout.log, stderr.log, pid, exit.json (exit status, signal, stderr tail, why it ended)

and launches the command (placeholders `{config}`, `{metrics}`, `{checkpoint_dir}`,
`{trial_id}`, `{python}` substituted; env SCALESWEEP_TRIAL_CONFIG, SCALESWEEP_METRICS_FILE,
SCALESWEEP_CHECKPOINT_DIR, SCALESWEEP_CONTRACT_VERSION set) in its own process session. It
tails the metrics file and forwards each complete line, normalised, to `report`. A report
that ends the run (done, or all planned tokens) is held back until the program has exited
with status 0, so the trial never ends while the program still writes its last checkpoint.

Several workers (`config.workers` > 1): one process per worker on this node, torchrun-style —
RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT (a free port) set —
each in its own session with its own `stdout-rank<k>.log` / `stderr-rank<k>.log` / `pid-rank<k>`
(rank 0: the plain names). Only rank 0 writes the metrics file. The first rank to fail ends
them all; the attempt succeeds when every rank exits 0.

Ending a program: when `report` raises (Ray Tune stops the trial: the pruner) or `should_stop()`
turns true, the program's process group gets SIGTERM, then SIGKILL after `grace_s`. A program
that exits non-zero, writes a malformed report, writes no first report within
`first_report_timeout_s`, or exits 0 before its final report raises `TrainerProcessError`
(ContractError for the contract's violations), whose message carries the exit status and the
stderr tail; Tune's FailureConfig restarts the trial as a new attempt. The child also gets
SIGKILL if the process running this runner dies (Linux PR_SET_PDEATHSIG), so a killed trial
leaves no orphan.

With `settings.warm_start` (the spec's `trainer.warm_start`) a Python program (`python -m MODULE` /
`python SCRIPT.py`) is forked from this process's zygote, which imported those modules once
(trainers.warm_start), instead of started fresh; it is signalled, waited for and recorded the
same way, and exit.json's `warm_start` says whether it was (and if not, why).

With `config.checkpoint_mirror` (a sweep whose store is on S3) an attempt first copies the mirror
into `checkpoint_dir`, and when its program has exited the mirror is made a copy of the folder
(trainers.checkpoint_mirror), before the final report is sent. With a `run_mirror` the attempt's
own folder (config, metrics, logs, exit.json) is copied there too, once its program has ended.

Long because one trial attempt's life is one function (`run_command`: start, read reports, stop, restart) with
the process-group helpers only it uses.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from trainers.contract import CONTRACT_VERSION, ContractError, TrialConfig, normalise_report

PLACEHOLDERS = ("config", "metrics", "checkpoint_dir", "trial_id", "python")
STDERR_TAIL = 4000  # characters of stderr kept in errors and exit.json


class TrainerProcessError(RuntimeError):
    """The program failed (non-zero exit, killed, broke the contract); the message says how."""


class FirstReportTimeout(ContractError):
    """The program wrote no report within the first-report timeout."""


@dataclass(frozen=True)
class CommandSettings:
    """How to run the command (from the spec's `trainer` section)."""

    command: tuple[str, ...]
    cwd: str
    env: tuple[tuple[str, str], ...] = ()
    grace_s: float = 10.0
    first_report_timeout_s: float = 600.0
    poll_s: float = 0.05
    warm_start: tuple[str, ...] = ()  # modules to preload in a zygote that forks the program (trainers.warm_start)


def split_command(command: str | Sequence[str]) -> list[str]:
    """The argv of a command given as a string (shell-like split) or a list."""
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def substitute(argv: Sequence[str], values: dict[str, str]) -> list[str]:
    """Replace `{name}` placeholders (PLACEHOLDERS) in every argument.

    >>> substitute(["{python}", "train.py", "--config={config}"], {"python": "py", "config": "c.json"})
    ['py', 'train.py', '--config=c.json']
    """
    out = []
    for a in argv:
        for k, v in values.items():
            a = a.replace("{" + k + "}", v)
        out.append(a)
    return out


def missing_program(argv: Sequence[str], cwd: str) -> Optional[str]:
    """Why the command cannot start (the program, or a Python script it names, does not exist), or None.

    >>> missing_program(["no-such-program-xyz"], ".")
    "program 'no-such-program-xyz' not found on PATH"
    """
    if not argv:
        return "empty command"
    argv = substitute(argv, {"python": sys.executable})
    prog = argv[0]
    if "{" in prog:
        return f"the program {prog!r} is a placeholder other than {{python}}"
    if os.sep in prog or prog.startswith("."):
        path = Path(prog) if Path(prog).is_absolute() else Path(cwd) / prog
        if not path.is_file():
            return f"program {prog!r} does not exist (relative to {cwd})"
        if not os.access(path, os.X_OK):
            return f"program {prog!r} is not executable"
    elif shutil.which(prog) is None:
        return f"program {prog!r} not found on PATH"
    name = Path(prog).name
    if name.startswith("python") and len(argv) > 1 and argv[1].endswith(".py") and "{" not in argv[1]:
        script = Path(argv[1]) if Path(argv[1]).is_absolute() else Path(cwd) / argv[1]
        if not script.is_file():
            return f"script {argv[1]!r} does not exist (relative to {cwd})"
    return None


def _pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the process group kill still applies
        pass


def _has_state(checkpoint_dir: Optional[str]) -> bool:
    if not checkpoint_dir or not Path(checkpoint_dir).is_dir():
        return False
    return any(not p.name.startswith(".") for p in Path(checkpoint_dir).iterdir())


def next_attempt_dir(run_dir: Path, start: int = 0) -> tuple[int, Path]:
    """(k, run_dir/attempt-k) for the first attempt number from `start` not used yet."""
    run_dir.mkdir(parents=True, exist_ok=True)
    k = start
    while (run_dir / f"attempt-{k}").exists():
        k += 1
    d = run_dir / f"attempt-{k}"
    d.mkdir()
    return k, d


def _tail(path: Path, chars: int = STDERR_TAIL) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _describe(rc: Optional[int]) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


class _LineReader:
    """Complete lines appended to a file since the last call (a partial last line waits)."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        return [c.decode(errors="replace") for c in complete if c.strip()]


def _attempts_in(run_mirror: Optional[str]) -> int:
    """1 + the highest attempt number in the run folder's mirror (attempts made on other nodes), or 0."""
    if not run_mirror:
        return 0
    from trainers.checkpoint_mirror import listing

    numbers = [int(n[8:]) for n in listing(run_mirror) if n.startswith("attempt-") and n[8:].isdigit()]
    return max(numbers, default=-1) + 1


def _mirror_attempt(adir: Path, run_mirror: Optional[str]) -> None:
    """Copy the attempt's folder (config, metrics, logs, exit.json) to the run folder's mirror; a
    failed upload is said on stderr, never the trial's failure (the report went to the store)."""
    if not run_mirror:
        return
    from trainers.checkpoint_mirror import push

    try:
        push(str(adir.parent), run_mirror, [adir.name])
    except Exception as exc:  # noqa: BLE001
        print(f"scalesweep: could not copy {adir} to {run_mirror}: {exc}", file=sys.stderr)


def run_command(config: TrialConfig, report: Callable[[dict[str, Any]], None], settings: CommandSettings,
                run_dir: str | Path, n_params: float, should_stop: Callable[[], bool] = lambda: False,
                run_mirror: Optional[str] = None) -> dict[str, Any]:
    """Run one attempt of the trial as the command; returns what went into exit.json.

    `run_mirror` (an object-store URI; a sweep whose store is on S3): each attempt's folder is copied
    there when its program has ended, and attempts are numbered after those already there (a
    restart on another node is attempt k+1, not a second attempt-0)."""
    attempt, adir = next_attempt_dir(Path(run_dir), _attempts_in(run_mirror))
    if config.checkpoint_dir and config.checkpoint_mirror:  # the authority: the trial may have run on elsewhere
        from trainers.checkpoint_mirror import pull_trial

        pull_trial(config.checkpoint_dir, config.checkpoint_mirror, config.branch_from)
    metrics = adir / "metrics.jsonl"
    metrics.touch()
    doc = {**config.document(), "metrics_file": str(metrics), "attempt": attempt,
           "resume": _has_state(config.checkpoint_dir) or bool(config.branch_from and attempt)}
    if config.checkpoint_dir:
        Path(config.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    cfg_path = adir / "config.json"
    cfg_path.write_text(json.dumps(doc, indent=1))
    values = {"config": str(cfg_path), "metrics": str(metrics), "checkpoint_dir": config.checkpoint_dir or "",
              "trial_id": config.trial_id, "python": sys.executable}
    argv = substitute(settings.command, values)
    env = {**os.environ, **dict(settings.env), "SCALESWEEP_TRIAL_CONFIG": str(cfg_path),
           "SCALESWEEP_METRICS_FILE": str(metrics), "SCALESWEEP_CHECKPOINT_DIR": config.checkpoint_dir or "",
           "SCALESWEEP_CONTRACT_VERSION": str(CONTRACT_VERSION), "PYTHONUNBUFFERED": "1"}
    why = missing_program(settings.command, settings.cwd)
    if why:
        raise TrainerProcessError(f"trainer.command: {why}")
    world = max(1, int(config.workers))
    if world > 1:  # torchrun-style: one process per worker on this node, rank 0 reports
        env.update(WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(_free_port()))
    t0 = time.monotonic()
    zygote, warm = _zygote(settings, argv, env, should_stop)
    procs: list = []  # subprocess.Popen, or warm_start.WarmProcess
    try:
        for rank in range(world):
            suffix = "" if rank == 0 else f"-rank{rank}"
            out, err = adir / f"stdout{suffix}.log", adir / f"stderr{suffix}.log"
            stdout, stderr = open(out, "wb"), open(err, "wb")
            try:
                rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)} if world > 1 else env
                p = None
                if zygote is not None:
                    try:
                        p = zygote.spawn(argv, settings.cwd, rank_env, str(out), str(err))
                    except (RuntimeError, ValueError) as exc:  # the zygote is gone: a fresh process
                        warm.update(used=False, why=str(exc))
                procs.append(p or subprocess.Popen(argv, cwd=settings.cwd, env=rank_env, stdout=stdout, stderr=stderr,
                                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                                   preexec_fn=_pdeathsig))
            finally:
                stdout.close()
                stderr.close()
            (adir / f"pid{suffix}").write_text(f"{procs[-1].pid}\n")
    except BaseException:
        _terminate(procs, 0.0)
        raise
    proc = _Group(procs)
    info: dict[str, Any] = {"attempt": attempt, "argv": argv, "pid": procs[0].pid, "workers": world,
                            "attempt_dir": str(adir), **({"warm_start": warm} if warm else {})}
    reader = _LineReader(metrics)
    held: Optional[dict[str, Any]] = None  # the run's final report, sent once the program exited 0
    reports, last_step = 0, None
    ended = "exited"
    error: Optional[BaseException] = None

    def forward(lines: list[str]) -> None:
        nonlocal held, reports, last_step
        for line in lines:
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ContractError(f"metrics line {reports + 1} is not JSON ({exc.msg}): {line[:200]!r}") from None
            r = normalise_report(raw, config.tokens, n_params)
            reports += 1
            last_step = int(r["step"])
            if held is not None:  # a report after a final one: the final one was not final
                report(held)
                held = None
            if r["done"] >= 1.0:
                held = r
            else:
                report(r)

    try:
        while True:
            rc = proc.poll()
            forward(reader.lines())
            if rc is not None:
                forward(reader.lines())
                break
            if should_stop():
                ended = "stopped"
                break
            if reports == 0 and time.monotonic() - t0 > settings.first_report_timeout_s:
                raise FirstReportTimeout(
                    f"trainer.first_report_timeout_s: the command wrote no report to its metrics file within "
                    f"{settings.first_report_timeout_s:g} s (trial {config.trial_id})")
            time.sleep(settings.poll_s)
    except BaseException as exc:  # Tune's stop (SystemExit in report), a contract error, an interrupt
        error = exc
        ended = "stopped" if isinstance(exc, (SystemExit, KeyboardInterrupt)) else "error"
    finally:
        failed = proc.poll()  # a rank that failed by itself, before the others are ended
        rc = _terminate(procs, settings.grace_s)
        if failed not in (None, 0):
            rc = failed
        if world > 1:
            info["returncodes"] = [p.returncode for p in procs]
        info.update(returncode=rc, status=_describe(rc), ended=ended, reports=reports, last_step=last_step,
                    wall_s=time.monotonic() - t0, stderr_tail=_tail(adir / "stderr.log"))
        if error is not None and not isinstance(error, (SystemExit, KeyboardInterrupt)):
            info["error"] = f"{type(error).__name__}: {error}"
            info["contract_error"] = isinstance(error, ContractError)
        (adir / "exit.json").write_text(json.dumps(info, indent=1))
    if config.checkpoint_dir and config.checkpoint_mirror:
        # What the program left in its checkpoint folder, before its final report can end the trial.
        # (A process killed with its node never gets here: a restart elsewhere starts from the mirror's
        # copy of the previous attempt's folder.)
        try:
            from trainers.checkpoint_mirror import replace_with

            replace_with(config.checkpoint_dir, config.checkpoint_mirror)
        except Exception:  # noqa: BLE001
            if error is None:
                raise
    _mirror_attempt(adir, run_mirror)
    if error is not None:
        if isinstance(error, (SystemExit, KeyboardInterrupt)):
            raise error
        raise TrainerProcessError(_message(config, info, str(error))) from None
    if ended == "stopped":
        return info
    if rc != 0:
        raise TrainerProcessError(_message(config, info, f"the command ended with {_describe(rc)}"))
    if held is None:
        info["error"] = "exited with status 0 before its final report"
        info["contract_error"] = True
        (adir / "exit.json").write_text(json.dumps(info, indent=1))
        _mirror_attempt(adir, run_mirror)
        raise TrainerProcessError(_message(config, info, f"the command exited with status 0 after step {last_step} "
                                                         f"without its final report (done, or {config.tokens} tokens)"))
    report(held)
    return info


def _zygote(settings: CommandSettings, argv: list[str], env: dict[str, str], should_stop: Callable[[], bool]):
    """(the zygote to fork the program from, or None for a fresh process; what exit.json says about it)."""
    if not settings.warm_start:
        return None, None
    from trainers import warm_start

    z = warm_start.zygote(argv[0], settings.warm_start, settings.cwd, env)
    ok = z.wait_ready(settings.first_report_timeout_s, should_stop)
    if ok is None:  # stopped while its imports run: a fresh process, stopped at once by the loop below
        return None, {"used": False, "why": "the trial was stopped while the warm-start process was starting"}
    if not ok:
        return None, {"used": False, "why": z.refused}
    return z, {"used": True, "zygote_pid": z.ready.get("pid"), "threads": len(z.ready.get("threads") or ())}


def _message(config: TrialConfig, info: dict[str, Any], what: str) -> str:
    tail = info.get("stderr_tail", "").strip()
    tail = "\n".join(tail.splitlines()[-15:])
    return (f"trial {config.trial_id}, attempt {info['attempt']}: {what} ({info['status']}, "
            f"{info['reports']} report(s), last step {info['last_step']}); files in {info['attempt_dir']}"
            + (f"\nstderr tail:\n{tail}" if tail else ""))


class _Group:
    """The worker processes of one attempt, polled as one: the first failure, or 0 once all exited 0."""

    def __init__(self, procs: list):
        self.procs = procs

    def poll(self) -> Optional[int]:
        codes = [p.poll() for p in self.procs]
        bad = [c for c in codes if c not in (None, 0)]
        if bad:
            return bad[0]
        return None if None in codes else 0


def _terminate(procs: list, grace_s: float) -> Optional[int]:
    """SIGTERM to each program's process group, SIGKILL after `grace_s`; the worst return code
    (the first non-zero one, else 0)."""
    for p in procs:
        if p.poll() is None:
            _kill_group(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + max(0.0, grace_s)
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        _kill_group(p.pid, signal.SIGKILL)  # a program past its grace, and leftovers of every group
        p.wait()
    codes = [p.returncode for p in procs]
    return next((c for c in codes if c != 0), 0) if codes else None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
