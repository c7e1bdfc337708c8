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
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.io.store import ObservationStore
from orchestrator.io.tracking import read_sweep_runs
from tests.integration.conftest import shared_ray_address
from tests.integration.test_graceful_stop import _env, _stop_mid_run

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
