"""`trainer.warm_start`: a command's Python program forked from a pre-imported zygote behaves as a fresh
process would (argv, cwd, env, sys.path, session, signal handlers, exit status, stderr), reports, is
stopped with SIGTERM then SIGKILL, and falls back to a fresh process when the zygote cannot serve.
Real processes throughout (no Ray: the sweep wiring is in tests/integration/test_own_trainer.py)."""
from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.config.spec import SpecError, parse_spec
from trainers import warm_start
from trainers.command import CommandSettings, TrainerProcessError, run_command
from trainers.contract import Schedule, TrialConfig

REPO = Path(__file__).resolve().parents[3]
CFG = TrialConfig(trial_id="t1", n_params=1000, tokens=4 * 256, lr=1e-3, batch_tokens=256, seq_len=64)
PROGRAM = """\
import json, os, signal, sys, time
cfg = json.load(open(sys.argv[1]))
out = open(cfg['metrics_file'], 'a')
def emit(**r):
    out.write(json.dumps(r) + '\\n'); out.flush()
"""
# what a program can see of how it was started: must be the same warm and cold
PROBE = """
import atexit, threading
seen = {"argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(), "name": __name__, "file": __file__,
        "env": os.environ.get("MINE"), "trial_config": os.environ.get("SCALESWEEP_TRIAL_CONFIG") == sys.argv[1],
        "session_leader": os.getsid(0) == os.getpid(), "stdin": sys.stdin.read(),
        "handlers": {s: repr(signal.getsignal(getattr(signal, s))) for s in ("SIGTERM", "SIGINT", "SIGPIPE", "SIGCHLD")}}
open('seen-' + os.environ['ARM'] + '.json', 'w').write(json.dumps(seen))
atexit.register(lambda: print('atexit ran', file=sys.stderr))
threading.Thread(target=lambda: (time.sleep(0.2), print('thread joined', file=sys.stderr))).start()
for s in range(1, 5):
    emit(step=s, tokens=256 * s, lr=1e-3, train_loss=5.0 - s, eval_loss=None)
"""


def _settings(tmp_path: Path, body: str, warm=("json",), **kw) -> CommandSettings:
    (tmp_path / "prog.py").write_text(PROGRAM + textwrap.dedent(body))
    return CommandSettings(command=(sys.executable, "prog.py", "{config}"), cwd=str(tmp_path),
                           warm_start=tuple(warm), **kw)


def _run(tmp_path, body, report=None, cfg=CFG, **kw):
    got = []
    info = run_command(cfg, report or got.append, _settings(tmp_path, body, **kw), tmp_path / "run", n_params=1000)
    return got, info


def _exit(tmp_path: Path, attempt: int = 0) -> dict:
    return json.loads((tmp_path / "run" / f"attempt-{attempt}" / "exit.json").read_text())


