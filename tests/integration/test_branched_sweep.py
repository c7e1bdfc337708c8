"""WSD branching inside the transfer search, through a real sweep (issue 13): the local Ray cluster,
Tune, the store, MLflow, and a trainer that writes and restores checkpoint files.

The simulated trainer keeps the real trainer's branch contract on disk (`trainers/simulated.py`): a
trunk writes its state at each branch point to `checkpoints/<trunk>/step<k>/` before it reports past
it, and a branch starts by reading that file (`branch_from`), failing when it is missing; it records
what it restored (`restored.json`). The DeepSpeed trainer's restore of the same fields is tested on
real model state in `test_deepspeed_trainer.py`; a transfer search runs ~40 trials, too many for
DeepSpeed in a quick test.

The spec: 4 sizes × 3 budgets, the initial design on the 2 smallest sizes (no law checks), a loss
noise of 2 % so that the fitted bowl admits branching across the budgets of one size (the search
then starts ~3 of its 5 later cells from a finished run's checkpoint: cooldown branches and
extensions).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.core.planning.branching import decay_steps
from orchestrator.app.query import status
from orchestrator.config.spec import load_spec
from orchestrator.io.store import ObservationStore, final_points
from orchestrator.io.tracking import TAG_BRANCH_STEP, TAG_TRIAL, TAG_TRUNK_RUN, TAG_TRUNK_TRIAL, read_sweep_runs
from tests.integration.conftest import shared_ray_address

# Not `serial`: the SIGTERM goes to its own `scalesweep run` process, sent on an event (the first
# branch restored), not inside a time window.

ROOT = Path(__file__).resolve().parents[2]
SPEC = {
    "name": "branched",
    "model": {"n_params": [14000, 44000, 140000, 440000], "seq_len": 128},
    "tokens": {"per_param": [5, 20, 80]},
    "learning_rates": [0.003, 0.01, 0.03, 0.1],
    "batch_sizes": [1280, 5632],
    "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.2, "branch": True},
    "checkpoints": {"enabled": True, "every": 100000},
    "trainer": {"backend": "simulated", "world": "tiny"},
    "eval": {"every": 1000, "tokens": 2097152},  # a long branch reports several times: a stop lands mid-run
    "budget": {"targets": [3e15]},
    "fit": {"bootstrap": 0},
    "search": {"strategy": "transfer", "init_sizes": 2, "law_checks": 0, "noise": 0.02},
}


def _cli(*args: str, delay: str = "0", address: str | None = None) -> subprocess.Popen:
    """`scalesweep ARGS` in a fresh process; a sweep on the Ray instance at `address`, else on a local
    one of its own."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if address:
        env["RAY_ADDRESS"] = address
    env.update(SCALESWEEP_REPORT_DELAY_S=delay, PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "orchestrator.app.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a process _cli started; killed (its session) if it overruns."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, local_ray):
    """`scalesweep run` (a real process, on the session's shared local Ray instance), stopped as `scalesweep stop` stops
    it (SIGTERM to the controller) once the first WSD branch has restored its trunk's checkpoint, then
    `scalesweep resume`: (spec, sweep dir, the store's trials when it stopped, the resume's output, the
    branch that had started)."""
    root = tmp_path_factory.mktemp("branched")
    sweep_dir = root / "sweep"
    (root / "spec.yaml").write_text(yaml.safe_dump({**SPEC, "output_dir": str(sweep_dir)}))
    # reports 0.3 s apart: the stop lands while the first branch runs and the search has more to start
    proc = _cli("run", str(root / "spec.yaml"), "--no-progress", delay="0.3", address=shared_ray_address(local_ray))
    t0 = time.monotonic()
    while not (restored := list(sweep_dir.glob("checkpoints/*/restored.json"))):
        assert proc.poll() is None, f"ended before any branch started:\n{proc.communicate()[1][-3000:]}"
        assert time.monotonic() - t0 < 240, "no branch started"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    code, _, err = _finish(proc)
    assert code == 143 and "interrupted after" in err and "Traceback" not in err, err[-3000:]
    before = ObservationStore(sweep_dir).trials()
    code, out, err = _finish(_cli("resume", str(sweep_dir), "--no-progress", address=shared_ray_address(local_ray)))
    assert code == 0 and "Traceback" not in err, (out + err)[-3000:]
    return load_spec(sweep_dir / "spec.yaml"), sweep_dir, before, out, restored[0].parent.name


def _branches(store) -> dict[str, dict]:
    return {tid: rec for tid, rec in store.trials().items() if rec["config"].get("branch_of")}


