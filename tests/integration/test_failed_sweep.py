"""No failure leaves state behind (issue 16), on real simulated sweeps with a real local Ray
cluster and MLflow store, nothing mocked:

- every trial diverges (lr 2.0, past the tiny world's divergence threshold): `scalesweep run`
  ends cleanly with one line saying no trial finished (exit 1, no traceback), the MLflow parent
  run is ended, and `scalesweep resume` says the same;
- the sweep fails after it started (fit.json cannot be written: a directory is in its way):
  the parent run ends FAILED with the error as a tag, the store holds every trial, the
  traceback is in <sweep dir>/error.log, and the CLI prints one line and exits 1.

Run under `flock /tmp/scalesweep-ray.lock` when other Ray clusters share the machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.io.store import ObservationStore
from orchestrator.io.tracking import read_sweep_runs
from tests.integration.conftest import shared_ray_address

# Not `serial`: no process is killed and nothing is timed (the failures are diverged trials and a
# directory in fit.json's way), so other tests beside it only slow it down.
pytestmark = pytest.mark.integration

SIM = {
    "model": {"n_params": [20000, 50000]},
    "tokens": {"values": [262144]},  # 32 steps of 8192 tokens
    "batch_sizes": [8192],
    "trainer": {"backend": "simulated", "world": "tiny"},
    "eval": {"every": 8},
    "fit": {"bootstrap": 20},
}


def _cli(*args: str, address: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`scalesweep ARGS` in a fresh process, its sweep on the Ray instance at `address`."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ADDRESS"] = address
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "orchestrator.app.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _parent(sweep_dir: Path, name: str):
    parent, _ = read_sweep_runs(f"sqlite:///{sweep_dir / 'mlflow.db'}", name, name)
    return parent


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_no_trial_finishes_ends_cleanly_and_resume_says_the_same(tmp_path, local_ray):
    sweep_dir = tmp_path / "sweep"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(dict(SIM, name="all-diverge", learning_rates=[2.0], output_dir=str(sweep_dir))))
    for args in (("run", str(spec), "--no-progress"), ("resume", str(sweep_dir), "--no-progress")):
        r = _cli(*args, address=shared_ray_address(local_ray))  # the session's shared instance (conftest.py)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "Traceback" not in r.stdout + r.stderr, r.stderr
        errors = _error_lines(r.stderr)
        assert len(errors) == 1 and "no trial finished (2 diverged)" in errors[0], r.stderr
    trials = ObservationStore(sweep_dir).trials()
    assert len(trials) == 2 and all(t["status"] == "diverged" for t in trials.values())
    parent = _parent(sweep_dir, "all-diverge")
    assert parent.info.status == "FINISHED"  # the sweep ran to its end; its record is whole
    assert not (sweep_dir / "error.log").exists()


def test_a_failure_after_the_start_ends_the_parent_failed_with_the_error(tmp_path, local_ray):
    from orchestrator.app.session import SweepFailed, run_sweep
    from orchestrator.config.spec import parse_spec

    sweep_dir = tmp_path / "sweep"
    spec = parse_spec(dict(SIM, name="fails-late", learning_rates=[0.03], output_dir=str(sweep_dir)))
    (sweep_dir / "fit.json").mkdir(parents=True)  # a real failure once every trial has run
    local_ray(2)  # the session's 2-CPU local Ray instance (conftest.py)
    with pytest.raises(SweepFailed) as err:
        run_sweep(spec, None, show_progress=False)
    assert "IsADirectoryError" in err.value.line and "\n" not in err.value.line
    assert err.value.log_path == sweep_dir / "error.log"
    log = err.value.log_path.read_text()
    assert "Traceback" in log and "IsADirectoryError" in log
    trials = ObservationStore(sweep_dir).trials()  # flushed: every trial that ran is in the store
    assert len(trials) == 2 and all(t["status"] == "finished" for t in trials.values())
    parent = _parent(sweep_dir, "fails-late")
    assert parent.info.status == "FAILED"
    assert "IsADirectoryError" in parent.data.tags["scalesweep.error"]
