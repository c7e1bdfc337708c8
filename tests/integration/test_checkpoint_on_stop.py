"""Checkpoint on a user's stop (issue 16), all real: a subprocess `scalesweep run` (simulated
backend, slowed by SCALESWEEP_REPORT_DELAY_S, on the session's shared local Ray instance) whose trials save
checkpoints only at their last step (`checkpoints.every` past the end) is stopped mid-run by
SIGTERM to its controller (what `scalesweep stop SWEEP_DIR` sends, tested in
test_graceful_stop.py); then `scalesweep resume` finishes it.

Before this, a stopped trial kept only its last periodic checkpoint (here: none) and a resumed
sweep trained it again from step 0, re-sending every report. Now the stop file makes each running
trial save a checkpoint right after its next recorded report and end, so:

- each stopped trial's checkpoint is at exactly the last step the store recorded for it;
- the resumed trial starts after that step: every step is in its MLflow history once (a trial
  restarted from zero would log its early steps a second time), and the store holds one row per
  step, none missing.

The same for a 2-worker DeepSpeed trial (Ray Train inside the trial), in process on the session's
local Ray: both ranks end at the same report, each with its ZeRO shards in that step's checkpoint.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.io.store import ObservationStore
from orchestrator.io.tracking import read_sweep_runs
from tests.integration.conftest import shared_ray_address
from tests.integration.test_graceful_stop import _env, _reported, _stop_mid_run

# Not `serial`: it signals only its own controller, once the store shows trials past their first
# reports (an event, not a time window), so other tests beside it only slow it down.
pytestmark = pytest.mark.integration

STEPS = list(range(2, 65, 2))  # 64 steps of 8192 tokens, a report every 2
SPEC = {
    "name": "checkpoint-on-stop",
    "model": {"n_params": [20000, 50000]},
    "tokens": {"values": [524288]},
    "learning_rates": [0.03],
    "batch_sizes": [8192],
    "trainer": {"backend": "simulated", "world": "tiny"},
    "eval": {"every": 2},
    "checkpoints": {"every": 1000},  # no periodic checkpoint before the end: only the stop saves one
    "fit": {"bootstrap": 0},
    "resources": {"max_concurrent": 2},
}


def test_stopped_trials_checkpoint_and_resume_from_there(tmp_path, local_ray):
    sweep_dir = tmp_path / "sweep"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(dict(SPEC, output_dir=str(sweep_dir))))

    def sigterm(proc):  # to the controller only, as `scalesweep stop` and `kill` send it
        os.kill(proc.pid, signal.SIGTERM)

    # both commands on the session's shared Ray instance (conftest.py): no local cluster of their own
    address = shared_ray_address(local_ray)
    code, out = _stop_mid_run(["run", str(spec_path)], sweep_dir, sigterm, tmp_path / "run.log", 0, address=address)
    assert code == 143, out[-3000:]
    assert "Traceback" not in out, out[-5000:]
    store = ObservationStore(sweep_dir)
    trials = store.trials()
    stopped = {t for t, r in trials.items() if r["status"] == "stopped-by-user"}
    assert stopped, trials
    at_stop = {}
    for tid in stopped:
        steps = [int(row["step"]) for row in store.observations(tid).to_pylist()]
        assert steps and steps == STEPS[:len(steps)] and steps[-1] < 64, (tid, steps)
        ckpt = json.loads((sweep_dir / "checkpoints" / tid / "simulated.json").read_text())
        assert ckpt["step"] == steps[-1], (tid, ckpt, steps)  # saved at the stop, at the last recorded step
        at_stop[tid] = steps[-1]

    address = shared_ray_address(local_ray)  # once the stopped run's trials have left its CPUs
    r = subprocess.run([sys.executable, "-m", "orchestrator.app.cli", "resume", str(sweep_dir), "--no-progress"],
                       capture_output=True, text=True, env=_env(delay="0", address=address),  # nothing left to stop
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    store = ObservationStore(sweep_dir)
    trials = store.trials()
    assert len(trials) == 2 and all(t["status"] == "finished" for t in trials.values()), trials
    for tid in trials:
        assert [int(row["step"]) for row in store.observations(tid).to_pylist()] == STEPS, tid

    uri = f"sqlite:///{sweep_dir / 'mlflow.db'}"
    parent, children = read_sweep_runs(uri, SPEC["name"], SPEC["name"])  # one experiment per sweep, named after it
    assert parent.info.status == "FINISHED"
    client = MlflowClient(uri)
    for child in children:
        tid = child.data.tags["scalesweep.trial_id"]
        counts = Counter(int(m.step) for m in client.get_metric_history(child.info.run_id, "eval_loss"))
        # each step logged once: the resumed trial did not train (and report) from step 0 again
        assert sorted(counts) == STEPS and set(counts.values()) == {1}, (tid, at_stop.get(tid), counts)


def test_deepspeed_trial_checkpoints_on_stop_and_resumes_there(tmp_path):
    """The built-in DeepSpeed trainer on CPU: StopRequested from its reporter after the step-10
    report (checkpoints.every past the end) leaves a `step10` checkpoint; run again, it continues
    at step 11 and reports 20 and 30 only, its counters carried over."""
    from trainers.contract import Schedule, StopRequested, TrialConfig
    from trainers.deepspeed_trainer import train

    ckpt = tmp_path / "ckpt"
    cfg = TrialConfig(trial_id="t", n_params=20_000, tokens=30 * 2048, lr=3e-3, batch_tokens=2048, seq_len=64,
                      schedule=Schedule(kind="cosine", warmup=0.1), eval_every=10, eval_tokens=2048, zero_stage=1,
                      data_cache=str(tmp_path / "corpus"), micro_batch=16, checkpoint_dir=str(ckpt),
                      checkpoint_every=1000)
    first = []

    def stop_after_first(r):
        first.append(r)
        raise StopRequested("the user stopped the sweep")

    with pytest.raises(StopRequested):
        train(cfg, stop_after_first)
    assert [r["step"] for r in first] == [10]
    assert (ckpt / "latest").read_text().strip() == "step10"

    rest = []
    summary = train(cfg, rest.append)
    assert [r["step"] for r in rest] == [20, 30] and summary.steps == 30
    assert rest[-1]["tokens"] == 30 * 2048 and rest[-1]["flops"] == pytest.approx(first[0]["flops"] * 3)
    assert rest[0]["step_time_s"] > first[0]["step_time_s"]  # training time carried over from the checkpoint
    assert rest[-1]["eval_loss"] < first[0]["eval_loss"]


TWO_WORKERS = {
    "name": "checkpoint-on-stop-2w",
    "model": {"n_params": [20000], "seq_len": 64},
    "tokens": {"values": [24 * 2048]},  # 24 steps of 2048 tokens, a report every 4
    "learning_rates": [3e-3],
    "batch_sizes": [2048],
    "eval": {"every": 4, "tokens": 2048},
    "resources": {"workers": 2, "zero_stage": 2},
    "checkpoints": {"every": 1000},  # no periodic checkpoint before the end: only the stop saves one
    "fit": {"bootstrap": 0},
}


def test_two_worker_deepspeed_trial_checkpoints_on_stop_and_resumes_there(tmp_path, local_ray, monkeypatch):
    """A 2-worker ZeRO-2 trial stopped after its first stored report: every rank saves its shards at
    the same step, the last one the store holds (it acknowledged the report before rank 0 went on);
    the trial is stopped-by-user; resumed, it continues after that step: one row per (trial, step),
    the steps up to the checkpoint reported once."""
    from typer.testing import CliRunner

    from orchestrator.app import stopping
    from orchestrator.app.cli import get_app

    local_ray(2)
    sweep_dir = tmp_path / "sweep"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(dict(TWO_WORKERS, output_dir=str(sweep_dir))))
    runner, app = CliRunner(), get_app()

    def stop_after_a_report():  # what SIGTERM's handler does (`scalesweep stop`: test_graceful_stop.py)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (stopping._ACTIVE and _reported(sweep_dir) >= 1):
            time.sleep(0.05)
        if stopping._ACTIVE is not None:
            stopping._ACTIVE.request("SIGTERM")

    monkeypatch.setenv("SCALESWEEP_REPORT_DELAY_S", "0.5")  # the sweep lasts beyond the stop
    stopper = threading.Thread(target=stop_after_a_report, daemon=True)
    stopper.start()
    run = runner.invoke(app, ["run", str(spec_path), "--no-progress"])
    stopper.join()
    assert run.exit_code == 143, run.output[-3000:]
    assert "interrupted after 0 of 1 trials" in run.output and "Traceback" not in run.output, run.output[-3000:]
    store = ObservationStore(sweep_dir)
    ((tid, rec),) = store.trials().items()
    assert rec["status"] == "stopped-by-user" and rec["config"]["workers"] == 2, rec
    steps = [int(r["step"]) for r in store.observations(tid).to_pylist()]
    assert steps and steps == list(range(4, 4 * len(steps) + 1, 4)) and steps[-1] < 24, steps
    ckpt = sweep_dir / "checkpoints" / tid
    assert (ckpt / "latest").read_text().strip() == f"step{steps[-1]}"  # at the last stored step
    shards = sorted(p.name for p in (ckpt / f"step{steps[-1]}").glob("*zero_pp_rank_*optim_states.pt"))
    assert [s.split("zero_pp_rank_")[1][0] for s in shards] == ["0", "1"], shards  # every rank's own

    monkeypatch.setenv("SCALESWEEP_REPORT_DELAY_S", "0")
    resumed = runner.invoke(app, ["resume", str(sweep_dir), "--no-progress"])
    assert resumed.exit_code == 0, resumed.output[-3000:]
    store = ObservationStore(sweep_dir)
    assert store.trials()[tid]["status"] == "finished"
    rows = store.observations(tid).to_pylist()
    assert [int(r["step"]) for r in rows] == list(range(4, 25, 4)) and rows[-1]["tokens"] == 24 * 2048
    raw = [r["step"] for part in sorted((sweep_dir / "store" / "observations").glob("part-*.parquet"))
           for r in pq.read_table(part).to_pylist() if r["trial_id"] == tid]
    assert all(raw.count(s) == 1 for s in steps), raw  # continued after the checkpoint, not from step 0
