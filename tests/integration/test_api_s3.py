"""The HTTP API with its sweeps' stores in an S3-compatible bucket (`scalesweep serve --store
s3://BUCKET/PREFIX`), against moto's S3 server and a real `scalesweep serve` on loopback: a sweep
POSTed to the API keeps its store under PREFIX/<id> in the bucket (the client cannot choose it),
runs to the end, and the API's answers (status, proposals) read the bucket; a part another
machine adds to the bucket changes what the API answers (its cache follows the bucket's parts).

Skipped only when moto's server or boto3 is not installed (both in the `test` extra).
"""
from __future__ import annotations

import subprocess
import time

import httpx
import pytest
import yaml

from orchestrator.app.api.registry import store_version
from orchestrator.io.store import ObservationStore
from tests.integration.conftest import SIM_SPEC, free_port
from tests.integration.services import s3_bucket
from tests.integration.test_api import Server, _env, _serve_cmd

pytestmark = pytest.mark.integration

BUCKET = "scalesweep-api"


class BucketServer(Server):
    """`scalesweep serve --store s3://BUCKET/api` on a free loopback port."""

    def __init__(self, root, store: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root.parent / f"server-{self.port}.log"
        self.proc = subprocess.Popen([*_serve_cmd(root, "127.0.0.1", self.port), "--store", store], env=_env(),
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, cwd=root.parent)
        if not self._wait_ready():
            self.stop()
            raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")


def _keys(s3, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_api_sweep_with_its_store_in_the_bucket(tmp_path, monkeypatch):
    root = tmp_path / "sweeps"
    root.mkdir()
    with s3_bucket(tmp_path / "moto.log", BUCKET, monkeypatch) as s3:
        server = BucketServer(root, f"s3://{BUCKET}/api")
        try:
            with httpx.Client(base_url=server.url, timeout=60.0) as client:
                r = client.post("/sweeps", json={**SIM_SPEC, "store": "s3://elsewhere/x"})
                assert r.status_code == 422 and "store: set by the server" in r.text  # never the client's
                r = client.post("/sweeps", json=SIM_SPEC)
                assert r.status_code == 202, r.text
                assert yaml.safe_load((root / "sim" / "spec.yaml").read_text())["store"] == f"s3://{BUCKET}/api/sim"
                deadline = time.monotonic() + 240
                doc = client.get("/sweeps/sim").json()
                while doc["status"] == "running" and time.monotonic() < deadline:
                    time.sleep(0.5)  # a GET a poll: the sweep's end is seen within half a second
                    doc = client.get("/sweeps/sim").json()
                assert doc["status"] == "finished", (root / "sim" / "controller.log").read_text()[-3000:]
                assert doc["trials"] == {"finished": 6}
                props = client.get("/sweeps/sim/proposals", params={"budget": 1e13, "bootstrap": 10})
                assert props.status_code == 200 and props.json()[0]["budget"] == 1e13

                keys = _keys(s3, "api/sim/")
                assert any(k.startswith("api/sim/observations/part-") for k in keys), keys
                assert not list((root / "sim" / "store").glob("*/part-*.parquet"))  # no part on local disk

                # Another machine adds a trial to the bucket: the next answer reads it (not a stale cache).
                before = store_version(root / "sim")
                other = ObservationStore(f"s3://{BUCKET}/api/sim", fsync=False)
                other.set_status("extra", "running", config={"N": 2e4, "D": 4e5, "lr": 0.01, "batch": 8192})
                other.flush()
                assert store_version(root / "sim") != before
                assert client.get("/sweeps/sim").json()["trials"] == {"finished": 6, "running": 1}
        finally:
            server.stop()
