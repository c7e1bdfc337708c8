"""MLflow artifacts in an S3-compatible object store (issue 16): moto's standalone server (a real
HTTP S3 API in its own process) on loopback, a simulated sweep through the real controller whose
`tracking.artifact_location` is s3://BUCKET/PREFIX, and the bucket listed with boto3 afterwards:
the parent run's fit.json, plots, tables, spec and summary are objects there, byte for byte the
files the sweep wrote, and MLflow reads them back through its own S3 client.

Skipped only when moto's server or boto3 is not installed (both in the `test` extra).
"""
from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.io.tracking import read_sweep_runs
from tests.integration.conftest import SIM_SPEC, run_real_sweep
from tests.integration.services import S3Server

pytestmark = pytest.mark.integration

BUCKET = "scalesweep-artifacts"
SPEC = {**SIM_SPEC, "name": "s3-sweep", "fit": {"bootstrap": 0},  # 6 simulated trials
        "tracking": {"artifact_location": f"s3://{BUCKET}/mlflow"}}


@pytest.fixture
def s3(tmp_path, monkeypatch):
    pytest.importorskip("boto3", reason="boto3 (pip install -e '.[test]') is MLflow's S3 client")
    pytest.importorskip("moto.server", reason="moto[s3] with flask (pip install -e '.[test]') serves the S3 API")
    server = S3Server(tmp_path / "moto.log").start()
    try:
        for key, value in server.env().items():  # the controller and its MLflow helper process read these
            monkeypatch.setenv(key, value)
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()


def test_sweep_artifacts_land_in_the_bucket(s3, tmp_path, local_ray):
    spec, outcome = run_real_sweep(tmp_path, SPEC, "sweep", local_ray=local_ray)
    assert outcome.statuses == {"finished": 6}, outcome.statuses
    sweep_dir = outcome.sweep_dir
    uri = spec.tracking_uri()
    parent, children = read_sweep_runs(uri, SPEC["name"], SPEC["name"])  # one experiment per sweep, named after it
    assert parent.info.status == "FINISHED" and len(children) == 6
    run_id = parent.info.run_id
    assert parent.info.artifact_uri == f"s3://{BUCKET}/mlflow/{run_id}/artifacts"
    assert not (sweep_dir / "mlartifacts").exists()  # nothing went to the local default

    # the bucket, listed over the S3 API: the parent run's artifacts are objects there
    client = s3.client()
    prefix = f"mlflow/{run_id}/artifacts/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    keys = {o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])}
    for want in ("results/fit.json", "results/proposals.json", "plots/loss_vs_compute.png", "spec/spec.yaml",
                 "summary.md"):
        assert want in keys, sorted(keys)
    body = client.get_object(Bucket=BUCKET, Key=prefix + "results/fit.json")["Body"].read()
    assert body == (sweep_dir / "fit.json").read_bytes()
    png = client.get_object(Bucket=BUCKET, Key=prefix + "plots/loss_vs_compute.png")["Body"].read()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")

    # and MLflow reads them back through its own S3 artifact repository
    got = MlflowClient(uri).download_artifacts(run_id, "results/fit.json", str(tmp_path))
    assert json.loads(open(got).read()) == json.loads((sweep_dir / "fit.json").read_text())
