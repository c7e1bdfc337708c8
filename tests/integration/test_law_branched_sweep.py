"""WSD branching inside the law search (`search.strategy: law` + `schedule.branch`), through a real
sweep (issue 13): the controller, Ray Tune on the session's shared local Ray instance, the store,
MLflow, and the simulated trainer, which keeps the real trainer's branch contract on disk (a trunk
writes `checkpoints/<trunk>/step<k>/state.json` at its `checkpoint_steps`; a branch reads its
`branch_from` file, failing when it is missing, and records it in `restored.json`).

A lattice point starts from a finished **exact twin** (same N, lr, batch, seed; another budget of its
size) as a cooldown branch or an extension (`Branches.plan_point`); the planner and the benchmark's
replay are tested in `tests/unit/core/planning/test_law_branching.py`. Here the sweep is stopped as
`scalesweep stop` stops it (SIGTERM to the controller, this process) once the first branch has
restored its twin's checkpoint, and resumed (`scalesweep resume` runs the same `run_sweep`), so the
resumed law planner's re-planning of the replayed runs (their checkpoints registered) runs for real.
The world is as small as a law search allows: 3 sizes × 2 budgets × 3 learning rates, one batch
(~14 trials, about half of them extensions of their shorter twin).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.app import replay_cache
from orchestrator.app.query import status
from orchestrator.app.session import run_sweep
from orchestrator.app.stopping import SweepInterrupted
from orchestrator.config.planners import make_planner
from orchestrator.config.spec import load_spec
from orchestrator.config.trials import PlannedTrial, trial_config
from orchestrator.io.store import ObservationStore, ended_trials
from orchestrator.io.tracking import read_sweep_runs
from trainers.simulated import train

ROOT = Path(__file__).resolve().parents[2]
SPEC = {
    "name": "law-branched",
    "model": {"n_params": [14000, 44000, 140000], "seq_len": 128},
    "tokens": {"per_param": [5, 20]},
    "learning_rates": [0.003, 0.01, 0.03],
    "batch_sizes": [1280],
    "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.2, "branch": True},
    "checkpoints": {"enabled": True, "every": 100000},
    "trainer": {"backend": "simulated", "world": "tiny"},
    "eval": {"every": 100, "tokens": 2097152},  # a longer run reports several times: its curve is stored
    "budget": {"targets": [3e15]},
    "fit": {"bootstrap": 0},
    "search": {"strategy": "law", "init_sizes": 2, "bootstrap": 20},
}


def _stop_at_first_restore(sweep_dir: Path, done: threading.Event) -> None:
    """SIGTERM to this process (what `scalesweep stop` sends the controller) once a branch restored its twin."""
    while not done.is_set():
        if any(sweep_dir.glob("checkpoints/*/restored.json")):
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, local_ray):
    """`run_sweep` (what `scalesweep run` runs) on the shared 2-CPU Ray instance, stopped by SIGTERM after the
    first branch restored its twin's checkpoint, then run again on the recorded spec (`scalesweep resume`):
    {spec, dir, before: the store's trials at the stop, restored: the branch that had started, outcome}."""
    root = tmp_path_factory.mktemp("law-branched")
    sweep_dir = root / "sweep"
    (root / "spec.yaml").write_text(yaml.safe_dump({**SPEC, "output_dir": str(sweep_dir)}))
    local_ray(2)
    done = threading.Event()
    # the sweep installs its own handler and puts this one back: a SIGTERM sent after the sweep ended is a no-op
    old = signal.signal(signal.SIGTERM, lambda *_: None)
    os.environ["SCALESWEEP_REPORT_DELAY_S"] = "0.3"  # the stop lands while the first branch runs
    watcher = threading.Thread(target=_stop_at_first_restore, args=(sweep_dir, done), daemon=True)
    watcher.start()
    try:
        with pytest.raises(SweepInterrupted):
            run_sweep(load_spec(root / "spec.yaml"), str(root / "spec.yaml"), show_progress=False)
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGTERM, old)
        del os.environ["SCALESWEEP_REPORT_DELAY_S"]
    before = ObservationStore(sweep_dir).trials()
    restored = next(sweep_dir.glob("checkpoints/*/restored.json")).parent.name
    spec = load_spec(sweep_dir / "spec.yaml")
    local_ray(2)
    outcome = run_sweep(spec, None, show_progress=False)  # `scalesweep resume`
    return {"spec": spec, "dir": sweep_dir, "before": before, "restored": restored, "outcome": outcome}