def _dead(pid: int, wait_s: float = 10.0) -> bool:
    """Gone, or a zombie (a zygote's orphan waits for init to reap it)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_a_warm_program_sees_what_a_fresh_one_sees_and_reports(tmp_path, monkeypatch):
    got = {}
    for arm, warm in (("cold", ()), ("warm", ("json", "numpy"))):
        monkeypatch.setenv("ARM", arm)
        got[arm], info = _run(tmp_path, PROBE, warm=warm, env=(("MINE", "yes"),))
        assert [r["step"] for r in got[arm]] == [1, 2, 3, 4] and got[arm][-1]["done"] == 1.0
        assert info["returncode"] == 0 and ("warm_start" in info) == bool(warm)
    cold, warm = (json.loads((tmp_path / f"seen-{a}.json").read_text()) for a in ("cold", "warm"))
    assert cold["argv"][1].endswith("attempt-0/config.json") and warm["argv"][1].endswith("attempt-1/config.json")
    cold["argv"][1] = warm["argv"][1] = "config"
    assert warm == cold and cold["env"] == "yes" and cold["session_leader"] and cold["stdin"] == ""
    assert _exit(tmp_path, 1)["warm_start"]["used"] is True
    for k in (0, 1):  # non-daemon threads joined and atexit handlers run, as at a fresh interpreter's exit
        err = (tmp_path / "run" / f"attempt-{k}" / "stderr.log").read_text()
        assert "thread joined" in err and "atexit ran" in err
    assert warm_start.python_program([sys.executable, "prog.py"])[0] == "script"


def test_the_zygote_is_kept_for_the_next_trials_of_this_process(tmp_path):
    for _ in range(2):
        _run(tmp_path, "emit(step=4, tokens=1024, lr=1e-3, train_loss=1.0, eval_loss=1.0)", warm=("json", "csv"))
    first, second = _exit(tmp_path, 0)["warm_start"], _exit(tmp_path, 1)["warm_start"]
    assert first["used"] and first["zygote_pid"] == second["zygote_pid"]
    assert first["zygote_pid"] != _exit(tmp_path, 0)["pid"]  # the program is a fork, not the zygote itself


@pytest.mark.parametrize("body,status,stderr", [
    ("sys.exit(3)", "exit status 3", None),
    ("raise ValueError('boom')", "exit status 1", "ValueError: boom"),
    ("sys.exit('bad config')", "exit status 1", "bad config"),
    ("os.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL", None),
])
def test_a_warm_failure_carries_the_same_status_and_stderr_as_a_fresh_one(tmp_path, body, status, stderr):
    messages = {}
    for warm in ((), ("json",)):
        d = tmp_path / ("warm" if warm else "cold")
        d.mkdir()
        with pytest.raises(TrainerProcessError) as exc:
            _run(d, "emit(step=1, tokens=256, lr=1e-3, train_loss=5.0, eval_loss=5.0)\n" + body, warm=warm)
        info = _exit(d)
        assert info["status"] == status and ("warm_start" in info) == bool(warm)
        messages[bool(warm)] = [m.replace(str(d), "DIR") for m in (str(exc.value), info["stderr_tail"])]
    assert messages[True] == messages[False]  # a traceback too: it starts at the program, not at the zygote
    if stderr:
        assert stderr in messages[True][1]


@pytest.mark.parametrize("ignores_term", [False, True])
def test_a_stopped_warm_program_gets_sigterm_then_sigkill(tmp_path, ignores_term):
    body = """
        signal.signal(signal.SIGTERM, %s)
        for s in range(1, 1000):
            emit(step=s, tokens=1, lr=1e-3, train_loss=5.0, eval_loss=5.0)
            time.sleep(0.05)
    """ % ("signal.SIG_IGN" if ignores_term else "lambda *a: (open('term', 'w').write('got it'), sys.exit(0))")

    def report(r):  # how Ray Tune stops a trial (the pruner): SystemExit out of report
        if r["step"] >= 3:
            raise SystemExit(0)

    with pytest.raises(SystemExit):
        _run(tmp_path, body, report=report, grace_s=1.0)
    info = _exit(tmp_path)
    assert info["ended"] == "stopped" and info["warm_start"]["used"]
    if ignores_term:
        assert info["returncode"] == -signal.SIGKILL
    else:
        assert info["returncode"] == 0 and (tmp_path / "term").read_text() == "got it"
    assert _dead(info["pid"])


def test_several_warm_workers_are_forked_torchrun_style_and_fail_together(tmp_path):
    two = TrialConfig(**{**CFG.__dict__, "workers": 2})
    with pytest.raises(TrainerProcessError, match="exit status 7"):
        _run(tmp_path, """
            print(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}", file=sys.stderr, flush=True)
            if os.environ['RANK'] == '1':
                sys.exit(7)
            time.sleep(60)
        """, cfg=two, grace_s=1.0)
    info = _exit(tmp_path)
    assert info["warm_start"]["used"] and info["returncodes"][1] == 7 and info["returncodes"][0] == -signal.SIGTERM
    adir = tmp_path / "run" / "attempt-0"
    assert "rank 1 of 2" in (adir / "stderr-rank1.log").read_text()
    assert "rank 0 of 2" in (adir / "stderr.log").read_text()
    assert all(_dead(int((adir / f).read_text())) for f in ("pid", "pid-rank1"))


def test_a_real_torch_trainer_forked_warm_trains_reports_and_is_stopped(tmp_path):
    """examples/own-trainer/train_lm.py (plain PyTorch) forked from a zygote that imported torch: it
    trains and reports; the pruner's stop (SystemExit from report) SIGTERMs it, it stops after its step
    and exits 0, and exit.json records that."""
    cfg = TrialConfig(trial_id="w1", n_params=20_000, tokens=200 * 1024, lr=3e-3, batch_tokens=1024, seq_len=64,
                      schedule=Schedule(kind="wsd", warmup=0.1, decay=0.2), eval_every=2, eval_tokens=1024,
                      data_cache=str(tmp_path / "cache"), threads=1)
    settings = CommandSettings(command=(sys.executable, "examples/own-trainer/train_lm.py", "--config", "{config}"),
                               cwd=str(REPO), warm_start=("torch",), grace_s=30.0,
                               env=(("PYTHONPATH", str(REPO)),))
    got = []

    def report(r):
        got.append(r)
        if len(got) == 2:
            raise SystemExit(0)

    with pytest.raises(SystemExit):
        run_command(cfg, report, settings, tmp_path / "run", n_params=20_000)
    info = _exit(tmp_path)
    assert [r["step"] for r in got] == [2, 4] and all(r["train_loss"] > 0 for r in got)
    assert info["warm_start"]["used"] and info["ended"] == "stopped", info
    assert info["returncode"] == 0 and info["status"] == "exit status 0"
    assert "stopped at step" in (tmp_path / "run" / "attempt-0" / "stderr.log").read_text()
    assert _dead(info["pid"])


def test_a_zygote_that_cannot_serve_falls_back_to_a_fresh_process(tmp_path):
    (tmp_path / "bad_preload.py").write_text("raise RuntimeError('preload exploded')\n")
    got, info = _run(tmp_path, "emit(step=4, tokens=1024, lr=1e-3, train_loss=1.0, eval_loss=1.0)",
                     warm=("bad_preload",))
    assert got[-1]["done"] == 1.0 and info["returncode"] == 0
    assert info["warm_start"]["used"] is False and "preload exploded" in info["warm_start"]["why"]


def test_a_zygote_with_the_cuda_driver_loaded_refuses_to_fork(tmp_path):
    """Fork after CUDA is initialised is unsafe: a zygote whose preload loaded a `libcuda.so` refuses to
    serve and the trial runs in a fresh process. (No GPU here: a stand-in library under that name.)"""
    import shutil

    libs = [Path(d) / n for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64",
                                  "/lib/aarch64-linux-gnu") for n in ("libdl.so.2", "libutil.so.1")]
    lib = next((p for p in libs if p.exists()), None)
    if lib is None:
        pytest.skip("no small system library to load as a stand-in")
    shutil.copy(lib, tmp_path / "libcuda.so.1")
    (tmp_path / "cuda_preload.py").write_text("import ctypes\ndef load():\n    ctypes.CDLL('./libcuda.so.1')\n")
    got, info = _run(tmp_path, "emit(step=4, tokens=1024, lr=1e-3, train_loss=1.0, eval_loss=1.0)",
                     warm=("cuda_preload:load",))
    assert got[-1]["done"] == 1.0 and info["returncode"] == 0
    assert info["warm_start"]["used"] is False and "CUDA driver is loaded" in info["warm_start"]["why"]


def test_a_trial_stopped_while_the_zygote_imports_is_stopped_at_once_and_the_zygote_kept(tmp_path):
    # its imports go on until the test lets them finish
    (tmp_path / "slow_preload.py").write_text("import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.02)\n")
    body = "emit(step=4, tokens=1024, lr=1e-3, train_loss=1.0, eval_loss=1.0)"
    settings = _settings(tmp_path, body, warm=("slow_preload",))
    info = run_command(CFG, lambda r: None, settings, tmp_path / "run", n_params=1000, should_stop=lambda: True)
    assert info["ended"] == "stopped" and "stopped while" in info["warm_start"]["why"]
    assert info["warm_start"]["used"] is False and _dead(info["pid"])
    (zygote,) = [z for key, z in warm_start._ZYGOTES.items() if key[1] == ("slow_preload",)]
    assert zygote.ready is None and zygote.refused is None  # still importing: kept for the next trial
    (tmp_path / "go").touch()
    got = []
    run_command(CFG, got.append, settings, tmp_path / "run", n_params=1000)  # the next trial: warm
    assert got[-1]["done"] == 1.0 and _exit(tmp_path, 1)["warm_start"]["used"] is True


def test_the_children_die_with_the_zygote(tmp_path):
    (tmp_path / "sleep.py").write_text("import time\ntime.sleep(60)\n")
    z = warm_start.Zygote(sys.executable, ["json"], str(tmp_path), dict(os.environ))
    assert z.wait_ready(60.0) and z.ready["ok"] and z.ready["pid"] == z.proc.pid
    p = z.spawn([sys.executable, "sleep.py"], str(tmp_path), dict(os.environ), str(tmp_path / "o"), str(tmp_path / "e"))
    assert os.getpgid(p.pid) == p.pid and p.poll() is None
    z.close()  # as when the trial process dies: the zygote's stdin closes, it exits
    assert p.wait(timeout=10) == -signal.SIGKILL
    assert _dead(p.pid)


def _spec(trainer: dict, tmp_path: Path) -> dict:
    return {"name": "w", "trainer": {"cwd": str(REPO), **trainer}, "model": {"n_params": [20000], "seq_len": 64},
            "tokens": {"values": [65536]}, "learning_rates": [1e-3], "batch_sizes": [2048],
            "output_dir": str(tmp_path)}


@pytest.mark.parametrize("trainer,match", [
    ({"backend": "command", "command": "bash -c true", "warm_start": ["torch"]}, "not a Python interpreter"),
    ({"backend": "command", "command": "{python} -u train.py", "warm_start": ["torch"]}, "no other interpreter flags"),
    ({"backend": "command", "command": "{python} -m trainers.as_command x:y", "warm_start": ["no_such_pkg_xyz"]},
     "not importable"),
    ({"backend": "command", "command": "{python} -m trainers.as_command x:y", "warm_start": ["torch; rm -rf"]},
     "is not 'package.module'"),
    ({"backend": "python", "entrypoint": "trainers.simulated:train", "warm_start": ["torch"]}, "only for backend command"),
])
def test_a_bad_warm_start_is_refused_naming_the_field(tmp_path, trainer, match):
    with pytest.raises(SpecError, match=f"(?s)warm_start.*{match}"):
        parse_spec(_spec(trainer, tmp_path))


def test_the_default_is_a_fresh_process_and_the_field_reaches_the_trial(tmp_path):
    from orchestrator.app.tune_run import own_trainer_settings

    cmd = "{python} -m trainers.as_command trainers.deepspeed_trainer:train --config {config}"
    assert parse_spec(_spec({"backend": "command", "command": cmd}, tmp_path)).trainer.warm_start == []
    spec = parse_spec(_spec({"backend": "command", "command": cmd, "warm_start": [
        "trainers.deepspeed_trainer:preload", "trainers.deepspeed_trainer:preload_builtin_corpus"]}, tmp_path))
    assert own_trainer_settings(spec)["warm_start"] == ["trainers.deepspeed_trainer:preload",
                                                       "trainers.deepspeed_trainer:preload_builtin_corpus"]
