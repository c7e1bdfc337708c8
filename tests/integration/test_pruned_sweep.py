"""A real DeepSpeed sweep with the pruner and WSD branching (issue: online pruning).

One model size, four learning rates (far too low, two good ones, far too high) and three token
budgets under WSD with `schedule.branch`: each lr trains one trunk to the largest D, and the two
shorter budgets are cooldown branches restored from the trunk's real DeepSpeed checkpoints.
The pruner must stop the far-too-low lr (a prediction with its reason) and the far-too-high one
(diverged), let the good ones run to the end, and the good trunks' branches must give the
L(N, D) fit three (N, D) points each. Nothing is mocked.
"""
from __future__ import annotations

import math
import os

import pytest

from orchestrator.io.store import ObservationStore, final_points
from tests.integration.conftest import run_real_sweep

pytestmark = pytest.mark.integration

STEPS = (40, 80, 160)  # per token budget, at 2,048 tokens a step
SPEC = {
    "name": "pruned",
    "model": {"n_params": [20000], "seq_len": 64},
    "tokens": {"values": [s * 2048 for s in STEPS]},
    "learning_rates": [1e-5, 3e-3, 1e-2, 30.0],
    "batch_sizes": [2048],
    "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.2, "branch": True},
    "eval": {"every": 8, "tokens": 4096},
    "pruning": {"enabled": True},
    "checkpoints": {"every": 1000},  # the branch points and the end only: keeps the test quick
    "budget": {"targets": [1e12]},
    "fit": {"bootstrap": 0},
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, local_ray):
    # The pruner decides off Tune's event loop, so a STOP lands a report or more after the one it
    # answers; a 20k-parameter trunk runs its 160 steps in seconds, and on a loaded machine it
    # could finish before the stop arrived. Reports 0.2 s apart (still far faster than a real
    # trial's) give the pruner the time a real sweep gives it.
    os.environ["SCALESWEEP_REPORT_DELAY_S"] = "0.2"
    try:
        spec, outcome = run_real_sweep(tmp_path_factory.mktemp("pruned"), SPEC, "pruned", local_ray=local_ray)
    finally:
        os.environ.pop("SCALESWEEP_REPORT_DELAY_S", None)
    return spec, outcome, ObservationStore(outcome.sweep_dir)


def _by_lr(store):
    out = {}
    for tid, rec in store.trials().items():
        c = rec["config"]
        out.setdefault(c["lr"], []).append((c, rec))
    return out


def test_bad_learning_rates_are_stopped_with_reasons_and_good_ones_run_to_the_end(sweep):
    spec, outcome, store = sweep
    groups = _by_lr(store)
    last = store.last_reports()
    trunk = {lr: next((c, r) for c, r in members if c["checkpoint_steps"]) for lr, members in groups.items()}

    c, rec = trunk[1e-5]
    assert rec["status"] == "stopped", rec
    reason = rec["summary"]["reason"]
    assert "predicted final" in reason and last[c["trial_id"]]["step"] < 0.8 * STEPS[-1]

    c, rec = trunk[30.0]
    assert rec["status"] == "diverged", rec
    assert rec["summary"]["reason"] and last[c["trial_id"]]["step"] < 0.5 * STEPS[-1]

    for lr in (3e-3, 1e-2):
        for c, rec in groups[lr]:
            assert rec["status"] == "finished", (c["trial_id"], rec)
            assert last[c["trial_id"]]["step"] == c["D"] // c["batch"]


def test_branches_restore_the_trunk_and_give_the_fit_three_points_per_good_lr(sweep):
    spec, outcome, store = sweep
    points = final_points(store)
    for lr in (3e-3, 1e-2):
        mine = sorted((p for p in points if p["lr"] == lr), key=lambda p: p["D"])
        assert [p["D"] for p in mine] == [s * 2048 for s in STEPS]
        trunk = mine[-1]
        assert trunk["branch_of"] is None and len(trunk["checkpoint_steps"]) == 2
        for p, steps in zip(mine[:2], STEPS[:2]):
            # lineage: a branch of this lr's trunk, from the start of its own decay
            assert p["branch_of"] == trunk["trial_id"] and p["branch_step"] == steps - round(0.2 * steps)
            assert p["branch_step"] in trunk["checkpoint_steps"]
            # it trained only its decay: its first report is past the branch point
            rows = [r for r in store.observations().to_pylist() if r["trial_id"] == p["trial_id"]]
            assert min(r["step"] for r in rows) > p["branch_step"]
            assert p["flops_spent"] == pytest.approx(p["flops"], rel=1e-6)  # the decay's FLOPs only
            assert p["flops_spent"] < 0.25 * 6 * p["N"] * p["D"]
            assert math.isfinite(p["loss"])
        # more tokens, lower loss: the branches are real continuations of a learning trunk
        assert mine[0]["loss"] > mine[1]["loss"] > mine[2]["loss"]
    assert (outcome.sweep_dir / "fit.json").exists()


def test_mlflow_tells_pruned_diverged_and_branches_apart(sweep):
    """Issue 17, read back with MlflowClient: a pruned trial's run is KILLED with the outcome `pruned` and its
    reason, a diverged one FAILED with `diverged`, a finished one FINISHED; a WSD branch's run names its
    trunk's run and trial and the branch point."""
    from orchestrator.io.tracking import OUTCOMES, read_sweep_runs

    spec, outcome, store = sweep
    _, children = read_sweep_runs(spec.tracking_uri(), spec.name)
    runs = {c.data.tags["scalesweep.trial_id"]: c for c in children}
    trials = store.trials()
    assert set(runs) == set(trials)
    for tid, rec in trials.items():
        tags = runs[tid].data.tags
        assert (tags["scalesweep.outcome"], runs[tid].info.status) == OUTCOMES[rec["status"]], tid
        if rec["status"] == "stopped":
            assert tags["scalesweep.outcome"] == "pruned" and tags["scalesweep.reason"] == rec["summary"]["reason"]
        branch_of = rec["config"].get("branch_of")
        if branch_of:
            assert tags["scalesweep.trunk_trial_id"] == branch_of
            assert tags["scalesweep.trunk_run_id"] == runs[branch_of].info.run_id
            assert tags["scalesweep.branch_step"] == str(rec["config"]["branch_step"])
        else:
            assert "scalesweep.trunk_run_id" not in tags
    assert {"pruned", "diverged", "finished"} <= {c.data.tags["scalesweep.outcome"] for c in children}
