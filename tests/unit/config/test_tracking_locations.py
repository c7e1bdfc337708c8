"""Where a sweep's MLflow artifacts go (`tracking.artifact_location`, `SweepSpec.artifact_location`)."""
from __future__ import annotations

import pytest

from orchestrator.config.spec import SpecError, parse_spec

BASE = {"name": "loc", "model": {"n_params": [20000]}, "tokens": {"values": [262144]}, "learning_rates": [0.01],
        "batch_sizes": [8192], "trainer": {"backend": "simulated"}}


def _spec(tmp_path, **tracking):
    return parse_spec({**BASE, "output_dir": str(tmp_path / "sweep"), "tracking": tracking})


def test_defaults_follow_the_store(tmp_path):
    assert _spec(tmp_path).artifact_location() is None  # SQLite: the tracker puts them beside mlflow.db
    assert _spec(tmp_path, uri="http://127.0.0.1:5000").artifact_location() is None  # the server decides
    pg = _spec(tmp_path, uri="postgresql://u@127.0.0.1:5432/mlflow")
    assert pg.artifact_location() == (tmp_path / "sweep" / "mlartifacts").as_uri()  # not ./mlruns of the cwd
    assert _spec(tmp_path, uri="postgresql+psycopg://u@h/db").artifact_location().endswith("/sweep/mlartifacts")


def test_an_explicit_location_wins(tmp_path):
    s3 = _spec(tmp_path, uri="postgresql://u@h/db", artifact_location="s3://bucket/mlflow")
    assert s3.artifact_location() == "s3://bucket/mlflow"
    local = _spec(tmp_path, artifact_location=str(tmp_path / "arts"))
    assert local.artifact_location() == (tmp_path / "arts").as_uri()


@pytest.mark.parametrize("value,words", [("foo://x/y", "scheme 'foo'"), ("  ", "empty"), ("s3://b/\x01", "control")])
def test_a_bad_location_is_refused_naming_the_field(tmp_path, value, words):
    with pytest.raises(SpecError) as exc:
        _spec(tmp_path, artifact_location=value)
    assert "tracking.artifact_location" in str(exc.value) and words in str(exc.value), str(exc.value)


def test_a_submitted_sweep_needs_an_absolute_or_remote_location(tmp_path):
    from orchestrator.app.submit import _check_reachable

    for loc in ("/shared/arts", "s3://bucket/mlflow"):
        _check_reachable(_spec(tmp_path, artifact_location=loc))
    with pytest.raises(SpecError, match="tracking.artifact_location: arts is a relative path"):
        _check_reachable(_spec(tmp_path, artifact_location="arts"))
