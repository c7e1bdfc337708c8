"""A user's own trainer: the versioned contract, the command runner on real processes, entrypoints,
and bad specs that exit 2 before anything starts (no Ray: the sweeps are in
tests/integration/test_own_trainer.py)."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.app.cli import sweep_commands  # noqa: F401  (registers the commands)
from orchestrator.app.cli.app import app
from orchestrator.config.spec import SpecError, parse_spec
from trainers.command import CommandSettings, FirstReportTimeout, TrainerProcessError, run_command
from trainers.contract import CONTRACT_VERSION, ContractError, REPORT_KEYS, TrialConfig, normalise_report
from trainers.entrypoint import EntrypointError, load_entrypoint

CFG = TrialConfig(trial_id="t1", n_params=1000, tokens=4 * 256, lr=1e-3, batch_tokens=256, seq_len=64)
GOOD = {"step": 1, "tokens": 256, "lr": 1e-3, "train_loss": 5.0, "eval_loss": 5.1}


# ------------------------------------------------------------------ the contract
def test_config_document_carries_the_version_and_round_trips():
    d = CFG.document()
    assert TrialConfig(**{**CFG.to_dict(), "schedule": CFG.schedule}) == CFG  # to_dict: the fields only
    assert d["contract_version"] == CONTRACT_VERSION == 1
    assert TrialConfig.from_dict(json.loads(json.dumps({**d, "metrics_file": "m", "attempt": 0}))) == CFG
    with pytest.raises(ValueError, match="contract version 2"):
        TrialConfig.from_dict({**d, "contract_version": 2})


def test_reports_are_checked_filled_and_keep_extras():
    r = normalise_report({**GOOD, "eval_loss": None, "grad_norm": 2}, planned_tokens=1024, n_params=1000)
    assert tuple(k for k in r if k != "extra") == REPORT_KEYS
    assert math.isnan(r["eval_loss"]) and math.isnan(r["tokens_per_s"]) and r["done"] == 0.0
    assert r["flops"] == 6.0 * 1000 * 256 and r["extra"] == {"grad_norm": 2.0}
    assert normalise_report({**GOOD, "tokens": 1024}, 1024, 1000)["done"] == 1.0  # all planned tokens: final
    assert normalise_report({**GOOD, "done": True}, 1024, 1000)["done"] == 1.0  # JSON true
    assert normalise_report({**GOOD, "flops": 7.0}, 1024, 1000)["flops"] == 7.0  # the trainer's own count wins
    assert normalise_report({**GOOD, "train_loss": float("nan")}, 1024, 1000)["done"] == 1.0  # diverged: last
    with pytest.raises(ContractError, match="required key.*train_loss"):
        normalise_report({k: v for k, v in GOOD.items() if k != "train_loss"}, 1024, 1000)
    with pytest.raises(ContractError, match="'lr' must be a number"):
        normalise_report({**GOOD, "lr": "0.1"}, 1024, 1000)
    with pytest.raises(ContractError, match="'note' must be a number"):
        normalise_report({**GOOD, "note": "hi"}, 1024, 1000)
    with pytest.raises(ContractError, match="whole number"):
        normalise_report({**GOOD, "step": 1.5}, 1024, 1000)


# ------------------------------------------------------------------ the command runner (real processes)
def _program(tmp_path: Path, body: str) -> tuple[str, ...]:
    """A small Python program; it gets the config path as argv[1]."""
    path = tmp_path / "prog.py"
    path.write_text("import json, os, signal, sys, time\ncfg = json.load(open(sys.argv[1]))\n"
                    "out = open(cfg['metrics_file'], 'a')\n"
                    "def emit(**r):\n    out.write(json.dumps(r) + '\\n'); out.flush()\n" + textwrap.dedent(body))
    return (sys.executable, str(path), "{config}")


def _settings(tmp_path, body, **kw):
    return CommandSettings(command=_program(tmp_path, body), cwd=str(tmp_path), **kw)


def _run(tmp_path, body, cfg=CFG, report=None, **kw):
    got = []
    info = run_command(cfg, report or got.append, _settings(tmp_path, body, **kw), tmp_path / "run", n_params=1000)
    return got, info


def test_reports_are_forwarded_and_the_final_one_waits_for_a_clean_exit(tmp_path):
    got, info = _run(tmp_path, """
        for s in range(1, 5):
            emit(step=s, tokens=256 * s, lr=1e-3, train_loss=5.0 - s, eval_loss=None, loss_scale=8)
        open(os.path.join(cfg['checkpoint_dir'] or '.', 'last'), 'w').write('written after the final report')
        print('bye', file=sys.stderr)
    """, cfg=TrialConfig(**{**CFG.__dict__, "checkpoint_dir": str(tmp_path / "ck")}))
    assert [r["step"] for r in got] == [1, 2, 3, 4] and got[-1]["done"] == 1.0
    assert got[0]["extra"] == {"loss_scale": 8.0}
    assert info["returncode"] == 0 and info["reports"] == 4
    doc = json.loads((tmp_path / "run" / "attempt-0" / "config.json").read_text())
    assert doc["contract_version"] == 1 and doc["attempt"] == 0 and doc["resume"] is False
    assert json.loads((tmp_path / "run" / "attempt-0" / "exit.json").read_text())["status"] == "exit status 0"
    # a second attempt on the same trial sees the first one's checkpoint: resume
    _run(tmp_path, "emit(step=4, tokens=1024, lr=1e-3, train_loss=1.0, eval_loss=1.0)",
         cfg=TrialConfig(**{**CFG.__dict__, "checkpoint_dir": str(tmp_path / "ck")}))
    doc = json.loads((tmp_path / "run" / "attempt-1" / "config.json").read_text())
    assert doc["attempt"] == 1 and doc["resume"] is True


def test_a_crash_carries_the_exit_status_and_stderr_tail(tmp_path):
    got = []
    with pytest.raises(TrainerProcessError, match=r"(?s)exit status 3.*last step 1.*CUDA out of memory"):
        _run(tmp_path, """
            emit(step=1, tokens=256, lr=1e-3, train_loss=5.0, eval_loss=5.0)
            print('RuntimeError: CUDA out of memory', file=sys.stderr)
            sys.exit(3)
        """, report=got.append)
    assert [r["step"] for r in got] == [1]


@pytest.mark.parametrize("body,match", [
    ("time.sleep(30)", "trainer.first_report_timeout_s"),
    ("out.write('not json\\n'); out.flush(); time.sleep(30)", "not JSON"),
    ("emit(step=1, tokens=256, lr=1e-3, eval_loss=5.0); time.sleep(30)", "required key"),
    ("emit(step=1, tokens=256, lr=1e-3, train_loss=5.0, eval_loss=5.0)", "without its final report"),
])
def test_contract_violations_end_the_program_and_name_the_problem(tmp_path, body, match):
    t0 = time.monotonic()
    with pytest.raises((TrainerProcessError, FirstReportTimeout), match=match):
        # 1 s only where the timeout is the violation: elsewhere a loaded machine's slow interpreter
        # start must not turn the violation under test into a first-report timeout
        timeout_s = 1.0 if match == "trainer.first_report_timeout_s" else 15.0
        _run(tmp_path, body, first_report_timeout_s=timeout_s, grace_s=0.5)
    assert time.monotonic() - t0 < 25  # the program was ended, not waited for
    info = json.loads((tmp_path / "run" / "attempt-0" / "exit.json").read_text())
    assert info["contract_error"] is True
    _assert_dead(info["pid"])


def _assert_dead(pid: int) -> None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    raise AssertionError(f"process {pid} is still alive")


@pytest.mark.parametrize("ignores_term", [False, True])
def test_a_stop_signals_the_program_then_kills_it(tmp_path, ignores_term):
    """Tune stops a trial by raising SystemExit from report: SIGTERM, then SIGKILL after the grace period."""
    body = """
        signal.signal(signal.SIGTERM, %s)
        for s in range(1, 1000):
            emit(step=s, tokens=1, lr=1e-3, train_loss=5.0, eval_loss=5.0)
            time.sleep(0.05)
    """ % ("signal.SIG_IGN" if ignores_term else "lambda *a: (open('term', 'w').write('got it'), sys.exit(0))")

    def report(r):
        if r["step"] >= 3:
            raise SystemExit(0)

    with pytest.raises(SystemExit):
        _run(tmp_path, body, report=report, grace_s=1.0)
    info = json.loads((tmp_path / "run" / "attempt-0" / "exit.json").read_text())
    assert info["ended"] == "stopped"
    if ignores_term:
        assert info["returncode"] == -signal.SIGKILL
    else:
        assert info["returncode"] == 0 and (tmp_path / "term").read_text() == "got it"
    _assert_dead(info["pid"])


def test_several_workers_are_launched_torchrun_style_and_fail_together(tmp_path):
    two = TrialConfig(**{**CFG.__dict__, "workers": 2})
    got, info = _run(tmp_path, """
        rank, world = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
        assert os.environ['MASTER_ADDR'] == '127.0.0.1' and int(os.environ['MASTER_PORT']) > 0
        if rank == 0:
            emit(step=4, tokens=1024, lr=1e-3, train_loss=1.0, eval_loss=1.0, world_size=world)
        print(f'rank {rank} of {world}', file=sys.stderr)
    """, cfg=two)
    assert [r["extra"]["world_size"] for r in got] == [2.0] and info["returncodes"] == [0, 0]
    adir = tmp_path / "run" / "attempt-0"
    assert "rank 1 of 2" in (adir / "stderr-rank1.log").read_text() and (adir / "pid-rank1").exists()
    # rank 1 crashes: rank 0 (which would run for a minute) is ended, the error names the status
    t0 = time.monotonic()
    with pytest.raises(TrainerProcessError, match="exit status 7"):
        _run(tmp_path, """
            if os.environ['RANK'] == '1':
                sys.exit(7)
            time.sleep(60)
        """, cfg=two, grace_s=1.0)
    assert time.monotonic() - t0 < 30
    info = json.loads((tmp_path / "run" / "attempt-1" / "exit.json").read_text())
    assert info["returncodes"][1] == 7 and info["returncodes"][0] != 0


def test_any_contract_function_runs_as_a_command(tmp_path):
    (tmp_path / "fn.py").write_text(
        "def train(config, report):\n"
        "    for s in range(1, 5):\n"
        "        report({'step': s, 'tokens': s * config.batch_tokens, 'lr': config.lr, 'train_loss': 1.0 / s,\n"
        "                'eval_loss': float('nan'), 'done': float(s == 4), 'width': config.options['width']})\n")
    cfg = TrialConfig(**{**CFG.__dict__, "options": {"width": 3}})
    settings = CommandSettings(command=(sys.executable, "-m", "trainers.as_command", "fn.py:train", "--config", "{config}"),
                               cwd=str(tmp_path), env=(("PYTHONPATH", str(Path(__file__).resolve().parents[3])),))
    got = []
    run_command(cfg, got.append, settings, tmp_path / "run", n_params=1000)
    assert [r["step"] for r in got] == [1, 2, 3, 4] and got[-1]["done"] == 1.0
    assert math.isnan(got[0]["eval_loss"]) and got[0]["extra"] == {"width": 3.0}


# ------------------------------------------------------------------ entrypoints
def test_entrypoints_load_by_module_or_file_and_check_the_signature(tmp_path):
    (tmp_path / "mine.py").write_text("def train(config, report):\n    pass\ndef bad(config):\n    pass\n")
    assert load_entrypoint("mine.py:train", str(tmp_path)).__name__ == "train"
    with pytest.raises(EntrypointError, match=r"function\(config, report\).*bad\(config\)"):
        load_entrypoint("mine.py:bad", str(tmp_path))
    with pytest.raises(EntrypointError, match="cannot import 'no_such_pkg.mod'.*ModuleNotFoundError"):
        load_entrypoint("no_such_pkg.mod:train", str(tmp_path))
    with pytest.raises(EntrypointError, match="not 'package.module:function'"):
        load_entrypoint("just_a_module", str(tmp_path))


# ------------------------------------------------------------------ bad specs: exit 2, naming the field
BASE = {"name": "own", "model": {"n_params": [20000], "seq_len": 64}, "tokens": {"values": [8192]},
        "learning_rates": [1e-3], "batch_sizes": [2048]}


@pytest.mark.parametrize("trainer,field,why", [
    ({"backend": "command", "command": ["no-such-trainer-binary", "--config", "{config}"]}, "trainer.command",
     "not found on PATH"),
    ({"backend": "command", "command": "{python} missing_script.py"}, "trainer.command", "does not exist"),
    ({"backend": "command"}, "trainer.command", "needs the program"),
    ({"backend": "python", "entrypoint": "no_such_pkg.train:main"}, "trainer.entrypoint", "cannot import"),
    ({"backend": "python", "entrypoint": "trainers.simulated:final_loss_typo"}, "trainer.entrypoint", "no attribute"),
    ({"backend": "deepspeed", "command": ["true"]}, "trainer.command", "only for backend command"),
])
def test_bad_trainer_specs_exit_2_naming_the_field(tmp_path, trainer, field, why):
    data = {**BASE, "trainer": trainer, "output_dir": str(tmp_path / "out")}
    with pytest.raises(SpecError, match=rf"{field}: .*{why}"):
        parse_spec(data)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2 and field in res.output, res.output
    assert not (tmp_path / "out").exists()  # nothing started


def test_good_own_trainer_specs_validate_and_record_an_absolute_cwd(tmp_path):
    (tmp_path / "mine.py").write_text("def train(config, report):\n    pass\n")
    spec = parse_spec({**BASE, "trainer": {"backend": "python", "entrypoint": "mine.py:train", "cwd": str(tmp_path),
                                           "options": {"width": 3}}})
    assert spec.trainer.own and Path(spec.trainer.cwd).is_absolute()
    spec = parse_spec({**BASE, "trainer": {"backend": "command", "command": "{python} -c pass"}})
    assert spec.trainer.cwd == os.getcwd()


@pytest.mark.parametrize("backend", ["command", "python"])
def test_the_http_api_refuses_to_run_a_clients_trainer(tmp_path, backend):
    from orchestrator.app.api import ApiError, SweepRegistry

    registry = SweepRegistry(tmp_path, launch=False)
    trainer = {"backend": backend, "command": "true"} if backend == "command" else \
        {"backend": backend, "entrypoint": "os:system"}
    with pytest.raises(ApiError, match="trainer.backend: the API does not run your own trainer"):
        registry.create({**BASE, "trainer": trainer})
    assert registry.ids() == []