def check_branches_restored_their_trunks(sweep_dir, store) -> dict[str, dict]:
    """Every branch ran from its trunk's checkpoint file at its branch point, and only after it."""
    trials, branches = store.trials(), _branches(store)
    assert branches, "the search started no run from a checkpoint"
    spent = {r["trial_id"]: r["flops_spent"] for r in status(sweep_dir)["trials"]}
    for tid, rec in branches.items():
        c = rec["config"]
        trunk, step = c["branch_of"], c["branch_step"]
        assert rec["status"] == "finished" and trials[trunk]["status"] == "finished"
        assert step in trials[trunk]["config"]["checkpoint_steps"]  # the trunk was asked to save it ...
        point = sweep_dir / "checkpoints" / trunk / f"step{step}"
        saved = json.loads((point / "state.json").read_text())  # ... and did
        assert saved["step"] == step and saved["trial_id"] == trunk
        restored = json.loads((sweep_dir / "checkpoints" / tid / "restored.json").read_text())
        assert restored == {"from": str(point), **saved}  # the branch read that file
        rows = store.observations(tid).to_pylist()
        assert rows and min(r["step"] for r in rows) > step  # not from step 0: its trunk trained those
        T = c["D"] // c["batch"]
        assert max(r["step"] for r in rows) == T
        # FLOPs counted from the branch point: its planned and spent FLOPs are its own steps'
        assert c["flops"] + c["branch_flops"] == pytest.approx(6.0 * c["N"] * T * c["batch"], rel=1e-9)
        assert c["branch_flops"] == pytest.approx(6.0 * c["N"] * step * c["batch"], rel=1e-9)
        # ... and the store's spent FLOPs are the last report's less the trunk's share (`branching.spent_flops`):
        # the plan's own, exactly (the trainer and the plan count the realised model's FLOPs)
        last = max(rows, key=lambda r: r["step"])["flops"]
        assert spent[tid] == pytest.approx(last - c["branch_flops"], rel=1e-9)
        assert spent[tid] == pytest.approx(c["flops"], rel=1e-9)
    return branches


