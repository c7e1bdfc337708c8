"""Node loss and worker loss on a real two-node Ray cluster on loopback (issue 16), nothing mocked.

The cluster (conftest.loopback_cluster, shared with test_submit.py: a head and a worker node, one
CPU each, each its own `ray start --block`) notices a lost node within seconds (the head's
`RAY_health_check_*`).
`scalesweep run` drives each sweep from its own process, connected with RAY_ADDRESS; the store
and the checkpoints are on a path both nodes see (the same disk, here).

- worker loss: one Ray Train worker process (rank 1) of a 2-worker trial (the own-trainer python
  backend: examples/own-trainer/entry.py, DDP over gloo, one worker per node) is SIGKILLed after
  the trial's first checkpoint; Train restarts the worker group, which resumes from it;
- node loss: the worker node's raylet is SIGKILLed while a simulated trial runs there, after its
  first checkpoint; Tune restarts that trial on the head, from its checkpoint. Runs last: the
  cluster has one node afterwards.

Each ends with exactly one row per (trial, step) and the sweep finished. Other sessions may run
Ray on the same machine: run this under `flock /tmp/scalesweep-ray.lock`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator.config.trials import plan_grid
from orchestrator.config.spec import parse_spec
from orchestrator.io.store import ObservationStore
from tests.integration.conftest import LoopbackCluster, _env, _state

pytestmark = [pytest.mark.integration, pytest.mark.serial]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(loopback_cluster):
    """The session's two-node cluster (conftest.py; FAST_HEALTH_CHECK: a lost node is declared dead
    within ~5 s, not Ray's 15 s), both nodes alive."""
    return loopback_cluster()


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path, poll: float = 0.05):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _idle(cluster: LoopbackCluster, timeout: float = 180) -> None:
    """Wait until no actor or placement group of an earlier sweep holds a CPU (Train's cleanup is asynchronous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # (Train leaves a detached, resource-free AutoscalingCoordinator actor alive: not busy)
        busy = ([a for a in _state(cluster.address, "actors", state="ALIVE") if (a.get("required_resources") or {}).get("CPU")]
                + _state(cluster.address, "placement_groups", state="CREATED"))
        if not busy:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster is still busy after {timeout} s: {busy}")


def _start_sweep(cluster: LoopbackCluster, data: dict, root: Path, **env: str):
    """`scalesweep run` on the cluster in a fresh process, once it is idle; returns (spec, process, log path)."""
    _idle(cluster)
    data = dict(data, output_dir=str(root / "sweep"))
    path = root / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    log = root / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.app.cli", "run", str(path), "--no-progress"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=_env(RAY_ADDRESS=f"127.0.0.1:{cluster.gcs_port}", RAY_AUTH_MODE="token",
                                         PYTHONUNBUFFERED="1", **env))
    return parse_spec(data), proc, log


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        raise AssertionError(f"the sweep did not end in {timeout} s:\n{log.read_text()[-4000:]}")
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def _latest(ckpt: Path):
    """The trial's newest checkpoint tag (`step<k>`), or None."""
    try:
        return (ckpt / "latest").read_text().strip() or None
    except OSError:
        return None


def _raw_steps(sweep_dir: Path, tid: str) -> list[int]:
    """Every step ever reported for the trial (the store's parts, before deduplication)."""
    steps = []
    for part in sorted((sweep_dir / "store" / "observations").glob("part-*.parquet")):
        steps.extend(r["step"] for r in pq.read_table(part).to_pylist() if r["trial_id"] == tid)
    return steps


def _assert_resumed(store: ObservationStore, sweep_dir: Path, tid: str, expected: list[int], ckpt_step: int) -> None:
    """One row per (trial, step), none missing; the steps up to the checkpoint were reported once
    (a restart from scratch would have sent them again)."""
    assert [r["step"] for r in store.observations(tid).to_pylist()] == expected
    raw = _raw_steps(sweep_dir, tid)
    assert sorted(set(raw)) == expected
    assert all(raw.count(s) == 1 for s in expected if s <= ckpt_step), (ckpt_step, raw)


# ---------------------------------------------------------------- one worker of a 2-worker trial
STEPS, EVERY = 48, 6
TWO_WORKERS = {
    "name": "worker-loss",
    "model": {"n_params": [20000], "seq_len": 64},
    "tokens": {"values": [STEPS * 2048]},
    "learning_rates": [3e-3],
    "batch_sizes": [2048],
    "eval": {"every": EVERY, "tokens": 4096},
    "resources": {"workers": 2},
    "checkpoints": {"every": EVERY, "max_failures": 2},
    "trainer": {"backend": "python", "entrypoint": "examples/own-trainer/entry.py:train", "cwd": str(REPO),
                "options": {"step_sleep_s": 0.1}},
    "fit": {"bootstrap": 0},
}


