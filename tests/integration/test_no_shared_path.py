"""A sweep on a two-node cluster whose nodes share no path (issue 16), nothing mocked:

- the cluster: a head and a worker node on loopback, the worker in its own mount namespace
  (`tests/integration/noshare.py`) where the test's folders and the head's Ray temp dir are
  empty tmpfs mounts: the sweep directory the controller writes on the head does not exist on
  the worker node, and what trials write locally on the worker is invisible to the head;
- the store, the trials' checkpoints and Ray Tune's files in a bucket of moto's S3 server (a real
  HTTP S3 API on loopback), the bucket's endpoint and keys in both nodes' environment;
- the sweep submitted with `scalesweep submit` (a Ray job); its controller SIGKILLed while a trial
  runs on the worker node; the worker node then leaves the cluster, and the same spec is submitted
  again: the worker's trial restarts on the head from its checkpoint in the bucket (the head never
  saw the worker's folder), the sweep finishes with exactly one store row per (trial, step).

Skipped when moto's server or boto3 is missing, or mount namespaces are not allowed (not root).
Run under `flock /tmp/scalesweep-ray.lock` when other Ray clusters share the machine.
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
import yaml

from orchestrator.store import ObservationStore
from tests.integration.noshare import NoSharedPathCluster, can_hide_paths
from tests.integration.services import s3_bucket
from tests.integration.test_submit import cli

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # kills a controller and a node

BUCKET = "scalesweep-noshare"
STEPS = list(range(8, 65, 8))  # 64 steps of 8192 tokens; a report and a checkpoint every 8
SPEC = {
    "model": {"n_params": [20000, 50000]},
    "tokens": {"values": [524288]},
    "learning_rates": [0.01, 0.03],
    "batch_sizes": [8192],
    "trainer": {"backend": "simulated", "world": "tiny"},
    "eval": {"every": 8},
    "checkpoints": {"every": 8},
    "budget": {"targets": [1e13]},
    "fit": {"bootstrap": 0},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The S3 server with its bucket, and the cluster; `root` is the folder the worker node cannot see."""
    if not can_hide_paths():
        pytest.skip("needs a mount namespace (root or CAP_SYS_ADMIN) to give the worker node its own filesystem")
    root = tmp_path_factory.mktemp("noshare")
    (root / "cluster").mkdir()
    with pytest.MonkeyPatch.context() as mp, s3_bucket(root / "moto.log", BUCKET, mp) as s3:
        cluster = NoSharedPathCluster(root / "cluster", hidden=[root], node_env=s3.env(),
                                      head_env={"RAY_health_check_period_ms": "1000"})
        try:
            yield {"s3": s3, "cluster": cluster, "root": root}
        finally:
            cluster.stop()


def _object(s3, key: str):
    try:
        return s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except s3.client().exceptions.NoSuchKey:
        return None


def _keys(s3, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _raw_rows(uri: str) -> list[dict]:
    """Every report row in the bucket's parts, before deduplication (a re-sent report is a second row)."""
    loc = ObservationStore(uri).location
    return [r for p in loc.parts("observations") for r in loc.read_table(p).to_pylist()]


def _submit(world, name: str, *env: str):
    root, cluster = world["root"], world["cluster"]
    spec_path = root / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump({**SPEC, "name": name, "store": f"s3://{BUCKET}/sweeps/{name}"}))
    args = [a for e in env for a in ("--env", e)]
    return cli("submit", str(spec_path), "--address", cluster.address, "--output-dir", str(root / "sweeps" / name),
               *args).stdout.strip().splitlines()[0]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _job_status(cluster, job_id: str) -> str:
    return json.loads(cli("status", job_id, "--address", cluster.address, "--json").stdout)["status"]


def test_controller_killed_then_resumed_from_the_bucket_alone(world):
    s3, cluster, root = world["s3"], world["cluster"], world["root"]
    name = "resumed"
    uri, sweep_dir = f"s3://{BUCKET}/sweeps/{name}", root / "sweeps" / name
    job = _submit(world, name, "SCALESWEEP_REPORT_DELAY_S=1")
    ckpts = sweep_dir / "checkpoints"

    def worker_trial_mid_run():
        """(trial id, bucket checkpoint step) of a trial running on the worker node, checkpointed, not done."""
        folder = cluster.worker_view(ckpts)
        for tid in (p.name for p in folder.iterdir()) if folder.is_dir() else ():
            blob = _object(s3, f"sweeps/{name}/checkpoints/{tid}/simulated.json")
            if blob and STEPS[0] <= json.loads(blob)["step"] < STEPS[-2]:
                return tid, json.loads(blob)["step"]
        return None

    victim, _ = _wait_for(worker_trial_mid_run, 240, "a trial on the worker node with a checkpoint in the bucket")
    pid = int((sweep_dir / "controller.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)  # the controller dies (its trials with it: their owner is gone)
    _wait_for(lambda: _job_status(cluster, job) in ("FAILED", "STOPPED"), 120, "the killed job to end")
    # what the victim's bucket checkpoint holds once nothing runs any more
    at_kill = json.loads(_object(s3, f"sweeps/{name}/checkpoints/{victim}/simulated.json"))["step"]

    # No shared path: the worker node never saw the sweep directory, the head never saw the worker's files.
    assert (sweep_dir / "spec.yaml").is_file() and not cluster.worker_view(sweep_dir / "spec.yaml").exists()
    on_worker = {p.name for p in cluster.worker_view(ckpts).iterdir()}
    on_head = {p.name for p in ckpts.iterdir()} if ckpts.is_dir() else set()
    assert victim in on_worker and not on_worker & on_head, (on_worker, on_head)
    assert not (sweep_dir / "ray").exists()  # Tune's state is in the bucket
    assert _keys(s3, f"sweeps/{name}/ray/{name}/")

    # The worker node leaves: every trial of the resumed sweep runs on the head.
    worker = cluster.procs[-1]
    worker.send_signal(signal.SIGTERM)
    worker.wait(60)
    _wait_for(lambda: len(cluster.alive_nodes()) == 1, 120, "the worker node to leave")

    t_resume = time.time()
    job2 = _submit(world, name)
    r = cli("logs", job2, "--address", cluster.address, "--follow", timeout=400, check=False)
    assert _job_status(cluster, job2) == "SUCCEEDED", r.stdout[-4000:]

    store = ObservationStore(uri)
    trials = store.trials()
    assert len(trials) == 4 and {t["status"] for t in trials.values()} == {"finished"}, trials
    for tid in trials:  # exactly one row per (trial, step), none missing
        assert [int(r["step"]) for r in store.observations(tid).to_pylist()] == STEPS, tid
    raw = [(int(r["step"]), r["wall_time"]) for r in _raw_rows(uri) if r["trial_id"] == victim]
    # restored on the head from the bucket: what its checkpoint covered was reported once, before the kill
    assert all([s for s, _ in raw].count(step) == 1 for step in STEPS if step <= at_kill), (at_kill, raw)
    again = [s for s, t in raw if t >= t_resume]
    assert again and min(again) > at_kill, (at_kill, again)
    assert (ckpts / victim / "simulated.json").is_file()  # its folder on the head came from the bucket
    assert json.loads(_object(s3, f"sweeps/{name}/checkpoints/{victim}/simulated.json")) == {"step": 64}
    assert (sweep_dir / "fit.json").is_file()
