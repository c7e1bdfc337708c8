"""MLflow on a real PostgreSQL (issue 16): a PostgreSQL 15 server started from its binaries on
loopback, a simulated sweep run through the real controller with `tracking.uri:
postgresql://...`, and everything read back: from MLflow (parent and child runs, metric
histories equal to the observation store's rows) and from PostgreSQL's own tables.

Skipped only when no PostgreSQL server binaries are found (`scripts/ensure-postgres.sh`
installs Debian's `postgresql` in CI) or psycopg is not installed.
"""
from __future__ import annotations

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.io.store import ObservationStore
from orchestrator.io.tracking import read_sweep_runs
from tests.integration.conftest import SIM_SPEC, run_real_sweep
from tests.integration.services import PostgresServer, pg_binaries

pytestmark = pytest.mark.integration

SPEC = {**SIM_SPEC, "name": "pg-sweep", "fit": {"bootstrap": 0}}  # 6 simulated trials


@pytest.fixture(scope="module")
def postgres():
    bindir = pg_binaries()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or in /usr/lib/postgresql/*/bin; "
                    "`bash scripts/ensure-postgres.sh` installs them")
    pytest.importorskip("psycopg", reason="psycopg (pip install -e '.[test]') is SQLAlchemy's PostgreSQL driver")
    server = PostgresServer(bindir).start()
    try:
        server.create_database("mlflow")
        yield server
    finally:
        server.stop()


def test_sweep_tracked_in_postgresql(postgres, tmp_path, local_ray):
    uri = postgres.uri("mlflow")
    spec, outcome = run_real_sweep(tmp_path, {**SPEC, "tracking": {"uri": uri, "experiment": "scaling"}}, "sweep",
                                   local_ray=local_ray)
    assert outcome.statuses == {"finished": 6}, outcome.statuses
    sweep_dir = outcome.sweep_dir
    assert not (sweep_dir / "mlflow.db").exists()  # nothing went to the default SQLite store

    parent, children = read_sweep_runs(uri, SPEC["name"], "scaling")
    assert parent.info.status == "FINISHED"
    assert parent.info.run_id == outcome.mlflow_parent_run
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)

    # every reported eval loss of every trial is a metric point in PostgreSQL, at its step
    client = MlflowClient(uri)
    store = ObservationStore(sweep_dir)
    for child in children:
        tid = child.data.tags["scalesweep.trial_id"]
        rows = {int(r["step"]): r["eval_loss"] for r in store.observations(tid).to_pylist()}
        history = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "eval_loss")}
        assert rows and history.keys() == rows.keys(), tid
        assert all(math.isclose(history[s], rows[s], rel_tol=1e-9) for s in rows), tid

    # the same rows, read from PostgreSQL's own tables: the runs and metrics really live there
    (n_runs,) = postgres.query("SELECT count(*) FROM runs", "mlflow")[0]
    (n_points,) = postgres.query("SELECT count(*) FROM metrics WHERE key = 'eval_loss'", "mlflow")[0]
    assert n_runs == 7
    assert n_points == len(store.observations().to_pylist())

    # a database store's artifacts default to the sweep directory (MLflow's own default is ./mlruns)
    exp = client.get_experiment_by_name("scaling")
    assert exp.artifact_location == (sweep_dir / "mlartifacts").as_uri()
    got = client.download_artifacts(parent.info.run_id, "results/fit.json", str(tmp_path))
    assert json.loads(open(got).read()) == json.loads((sweep_dir / "fit.json").read_text())
