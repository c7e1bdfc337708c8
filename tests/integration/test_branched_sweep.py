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

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.branching import decay_steps
from orchestrator.query import status
from orchestrator.store import ObservationStore
from orchestrator.tracking import TAG_BRANCH_STEP, TAG_TRIAL, TAG_TRUNK_RUN, TAG_TRUNK_TRIAL, read_sweep_runs
from tests.integration.conftest import run_real_sweep

SPEC = {
    "name": "branched",
    "model": {"n_params": [14000, 44000, 140000, 440000], "seq_len": 128},
    "tokens": {"per_param": [5, 20, 80]},
    "learning_rates": [0.003, 0.01, 0.03, 0.1],
    "batch_sizes": [1280, 5632],
    "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.2, "branch": True},
    "checkpoints": {"enabled": True, "every": 100000},
    "trainer": {"backend": "simulated", "world": "tiny"},
    "eval": {"every": 100000, "tokens": 2097152},
    "budget": {"targets": [3e15]},
    "fit": {"bootstrap": 0},
    "search": {"strategy": "transfer", "init_sizes": 2, "law_checks": 0, "noise": 0.02},
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    spec, outcome = run_real_sweep(tmp_path_factory.mktemp("branched"), SPEC, "sweep")
    return spec, outcome, ObservationStore(outcome.sweep_dir)


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
        # near the plan's own (the simulated trainer counts 6·n_target per token, the plan 6·N of the realised
        # model: ~1 % apart, up to ~6 % of a cooldown branch's remainder)
        last = max(rows, key=lambda r: r["step"])["flops"]
        assert spent[tid] == pytest.approx(last - c["branch_flops"], rel=1e-9)
        assert spent[tid] == pytest.approx(c["flops"], rel=0.07)
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
    _, outcome, store = sweep
    trials = store.trials()
    branches = check_branches_restored_their_trunks(outcome.sweep_dir, store)
    for rec in branches.values():  # the latest step both schedules share: a cooldown branch restores the
        c, trunk = rec["config"], trials[rec["config"]["branch_of"]]["config"]  # longer run at its own decay
        if trunk["D"] > c["D"]:  # start; an extension the shorter run at that run's decay start
            assert c["branch_step"] == _decay_start(c)
        else:
            assert c["branch_step"] == _decay_start(trunk)
        assert round(c["warmup"] * (c["D"] // c["batch"])) == round(trunk["warmup"] * (trunk["D"] // trunk["batch"]))


def test_one_row_per_trial_and_step_and_lineage_in_store_and_mlflow(sweep):
    spec, outcome, store = sweep
    check_one_row_per_trial_step(store)
    check_lineage_in_mlflow(spec, _branches(store))


def test_the_search_reports_what_branching_saved(sweep):
    spec, outcome, store = sweep
    parent, _ = read_sweep_runs(spec.tracking_uri(), spec.name)
    folder = MlflowClient(spec.tracking_uri()).download_artifacts(parent.info.run_id, "results")
    stop = json.loads(open(f"{folder}/decisions.json").read())[-1]
    branches = _branches(store)
    assert stop["action"] == "stop" and stop["wsd_branching"]["from_checkpoint"] == len(branches)
    assert stop["wsd_branching"]["saved_flops"] == pytest.approx(
        sum(r["config"]["branch_flops"] for r in branches.values()), rel=1e-9)