def _branches(trials: dict) -> dict[str, dict]:
    return {tid: rec for tid, rec in trials.items() if rec["config"].get("branch_of")}


def _replayed(spec, store) -> dict[str, PlannedTrial]:
    """The law planner resumed on the whole store, as `propose` and a resume replay it: its runs by id."""
    planner = make_planner(spec)
    planner.resume(ended_trials(store))
    assert not isinstance(planner.next_trial(), PlannedTrial)  # nothing left to run
    return {t.trial_id: t for t in planner.book.handed}


def test_lattice_points_start_from_their_exact_twins_checkpoint_files(sweep):
    sweep_dir = sweep["dir"]
    store = ObservationStore(sweep_dir)
    trials = store.trials()
    branches = _branches(trials)
    assert sweep["restored"] in branches and len(branches) >= 3, "the law search started few runs from a checkpoint"
    for tid, rec in branches.items():
        c = rec["config"]
        trunk, step = trials[c["branch_of"]], c["branch_step"]
        t = trunk["config"]
        assert rec["status"] == "finished" and trunk["status"] == "finished"
        # an exact twin: the same run up to the checkpoint, at another budget of its size
        assert (t["n_target"], t["lr"], t["batch"], t["seed"]) == (c["n_target"], c["lr"], c["batch"], c["seed"])
        assert t["D"] != c["D"] and step > 0 and step in t["checkpoint_steps"]
        point = sweep_dir / "checkpoints" / c["branch_of"] / f"step{step}"
        saved = json.loads((point / "state.json").read_text())
        assert saved["step"] == step and saved["trial_id"] == c["branch_of"]
        restored = json.loads((sweep_dir / "checkpoints" / tid / "restored.json").read_text())
        assert restored == {"from": str(point), **saved}  # the branch read its twin's file
        steps = [r["step"] for r in store.observations(tid).to_pylist()]
        assert min(steps) > step and max(steps) == c["D"] // c["batch"]  # from the checkpoint to its end


