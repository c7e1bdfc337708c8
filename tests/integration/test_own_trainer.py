"""Your own trainer under a real sweep (issue 14), nothing mocked: a local Ray cluster, real
processes, MLflow on SQLite, the real pruner.

`backend: command` runs examples/own-trainer/train_lm.py (plain PyTorch) once per trial attempt;
`backend: python` calls examples/own-trainer/entry.py:train inside the trial. Each sweep has four
learning rates of one (N, D) cell: 1e-5 is hopeless (the model barely leaves the uniform loss) and
the pruner must stop it, its program signalled and ended; the 3e-3 trial is SIGKILLed (the
training program / the trial process) after a checkpoint and must restart from it, leaving one
row per (trial, step). A program that never reports ends the sweep with exit 2 naming
`trainer.first_report_timeout_s`. Run under `flock /tmp/scalesweep-ray.lock` when other Ray
clusters share the machine.
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.config.trials import plan_grid
from orchestrator.config.spec import parse_spec
from orchestrator.io.store import ObservationStore
from orchestrator.io.tracking import read_sweep_runs

# Not `serial`: it kills only its own trials' processes, its pruner decides inline and its waits are
# for events (a checkpoint file), not for time windows, so other tests beside it only slow it down.
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STEPS, EVERY, CKPT_EVERY = 96, 6, 12
# 0.1 s a step: the peer that starts beside the hopeless trial may start seconds late under load, and
# must report before the hopeless run is past ~80 % (~10 reports of slack)
SLEEP = 0.1
LRS = (1e-5, 1e-3, 3e-3, 1e-2)
KILLED_LR = 3e-3
BASE = {
    "model": {"n_params": [20000], "seq_len": 64},
    "tokens": {"values": [STEPS * 2048]},
    "learning_rates": list(LRS),
    "batch_sizes": [2048],
    "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.2},
    "eval": {"every": EVERY, "tokens": 4096},
    # decided inline: a report is judged before its trial goes on, so the hopeless trial is stopped
    # at the report the rule is sure on (CI lost this stop in the background); its reference is the
    # peer it starts beside, by its latest loss until that peer has a prediction (a late start under load)
    "pruning": {"enabled": True, "background": False},
    "checkpoints": {"every": CKPT_EVERY, "max_failures": 2},
    "fit": {"bootstrap": 0},
}
TRAINERS = {
    "command": {"backend": "command", "command": ["{python}", "examples/own-trainer/train_lm.py", "--config", "{config}"],
                "cwd": str(REPO), "options": {"step_sleep_s": SLEEP}, "grace_period_s": 5},
    "python": {"backend": "python", "entrypoint": "examples/own-trainer/entry.py:train", "cwd": str(REPO),
               "options": {"step_sleep_s": SLEEP}},
}


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.05):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _run(spec_data: dict, root: Path, local_ray):
    from orchestrator.app.session import run_sweep

    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_data))
    spec = parse_spec(spec_data)
    local_ray(2)  # the session's 2-CPU local Ray instance (conftest.py)
    return spec, run_sweep(spec, str(path), show_progress=False)


def _sweep(backend: str, root: Path, local_ray):
    """The 4-lr sweep with the KILLED_LR trial SIGKILLed after its first periodic checkpoint."""
    data = {**BASE, "name": f"own-{backend}", "trainer": TRAINERS[backend], "output_dir": str(root / "sweep")}
    spec = parse_spec(data)
    victim = next(t for t in plan_grid(spec) if t.lr == KILLED_LR)
    ckpt = spec.sweep_dir() / "checkpoints" / victim.trial_id
    # the command backend: the training program; python: the trial process running the function
    pid_file = spec.sweep_dir() / "runs" / victim.trial_id / ("attempt-0/pid" if backend == "command" else "pid")
    killed: dict = {}

    def killer():
        try:
            tag = _wait_for(lambda: (ckpt / "latest").exists() and (ckpt / "latest").read_text().strip(), 600,
                            "the first checkpoint", poll=0.02)
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.update(pid=pid, tag=tag)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            killed["error"] = repr(exc)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    spec, outcome = _run(data, root, local_ray)
    thread.join(timeout=5)
    return spec, outcome, victim, killed


@pytest.fixture(scope="module", params=["command", "python"])
def sweep(request, tmp_path_factory, local_ray):
    return (request.param, *_sweep(request.param, tmp_path_factory.mktemp(f"own-{request.param}"), local_ray))


def _raw_steps(sweep_dir: Path, tid: str) -> list[int]:
    rows = []
    for part in sorted((sweep_dir / "store" / "observations").glob("part-*.parquet")):
        rows.extend(r["step"] for r in pq.read_table(part).to_pylist() if r["trial_id"] == tid)
    return rows


def test_the_pruner_stops_the_hopeless_lr_and_its_program_ends(sweep):
    backend, spec, outcome, victim, killed = sweep
    store = ObservationStore(outcome.sweep_dir)
    trials = store.trials()
    by_lr = {rec["config"]["lr"]: (tid, rec) for tid, rec in trials.items()}
    assert set(by_lr) == set(LRS) and len(trials) == 4
    last = store.last_reports()
    tid, rec = by_lr[1e-5]
    assert rec["status"] == "stopped", rec
    assert rec["summary"]["reason"] and last[tid]["step"] < STEPS
    assert {r["status"] for _, r in by_lr.values()} <= {"finished", "stopped"}
    assert sum(r["status"] == "finished" for _, r in by_lr.values()) >= 2
    if backend == "command":
        # the program got SIGTERM, stopped after its step (train_lm.py exits 0 then) and is gone
        attempt = sorted((outcome.sweep_dir / "runs" / tid).glob("attempt-*"))[-1]
        info = _wait_for(lambda: (attempt / "exit.json").exists() and json.loads((attempt / "exit.json").read_text()),
                         30, "the stopped program's exit record")
        assert info["ended"] == "stopped", info
        own = [json.loads(line) for line in (attempt / "metrics.jsonl").read_text().splitlines() if line.strip()]
        if own and own[-1].get("done"):
            # the program ran ahead of the forwarded reports and wrote its last step before the
            # stop reached it: the SIGTERM found it ending, and an exiting interpreter has put
            # SIGTERM's default back (then -15), or it was gone before (0)
            assert info["returncode"] in (0, -signal.SIGTERM), info
        else:
            assert info["returncode"] == 0, info  # stopped after its step, as train_lm.py does on SIGTERM
            assert "stopped at step" in (attempt / "stderr.log").read_text()
        # the true exit, not "still ending"
        want = "exit status 0" if info["returncode"] == 0 else "killed by SIGTERM"
        assert rec["summary"]["process"]["status"] == want, rec
        with pytest.raises(ProcessLookupError):
            os.kill(info["pid"], 0)
        finished = next(t for t, r in by_lr.values() if r["status"] == "finished")
        assert trials[finished]["summary"]["process"]["status"] == "exit status 0"


def test_a_killed_trial_restarts_from_its_checkpoint_with_one_row_per_step(sweep):
    backend, spec, outcome, victim, killed = sweep
    assert "error" not in killed, killed
    store = ObservationStore(outcome.sweep_dir)
    tid = victim.trial_id
    rec = store.trials()[tid]
    assert rec["status"] == "finished", rec
    assert rec["summary"]["restarts"] == 1
    expected = list(range(EVERY, STEPS + 1, EVERY))
    assert [r["step"] for r in store.observations(tid).to_pylist()] == expected  # one row per (trial, step)
    ckpt_step = int(killed["tag"].removeprefix("step"))
    raw = _raw_steps(outcome.sweep_dir, tid)
    # resumed, not restarted from scratch: steps up to the checkpoint were reported once
    assert all(raw.count(s) == 1 for s in expected if s <= ckpt_step), (ckpt_step, raw)
    assert sorted(set(raw)) == expected
    if backend == "command":
        second = json.loads((outcome.sweep_dir / "runs" / tid / "attempt-1" / "config.json").read_text())
        assert second["resume"] is True and second["attempt"] == 1
        first = json.loads((outcome.sweep_dir / "runs" / tid / "attempt-0" / "exit.json").read_text())
        assert first["returncode"] == -signal.SIGKILL
        assert f"resumed from {outcome.sweep_dir / 'checkpoints' / tid / killed['tag']}" in \
            (outcome.sweep_dir / "runs" / tid / "attempt-1" / "stderr.log").read_text()
    final = store.last_reports()[tid]
    assert math.isfinite(final["eval_loss"]) and final["eval_loss"] < math.log(256) - 1.0  # it learned


def test_every_report_and_the_trainers_own_metrics_reach_mlflow(sweep):
    backend, spec, outcome, victim, killed = sweep
    store = ObservationStore(outcome.sweep_dir)
    _, children = read_sweep_runs(spec.tracking_uri(), spec.name, spec.tracking.experiment)
    client = MlflowClient(spec.tracking_uri())
    runs = {c.data.tags["scalesweep.trial_id"]: c for c in children}
    assert set(runs) == set(store.trials())
    run = runs[victim.trial_id]
    steps = [r["step"] for r in store.observations(victim.trial_id).to_pylist()]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")) == steps
    grad = client.get_metric_history(run.info.run_id, "grad_norm")  # an extra metric of train_lm.py
    assert sorted(m.step for m in grad) == steps and all(m.value > 0 for m in grad)
    # the trainer's options are the spec's: a param of the sweep's run (a trial logs its own config only)
    parent, _ = read_sweep_runs(spec.tracking_uri(), spec.name, spec.tracking.experiment)
    assert parent.data.params["trainer.options.step_sleep_s"] == str(SLEEP)


def test_a_trainer_that_never_reports_ends_the_sweep_with_exit_2(tmp_path, local_ray):
    from orchestrator.app.cli import get_app

    data = {**BASE, "name": "silent", "learning_rates": [1e-3], "pruning": {"enabled": False},
            "trainer": {"backend": "command", "command": ["{python}", "-c", "import time; time.sleep(600)"],
                        "first_report_timeout_s": 3, "grace_period_s": 1},
            "output_dir": str(tmp_path / "sweep")}
    path = tmp_path / "silent.yaml"
    path.write_text(yaml.safe_dump(data))
    local_ray(2)
    t0 = time.monotonic()
    res = CliRunner().invoke(get_app(), ["run", str(path), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "trainer.first_report_timeout_s" in res.output and "3 s" in res.output
    assert time.monotonic() - t0 < 120  # not 3 attempts x 600 s: the first timeout ended the sweep
    (tid, rec), = ObservationStore(tmp_path / "sweep").trials().items()
    assert "first_report_timeout_s" in json.dumps(rec["summary"])


def test_wsd_branches_restore_the_scripts_own_trunk_checkpoints(tmp_path, local_ray):
    """One trunk (48 steps) and two cooldown branches (12, 24 steps) through the command backend."""
    data = {**BASE, "name": "own-branch", "learning_rates": [3e-3], "pruning": {"enabled": False},
            "tokens": {"values": [12 * 2048, 24 * 2048, 48 * 2048]},
            "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.2, "branch": True},
            "checkpoints": {"every": 1000},  # the branch points and the end only
            "trainer": {**TRAINERS["command"], "options": {}}, "output_dir": str(tmp_path / "sweep")}
    from orchestrator.io.store import final_points

    spec, outcome = _run(data, tmp_path, local_ray)
    store = ObservationStore(outcome.sweep_dir)
    assert {r["status"] for r in store.trials().values()} == {"finished"}
    points = sorted(final_points(store), key=lambda p: p["D"])
    trunk = points[-1]
    assert trunk["branch_of"] is None and len(trunk["checkpoint_steps"]) == 2
    for p, steps in zip(points[:2], (12, 24)):
        assert p["branch_of"] == trunk["trial_id"] and p["branch_step"] == steps - round(0.2 * steps)
        rows = store.observations(p["trial_id"]).to_pylist()
        assert min(r["step"] for r in rows) > p["branch_step"] and rows[-1]["step"] == steps  # its decay only
        assert p["flops_spent"] < 0.25 * 6 * p["N"] * p["D"]  # the trunk's share is not counted again
        log = (outcome.sweep_dir / "runs" / p["trial_id"] / "attempt-0" / "stderr.log").read_text()
        assert f"resumed from {outcome.sweep_dir / 'checkpoints' / trunk['trial_id']}/step{p['branch_step']}" in log
    assert points[0]["loss"] > points[1]["loss"] > points[2]["loss"]  # real continuations of a learning trunk


@pytest.mark.parametrize("backend", ["command", "python"])
def test_a_two_worker_trial(backend, tmp_path, local_ray):
    """command: two processes launched torchrun-style by the trial; python: the function on two Ray Train workers."""
    data = {**BASE, "name": f"own-2w-{backend}", "learning_rates": [3e-3], "pruning": {"enabled": False},
            "tokens": {"values": [24 * 2048]}, "resources": {"workers": 2},
            "trainer": {**TRAINERS[backend], "options": {}}, "output_dir": str(tmp_path / "sweep")}
    spec, outcome = _run(data, tmp_path, local_ray)
    store = ObservationStore(outcome.sweep_dir)
    (tid, rec), = store.trials().items()
    assert rec["status"] == "finished" and rec["config"]["workers"] == 2, rec
    rows = store.observations(tid).to_pylist()
    assert [r["step"] for r in rows] == list(range(EVERY, 25, EVERY))
    assert rows[-1]["eval_loss"] < math.log(256) - 1.0
    _, children = read_sweep_runs(spec.tracking_uri(), spec.name, spec.tracking.experiment)
    world = MlflowClient(spec.tracking_uri()).get_metric_history(children[0].info.run_id, "world_size")
    assert {m.value for m in world} == {2.0}  # the script's own count of its data-parallel ranks
    run_dir = outcome.sweep_dir / "runs" / tid
    if backend == "command":
        assert "rank 1 of 2" in (run_dir / "attempt-0" / "stderr-rank1.log").read_text()
        assert rec["summary"]["process"]["status"] == "exit status 0"
    else:
        assert (run_dir / "pid").read_text() != (run_dir / "pid-rank1").read_text()  # two worker processes
