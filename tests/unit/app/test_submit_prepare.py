"""`orchestrator.app.submit` without a cluster: what a submission carries, and what it refuses."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from orchestrator.config.spec import SpecError, load_spec, parse_spec
from orchestrator.app.submit import EXCLUDES, SubmitError, prepare_submission, resolve_address

SPEC = {
    "name": "sub",
    "model": {"n_params": [20000, 50000, 120000]},
    "tokens": {"per_param": [10, 20]},
    "learning_rates": [0.01],
    "batch_sizes": [8192],
    "trainer": {"backend": "simulated", "world": "tiny"},
    "budget": {"targets": [1e13]},
}


def _prep(spec: dict, **kw):
    sub = prepare_submission(parse_spec(spec), **kw)
    try:
        return sub, yaml.safe_load((sub.staging_dir / "spec.yaml").read_text())
    finally:
        shutil.rmtree(sub.staging_dir)


def test_submission_carries_project_and_rewritten_spec(tmp_path):
    sub, shipped = _prep(SPEC, output_dir=str(tmp_path / "sweep"), tracking_uri="http://mlflow:5000",
                         env={"A": "1"}, submission_id="my-id")
    assert sub.submission_id == "my-id"
    assert sub.entrypoint == "python -m orchestrator.app.cli run spec.yaml --no-progress"
    env = sub.runtime_env
    assert env["working_dir"] == str(sub.staging_dir)
    assert sorted(p.rsplit("/", 1)[1] for p in env["py_modules"]) == ["cluster", "orchestrator", "trainers"]
    assert {".venv", ".git", "sweeps", "benchmarks/results", "__pycache__"} <= set(env["excludes"]) == set(EXCLUDES)
    assert env["env_vars"] == {"PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_WAIT_TIME_S": "60", "A": "1"}
    assert shipped["output_dir"] == str(tmp_path / "sweep")
    assert shipped["tracking"]["uri"] == "http://mlflow:5000"
    assert parse_spec(shipped).name == "sub"  # the shipped spec is valid as is
    assert sub.metadata == {"scalesweep.sweep": "sub", "scalesweep.sweep_dir": str(tmp_path / "sweep"),
                            "scalesweep.tracking_uri": "http://mlflow:5000"}
    assert sub.warnings == []


def test_default_tracking_is_sqlite_in_the_shared_sweep_dir(tmp_path):
    sub, shipped = _prep({**SPEC, "output_dir": str(tmp_path / "s")})
    assert sub.metadata["scalesweep.tracking_uri"] == f"sqlite:///{tmp_path / 's'}/mlflow.db"
    assert sub.submission_id.startswith("scalesweep-sub-")
    assert sub.warnings  # a note that an MLflow server is the better choice


@pytest.mark.parametrize("changes, field", [
    ({}, "output_dir"),  # unset: ./sweeps/<name> means nothing on the cluster
    ({"output_dir": "rel/dir"}, "output_dir"),
    ({"output_dir": "/abs", "tracking": {"uri": "sqlite:///rel.db"}}, "tracking.uri"),
    ({"output_dir": "/abs", "tracking": {"uri": "mlruns"}}, "tracking.uri"),
    ({"output_dir": "/abs", "data": "shards"}, "data"),
])
def test_paths_the_cluster_cannot_see_are_refused(changes, field):
    with pytest.raises(SpecError, match=field):
        prepare_submission(parse_spec({**SPEC, **changes}))


def test_absolute_paths_and_servers_are_accepted():
    for uri in ("sqlite:////shared/m.db", "/shared/mlruns", "file:///shared/mlruns", "https://mlflow.example"):
        _prep({**SPEC, "output_dir": "/shared/s", "tracking": {"uri": uri}})


def test_address_precedence(monkeypatch):
    monkeypatch.delenv("SCALESWEEP_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SubmitError, match="--address"):
        resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "http://ray:8265")
    assert resolve_address(None) == "http://ray:8265"
    monkeypatch.setenv("SCALESWEEP_ADDRESS", "http://ss:8265")
    assert resolve_address(None) == "http://ss:8265"
    assert resolve_address("http://cli:8265") == "http://cli:8265"


def test_example_specs_need_a_shared_dir():
    with pytest.raises(SpecError, match="--output-dir"):
        prepare_submission(load_spec(Path(__file__).parents[3] / "examples" / "simulated.yaml"))
