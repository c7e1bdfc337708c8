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

from orchestrator.io.store import ObservationStore
from tests.integration.conftest import _get_json
from tests.integration.noshare import NoSharedPathCluster, can_hide_paths
from tests.integration.services import s3_bucket
from tests.integration.test_submit import cli

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # kills a controller and a node

BUCKET = "scalesweep-noshare"
STEPS = list(range(8, 65, 8))  # 64 steps of 8192 tokens; a report and a checkpoint every 8
SPEC = {
    "model": {"n_params": [20000, 50000]},
    "tokens": {"values": [524288]},
    "learning_rates": [0.01],  # two trials: one per node (one CPU each), started together
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


def _submit(world, name: str, *env: str, spec: dict | None = None) -> str:
    """`scalesweep submit` of SPEC (updated by `spec`) as sweep `name`, its store in the bucket; the job id."""
    root, cluster = world["root"], world["cluster"]
    spec_path = root / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump({**SPEC, **(spec or {}), "name": name, "store": f"s3://{BUCKET}/sweeps/{name}"}))
    args = [a for e in env for a in ("--env", e)]
    return cli("submit", str(spec_path), "--address", cluster.address, "--output-dir", str(root / "sweeps" / name),
               *args).stdout.strip().splitlines()[0]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _job_status(cluster, job_id: str) -> str:
    return _get_json(f"{cluster.address}/api/jobs/{job_id}")["status"]


def _job_end(cluster, job_id: str, timeout: float = 400) -> str:
    """Wait until the job ended (one HTTP call a poll, not a `scalesweep logs --follow` process); its
    status, with its logs on failure."""
    status = _wait_for(lambda: (s := _job_status(cluster, job_id)) in ("SUCCEEDED", "FAILED", "STOPPED") and s,
                       timeout, f"job {job_id} to end")
    if status != "SUCCEEDED":
        logs = cli("logs", job_id, "--address", cluster.address, check=False)
        raise AssertionError(f"job {job_id}: {status}\n{logs.stdout[-4000:]}{logs.stderr[-2000:]}")
    return status


def _worker_trial(world, name: str, job: str, ready) -> str:
    """The id of a trial that runs on the worker node (its local folder is there) once `ready(tid)`."""
    cluster = world["cluster"]
    folder = cluster.worker_view(world["root"] / "sweeps" / name / "checkpoints")

    def find():
        status = _job_status(cluster, job)
        assert status in ("PENDING", "RUNNING"), f"job {job} ended ({status})"
        return next((p.name for p in (folder.iterdir() if folder.is_dir() else ()) if ready(p.name)), None)

    try:
        return _wait_for(find, 240, "a trial on the worker node")
    except AssertionError as exc:
        logs = cli("logs", job, "--address", cluster.address, check=False)
        raise AssertionError(f"{exc}\n{logs.stdout[-4000:]}{logs.stderr[-2000:]}") from None


def test_a_stop_reaches_the_worker_node_and_its_trial_checkpoints(world):
    """`scalesweep stop JOB`: the trial on the worker node (which cannot see the sweep directory) hears
    it through Ray's GCS, checkpoints at its last recorded step into the bucket and ends; resumed,
    it continues right after that step. Periodic checkpoints are off (past the last step) and Tune's
    stop timeout is long, so only the stop signal can have made that checkpoint."""
    s3, cluster, root = world["s3"], world["cluster"], world["root"]
    name = "stopped"
    uri, sweep_dir = f"s3://{BUCKET}/sweeps/{name}", root / "sweeps" / name
    spec = {"eval": {"every": 4}, "checkpoints": {"every": 1000, "stop_timeout_s": 3600}}
    job = _submit(world, name, "SCALESWEEP_REPORT_DELAY_S=2", spec=spec)  # 32 s a trial: time to stop it

    def reported(tid: str) -> bool:  # two reports of it in the bucket's store (flushed every 5 s)
        return len(ObservationStore(uri).observations(tid)) >= 2

    victim = _worker_trial(world, name, job, reported)
    assert _object(s3, f"sweeps/{name}/checkpoints/{victim}/simulated.json") is None  # no periodic checkpoint
    r = cli("stop", job, "--address", cluster.address)
    assert f"job {job}: STOPPED" in r.stdout, r.stdout

    store = ObservationStore(uri)
    trials = store.trials()
    assert trials[victim]["status"] == "stopped-by-user", trials
    steps = [int(r["step"]) for r in store.observations(victim).to_pylist()]
    at_stop = json.loads(_object(s3, f"sweeps/{name}/checkpoints/{victim}/simulated.json"))["step"]
    assert at_stop == steps[-1] < 64, (at_stop, steps)  # checkpointed at its last recorded step
    assert not cluster.worker_view(sweep_dir / "spec.yaml").exists()  # the worker never saw the sweep directory

    job2 = _submit(world, name, spec=spec)
    assert _job_end(cluster, job2) == "SUCCEEDED"
    store = ObservationStore(uri)
    assert {t["status"] for t in store.trials().values()} == {"finished"}
    raw = [int(r["step"]) for r in _raw_rows(uri) if r["trial_id"] == victim]
    assert sorted(raw) == list(range(4, 65, 4)), raw  # continued after the stop's checkpoint: no step twice


def test_controller_killed_then_resumed_from_the_bucket_alone(world):
    s3, cluster, root = world["s3"], world["cluster"], world["root"]
    name = "resumed"
    uri, sweep_dir = f"s3://{BUCKET}/sweeps/{name}", root / "sweeps" / name
    job = _submit(world, name, "SCALESWEEP_REPORT_DELAY_S=1")
    ckpts = sweep_dir / "checkpoints"

    def mid_run(tid: str) -> bool:  # checkpointed in the bucket, well before its end
        blob = _object(s3, f"sweeps/{name}/checkpoints/{tid}/simulated.json")
        return bool(blob) and STEPS[0] <= json.loads(blob)["step"] < STEPS[-2]

    victim = _worker_trial(world, name, job, mid_run)
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
    assert _job_end(cluster, job2) == "SUCCEEDED"

    store = ObservationStore(uri)
    trials = store.trials()
    assert len(trials) == 2 and {t["status"] for t in trials.values()} == {"finished"}, trials
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