def check_one_row_per_trial_step(store) -> None:
    rows = store.observations().to_pylist()
    keys = [(r["trial_id"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)), "a (trial, step) is stored twice"


def check_lineage_in_mlflow(spec, branches) -> None:
    _, children = read_sweep_runs(spec.tracking_uri(), spec.name)
    runs = {c.data.tags[TAG_TRIAL]: c for c in children}
    for tid, rec in branches.items():
        tags, trunk = runs[tid].data.tags, rec["config"]["branch_of"]
        assert tags[TAG_TRUNK_TRIAL] == trunk and tags[TAG_TRUNK_RUN] == runs[trunk].info.run_id
        assert int(tags[TAG_BRANCH_STEP]) == rec["config"]["branch_step"]


def _decay_start(c: dict) -> int:
    T = c["D"] // c["batch"]
    return T - decay_steps(T, round(c["warmup"] * T), SPEC["schedule"]["decay"])


def test_branches_restore_their_trunks_checkpoint_at_the_branch_point(sweep):
    sweep_dir = sweep[1]
    store = ObservationStore(sweep_dir)
    trials = store.trials()
    branches = check_branches_restored_their_trunks(sweep_dir, store)
    for rec in branches.values():  # the latest step both schedules share: a cooldown branch restores the
        c, trunk = rec["config"], trials[rec["config"]["branch_of"]]["config"]  # longer run at its own decay
        if trunk["D"] > c["D"]:  # start; an extension the shorter run at that run's decay start
            assert c["branch_step"] == _decay_start(c)
        else:
            assert c["branch_step"] == _decay_start(trunk)
        assert round(c["warmup"] * (c["D"] // c["batch"])) == round(trunk["warmup"] * (trunk["D"] // trunk["batch"]))


def test_one_row_per_trial_and_step_and_lineage_in_store_and_mlflow(sweep):
    spec, sweep_dir = sweep[:2]
    store = ObservationStore(sweep_dir)
    check_one_row_per_trial_step(store)
    check_lineage_in_mlflow(spec, _branches(store))


def test_the_search_reports_what_branching_saved(sweep):
    spec, sweep_dir = sweep[:2]
    store = ObservationStore(sweep_dir)
    parent, _ = read_sweep_runs(spec.tracking_uri(), spec.name)
    folder = MlflowClient(spec.tracking_uri()).download_artifacts(parent.info.run_id, "results")
    stop = json.loads(open(f"{folder}/decisions.json").read())[-1]
    branches = _branches(store)
    assert stop["action"] == "stop" and stop["wsd_branching"]["from_checkpoint"] == len(branches)
    assert stop["wsd_branching"]["saved_flops"] == pytest.approx(
        sum(r["config"]["branch_flops"] for r in branches.values()), rel=1e-9)


def test_scalesweep_status_accounts_compute_as_the_store_does(sweep):
    # `scalesweep status` (its own process, as a user runs it) counts each branch from its branch point,
    # as the store's final points do, and every trial's spent FLOPs are its planned ones exactly.
    sweep_dir = sweep[1]
    store = ObservationStore(sweep_dir)
    code, out, err = _finish(_cli("status", str(sweep_dir), "--json"), timeout=120)
    assert code == 0 and "Traceback" not in err, (out + err)[-3000:]
    doc = json.loads(out)
    points = {p["trial_id"]: p for p in final_points(store)}
    rows = {r["trial_id"]: r for r in doc["trials"]}
    assert set(rows) == set(points) == set(store.trials()) and any(r["branch_of"] for r in rows.values())
    for tid, r in rows.items():
        assert r["flops_spent"] == pytest.approx(points[tid]["flops_spent"], rel=1e-12), tid
        assert r["flops_spent"] == pytest.approx(r["planned_flops"], rel=1e-9), tid
    assert doc["flops_spent"] == pytest.approx(sum(p["flops_spent"] for p in points.values()), rel=1e-12)
    code, out, err = _finish(_cli("status", str(sweep_dir)), timeout=120)
    assert code == 0 and "a WSD branch counts from its branch point" in out, (out + err)[-3000:]


def test_the_resume_finishes_the_branched_sweep_without_rerunning_what_finished(sweep):
    sweep_dir, before = sweep[1:3]
    store = ObservationStore(sweep_dir)
    trials = store.trials()
    assert all(rec["status"] == "finished" for rec in trials.values()), trials
    finished = {tid for tid, rec in before.items() if rec["status"] == "finished"}
    assert finished and set(trials) > finished  # it stopped mid-way; the resume ran the rest
    for tid in finished:  # no new event: never started again
        assert trials[tid]["time"] == before[tid]["time"], tid
    branches = _branches(store)
    later = [tid for tid in branches if tid not in finished]
    assert later, "every branch had finished before the stop: the resume started none"
    # the branches the resume ran restored trunk checkpoints the stopped run had written
    assert any(trials[branches[tid]["config"]["branch_of"]]["status"] == "finished"
               and branches[tid]["config"]["branch_of"] in finished for tid in later)


def test_propose_on_the_stored_branched_sweep_equals_the_sweeps_fit(sweep):
    """`scalesweep propose` (a fresh process: it replays the search from the store) proposes what the
    resumed sweep wrote to fit.json, with the search's correction of its branches' losses."""
    from orchestrator.app import query
    from orchestrator.core.proposals import fit_and_propose

    spec, sweep_dir = sweep[:2]
    target = SPEC["budget"]["targets"][0]
    code, out, err = _finish(_cli("propose", str(sweep_dir), "--budget", str(target), "--json"), timeout=120)
    assert code == 0, err[-3000:]
    fitted = json.loads((sweep_dir / "fit.json").read_text())
    (got,), (want,) = json.loads(out), fitted["proposals"]
    _same_proposal(got, want)
    n = len(_branches(ObservationStore(sweep_dir)))
    assert any(w.startswith(f"{n} WSD branch loss(es) corrected") for w in fitted["warnings"]), fitted["warnings"]
    # the same query in this process says so too, and without the correction it would propose otherwise
    data = query.SweepData.read(ObservationStore(sweep_dir))
    fresh = query.propose(data, spec, [target])
    assert any(w.startswith(f"{n} WSD branch loss(es) corrected") for w in fresh.warnings), fresh.warnings
    rule = query.search_replay(data, spec).advice.predict
    raw = fit_and_propose(data.points, [target], **query.fit_settings(spec, None), hparams=rule,
                          corrected_loss=lambda p: float(p["loss"]))
    _same_proposal(fresh.proposals[0], want)
    assert abs(raw.proposals[0]["N"] / want["N"] - 1) > 1e-4 or \
        abs(raw.proposals[0]["predicted_loss"] / want["predicted_loss"] - 1) > 1e-4


def _same_proposal(got: dict, want: dict) -> None:
    """Two proposals agree: the same shape and source, numbers to 1e-6 (the fits are refitted: another
    process, the same points, the optimiser's last digits may differ)."""
    assert (got["budget"], got["shape"], got["hparams_from"]) == (want["budget"], want["shape"], want["hparams_from"])
    for key in ("N", "D", "lr", "batch", "predicted_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-6), key
    for name, iv in want["intervals"].items():
        assert got["intervals"][name]["low"] == pytest.approx(iv["low"], rel=1e-6), name
        assert got["intervals"][name]["high"] == pytest.approx(iv["high"], rel=1e-6), name


def test_trials_stopped_mid_run_continue_from_their_own_checkpoints(sweep):
    """The trials running at the stop (the first branch among them, unless it had no report left) saved a
    checkpoint of their own at their last report; the resume continued each from there: a branch not
    from its trunk's checkpoint again, no trial from step 0, no step twice."""
    sweep_dir, before = sweep[1], sweep[2]
    stopped = [tid for tid, rec in before.items() if rec["status"] == "stopped-by-user"]
    assert stopped, "the stop ended no trial mid-run"
    store = ObservationStore(sweep_dir)
    every = SPEC["eval"]["every"]
    for tid in stopped:
        rec = store.trials()[tid]
        c = rec["config"]
        assert rec["status"] == "finished"
        T = c["D"] // c["batch"]
        steps = [r["step"] for r in store.observations(tid).to_pylist()]
        assert steps == [s for s in [*range(every, T, every), T] if s > c["branch_step"]]  # each report once
        folder = sweep_dir / "checkpoints" / tid
        assert json.loads((folder / "simulated.json").read_text()) == {"step": T}
        if c["branch_of"]:  # restored once, before the stop: the resume continued its own checkpoint
            assert (folder / "restored.json").stat().st_mtime <= before[tid]["time"]