def test_a_killed_worker_of_a_two_worker_trial_restarts_from_its_checkpoint(cluster, tmp_path):
    assert len(cluster.alive_nodes()) == 2
    spec, proc, log = _start_sweep(cluster, TWO_WORKERS, tmp_path)
    (trial,) = plan_grid(spec)
    ckpt = spec.sweep_dir() / "checkpoints" / trial.trial_id
    run_dir = spec.sweep_dir() / "runs" / trial.trial_id
    try:
        tag = _wait_for(lambda: _latest(ckpt), 240, "the trial's first checkpoint", proc, log)
        victim = int((run_dir / "pid-rank1").read_text())
        os.kill(victim, signal.SIGKILL)
    finally:
        text = _finish(proc, log)
    assert "done" in text
    store = ObservationStore(spec.sweep_dir())
    rec = store.trials()[trial.trial_id]
    assert rec["status"] == "finished" and rec["config"]["workers"] == 2, rec
    _assert_resumed(store, spec.sweep_dir(), trial.trial_id, list(range(EVERY, STEPS + 1, EVERY)),
                    int(tag.removeprefix("step")))
    assert int((run_dir / "pid-rank1").read_text()) != victim  # a new worker group ran the rest
    assert _latest(ckpt) == f"step{STEPS}"


# ---------------------------------------------------------------- a whole worker node
SIM = {
    "name": "node-loss",
    "model": {"n_params": [20000, 50000]},
    "tokens": {"values": [262144, 524288]},  # 32 and 64 steps of 8192 tokens
    "learning_rates": [0.03],
    "batch_sizes": [8192],
    "trainer": {"backend": "simulated", "world": "tiny"},
    "eval": {"every": 4},
    "checkpoints": {"max_failures": 3},  # a checkpoint at every evaluation
    "fit": {"bootstrap": 0},
}


def _on_node(pid: int, raylet_pid: int) -> bool:
    """Whether process `pid` is a worker of the raylet `raylet_pid` (its parent chain holds it)."""
    import psutil

    try:
        return any(p.pid == raylet_pid for p in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def test_a_lost_node_s_trials_restart_on_the_remaining_node(cluster, tmp_path):
    assert len(cluster.alive_nodes()) == 2
    raylet = cluster.worker_raylet()
    assert raylet is not None
    spec, proc, log = _start_sweep(cluster, SIM, tmp_path, SCALESWEEP_REPORT_DELAY_S="0.3")
    planned = {t.trial_id: t for t in plan_grid(spec)}
    ckpts = spec.sweep_dir() / "checkpoints"

    def running_there():
        """A trial whose process is on the worker node and has checkpointed (its id, step)."""
        for tid in planned:
            try:
                pid = int((ckpts / tid / "worker-0.pid").read_text())
                state = (ckpts / tid / "simulated.json").read_text()
            except (OSError, ValueError):
                continue
            if _on_node(pid, raylet.pid) and '"step"' in state:
                step = json.loads(state)["step"]
                if step < planned[tid].D // planned[tid].batch:
                    return tid, step, pid
        return None

    try:
        victim, ckpt_step, old_pid = _wait_for(running_there, 240, "a checkpointed trial on the worker node", proc, log)
        raylet.kill()
        _wait_for(lambda: len(cluster.alive_nodes()) == 1, 60, "the worker node declared dead", proc, log, poll=0.5)
    finally:
        text = _finish(proc, log)
    assert "done" in text
    store = ObservationStore(spec.sweep_dir())
    trials = store.trials()
    assert set(trials) == set(planned) and {r["status"] for r in trials.values()} == {"finished"}, trials
    for tid, t in planned.items():  # every trial: one row per (trial, step), the last one at its D
        n = t.D // t.batch
        rows = store.observations(tid).to_pylist()
        assert [r["step"] for r in rows] == list(range(4, n + 1, 4)), tid
        assert rows[-1]["done"] and rows[-1]["tokens"] == t.D
    assert trials[victim]["summary"]["restarts"] >= 1, trials[victim]
    # resumed where its checkpoint was (at or after the step seen before the kill)
    raw = _raw_steps(spec.sweep_dir(), victim)
    n = planned[victim].D // planned[victim].batch
    assert sorted(set(raw)) == list(range(4, n + 1, 4))
    assert all(raw.count(s) == 1 for s in range(4, ckpt_step + 1, 4)), (ckpt_step, raw)
    # a new process (on the node that is left) ran the rest
    assert int((ckpts / victim / "worker-0.pid").read_text()) != old_pid