def test_flops_spent_are_planned_and_each_trial_step_is_stored_once(sweep):
    spec, sweep_dir = sweep["spec"], sweep["dir"]
    store = ObservationStore(sweep_dir)
    trials = store.trials()
    rows = store.observations().to_pylist()
    keys = [(r["trial_id"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)), "a (trial, step) is stored twice"
    doc = status(sweep_dir)
    spent = {r["trial_id"]: r["flops_spent"] for r in doc["trials"]}
    assert set(spent) == set(trials)
    for tid, rec in trials.items():
        c = rec["config"]
        assert spent[tid] == pytest.approx(c["flops"], rel=1e-9), tid  # trainer and plan count the same steps
        last = max((r for r in rows if r["trial_id"] == tid), key=lambda r: r["step"])["flops"]
        assert spent[tid] == pytest.approx(last - c["branch_flops"], rel=1e-9), tid  # a branch's from its checkpoint
        if c["branch_of"]:
            assert 0 < c["branch_flops"] < last
    assert doc["flops_spent"] == pytest.approx(sum(rec["config"]["flops"] for rec in trials.values()), rel=1e-9)
    # the search's own account of what branching saved (the resumed run's stop decision)
    parent, _ = read_sweep_runs(spec.tracking_uri(), spec.name)
    folder = MlflowClient(spec.tracking_uri()).download_artifacts(parent.info.run_id, "results")
    stop = json.loads(Path(folder, "decisions.json").read_text())[-1]
    branches = _branches(trials)
    assert stop["action"] == "stop" and stop["wsd_branching"]["from_checkpoint"] == len(branches)
    assert stop["wsd_branching"]["saved_flops"] == pytest.approx(
        sum(r["config"]["branch_flops"] for r in branches.values()), rel=1e-9)


def test_branches_continue_their_twins_curve(sweep):
    """A branch's stored curve is the tail of one run whose head its twin stored: the twin's reports up to
    the branch point are (within the per-run noise) those of the branch's own schedule run from step 0,
    the same lr at every step, and the branch's reports after it are exactly that run's."""
    spec, sweep_dir = sweep["spec"], sweep["dir"]
    store = ObservationStore(sweep_dir)
    planned = _replayed(spec, store)
    checked = 0
    for tid, rec in _branches(store.trials()).items():
        step, twin = rec["config"]["branch_step"], rec["config"]["branch_of"]
        whole = []
        cfg = trial_config(spec, planned[tid], None, None)
        train(replace(cfg, branch_step=0, branch_from=None), whole.append)
        whole = {int(r["step"]): r for r in whole}
        head = [r for r in store.observations(twin).to_pylist() if r["step"] <= step]
        tail = store.observations(tid).to_pylist()
        for r in head:
            assert r["lr"] == whole[r["step"]]["lr"]
            assert r["eval_loss"] == pytest.approx(whole[r["step"]]["eval_loss"], rel=0.015)
        for r in tail:
            w = whole[r["step"]]
            assert (r["lr"], r["eval_loss"], r["flops"]) == (w["lr"], w["eval_loss"], w["flops"])
        checked += bool(head)
    assert checked, "no twin reported before its branch point"


def test_the_replayed_law_search_plans_the_runs_that_ran(sweep):
    """What `propose` and a resume replay from the store plans each run as the live sweep ran it: the
    same twin, branch step, checkpoints and FLOPs."""
    spec, sweep_dir = sweep["spec"], sweep["dir"]
    store = ObservationStore(sweep_dir)
    planned = _replayed(spec, store)
    trials = store.trials()
    assert set(planned) == set(trials)
    for tid, rec in trials.items():
        c, t = rec["config"], planned[tid]
        assert (t.branch_of or None, t.branch_step, list(t.checkpoint_steps)) == \
            (c["branch_of"] or None, c["branch_step"], list(c["checkpoint_steps"])), tid
        assert t.flops == pytest.approx(c["flops"], rel=1e-12) and t.warmup == pytest.approx(c["warmup"], rel=1e-12)


def test_propose_replays_the_sweeps_fit(sweep):
    """`scalesweep propose` in a fresh process, with no cached search (it replays the law search from the
    store), proposes what the sweep wrote to fit.json; exact twins need no loss correction."""
    sweep_dir = sweep["dir"]
    (sweep_dir / replay_cache.CACHE_FILE).unlink()
    target = SPEC["budget"]["targets"][0]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-m", "orchestrator.app.cli", "propose", str(sweep_dir), "--budget",
                        str(target), "--json"], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert json.loads((sweep_dir / replay_cache.CACHE_FILE).read_text())["source"] == "replay"
    fitted = json.loads((sweep_dir / "fit.json").read_text())
    (got,), (want,) = json.loads(r.stdout), fitted["proposals"]
    assert (got["budget"], got["shape"], got["hparams_from"]) == (want["budget"], want["shape"], want["hparams_from"])
    for key in ("N", "D", "lr", "batch", "predicted_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-6), key
    for name, iv in want["intervals"].items():
        assert (got["intervals"][name]["low"], got["intervals"][name]["high"]) == \
            pytest.approx((iv["low"], iv["high"]), rel=1e-6), name
    assert not any("WSD branch loss(es) corrected" in w for w in fitted["warnings"]), fitted["warnings"]


def test_the_resume_continues_the_stopped_law_sweep(sweep):
    """The resume starts no trial that had ended, continues the trials the stop ended mid-run from their
    own checkpoints (the first branch among them: not from its twin's again), and its branches restore
    checkpoints that exist (some written before the stop)."""
    sweep_dir, before = sweep["dir"], sweep["before"]
    store = ObservationStore(sweep_dir)
    trials = store.trials()
    assert all(rec["status"] == "finished" for rec in trials.values()), trials
    ended = {tid for tid, rec in before.items() if rec["status"] == "finished"}
    assert ended and set(trials) > ended
    for tid in ended:  # no new event: never started again
        assert trials[tid]["time"] == before[tid]["time"], tid
    stopped = [tid for tid, rec in before.items() if rec["status"] == "stopped-by-user"]
    assert sweep["restored"] in stopped or sweep["restored"] in ended
    every = SPEC["eval"]["every"]
    for tid in stopped:
        c = trials[tid]["config"]
        T = c["D"] // c["batch"]
        steps = [r["step"] for r in store.observations(tid).to_pylist()]
        assert steps == [s for s in [*range(every, T, every), T] if s > c["branch_step"]]  # each report once
        folder = sweep_dir / "checkpoints" / tid
        if c["branch_of"]:  # restored once, before the stop
            assert (folder / "restored.json").stat().st_mtime <= before[tid]["time"]
    later = [rec["config"] for tid, rec in _branches(trials).items() if tid not in before]
    assert later and any(c["branch_of"] in ended for c in later)  # from checkpoints the stopped run wrote
