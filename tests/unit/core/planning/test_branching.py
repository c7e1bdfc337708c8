"""WSD branching plan: a branch's schedule is its trunk's up to the branch point, then its own decay."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core.planning.branching import decay_steps, plan_branches, warmup_fraction
from trainers.contract import Schedule
from trainers.schedules import lr_array


@dataclass(frozen=True)
class T:
    trial_id: str
    n_target: int
    D: int
    lr: float
    batch: int
    seed: int = 0


def _grid(steps, n=1000, lr=0.01, batch=256):
    return [T(f"n{n}-s{s}", n, s * batch, lr, batch) for s in steps]


def test_trunk_is_the_longest_run_and_branches_start_where_their_decay_starts():
    trials = _grid([100, 200, 400]) + _grid([100, 400], n=2000)
    plan = plan_branches(trials, warmup=0.05, decay=0.2)
    assert plan.checkpoint_steps == {"n1000-s400": (80, 160), "n2000-s400": (80,)}
    b = plan.branches["n1000-s100"]
    assert (b.trunk_id, b.step, b.tokens, b.total_steps) == ("n1000-s400", 80, 80 * 256, 100)
    assert plan.branches["n1000-s200"].step == 160
    assert plan.trunk_of("n1000-s400") is None and "n1000-s400" not in plan.branches
    # one warmup in steps for the whole group: the shortest run's (5 of 100 steps)
    for tid, total in [("n1000-s100", 100), ("n1000-s200", 200), ("n1000-s400", 400)]:
        assert int(round(plan.warmup[tid] * total)) == 5


def test_groups_do_not_mix_lr_batch_or_seed():
    trials = _grid([100, 400]) + _grid([200], lr=0.02) + [T("other-seed", 1000, 50 * 256, 0.01, 256, seed=1)]
    plan = plan_branches(trials, warmup=0.05, decay=0.2)
    assert set(plan.branches) == {"n1000-s100"}


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.integers(2, 3000), min_size=2, max_size=5, unique=True),
       warmup=st.floats(0.0, 0.3), decay=st.floats(0.05, 0.6))
def test_a_branch_reproduces_the_from_scratch_schedule(steps, warmup, decay):
    """Trunk prefix + branch suffix == the lr of a WSD run to the branch's D with the group's warmup."""
    plan = plan_branches(_grid(steps), warmup=warmup, decay=decay)
    trunk = f"n1000-s{max(steps)}"
    trunk_lr = lr_array(max(steps), 0.01, Schedule(kind="wsd", warmup=plan.warmup[trunk], decay=decay))
    w = int(round(warmup * min(steps)))
    for tid, b in plan.branches.items():
        own = lr_array(b.total_steps, 0.01, Schedule(kind="wsd", warmup=plan.warmup[tid], decay=decay))
        assert np.array_equal(own[:b.step], trunk_lr[:b.step])  # what the trunk trained is this run's
        assert b.total_steps - b.step == decay_steps(b.total_steps, w, decay)  # the branch trains its decay only
        assert b.step in plan.checkpoint_steps[trunk]


def test_warmup_fraction_round_trips():
    for w in range(0, 50):
        for total in range(max(1, w), 400, 7):
            assert int(round(warmup_fraction(w, total) * total)) == w


# ---------------------------------------------------------------- the planner's use of the plan
def _spec(**over):
    from orchestrator.config.spec import parse_spec

    doc = {"name": "branch-test", "model": {"n_params": [20000, 80000], "seq_len": 64},
           "tokens": {"values": [40960, 81920, 163840]}, "learning_rates": [0.003, 0.01], "batch_sizes": [2048],
           "schedule": {"kind": "wsd", "branch": True}, "trainer": {"backend": "simulated"}}
    doc.update(over)
    return parse_spec(doc)


def test_the_grid_plans_trunks_and_branches_that_spend_only_their_decay():
    from orchestrator.config.trials import plan_grid

    plain = {(t.n_target, t.D, t.lr): t for t in plan_grid(_spec(schedule={"kind": "wsd"}))}
    trials = plan_grid(_spec())
    branches = [t for t in trials if t.branch_of]
    trunks = {t.trial_id: t for t in trials if t.checkpoint_steps}
    assert len(trials) == 12 and len(branches) == 8 and len(trunks) == 4
    for b in branches:
        trunk = trunks[b.branch_of]
        assert (trunk.n_target, trunk.lr, trunk.D) == (b.n_target, b.lr, 163840)
        assert b.branch_step in trunk.checkpoint_steps
        full = plain[(b.n_target, b.D, b.lr)].flops
        assert b.flops + b.branch_flops == pytest.approx(full) and b.flops == pytest.approx(0.2 * full, rel=0.01)
    spent = sum(t.flops for t in trials) / sum(t.flops for t in plain.values())
    assert spent == pytest.approx((4 + 0.2 * (1 + 2)) / 7, rel=0.01)  # trunk + two decays per group


def test_branches_wait_for_their_trunk_and_are_skipped_when_it_stops_short(tmp_path):
    from orchestrator.core.planning import Done
    from orchestrator.core.planning import WAIT
    from orchestrator.config.planners import GridPlanner
    from orchestrator.config.trials import trial_config

    planner = GridPlanner(_spec(model={"n_params": [20000], "seq_len": 64}, learning_rates=[0.01]))
    first = planner.next_trial()
    assert first.checkpoint_steps == (16, 32) and first.D == 163840  # the trunk goes first
    assert planner.next_trial() == WAIT  # both branches wait for it
    planner.observe_report(first.trial_id, {"step": 20.0})
    branch = planner.next_trial()
    assert branch.branch_step == 16 and "cooldown branch" in planner.decisions[-1]["why"]
    cfg = trial_config(planner.spec, branch, str(tmp_path / "checkpoints" / branch.trial_id), None)
    assert cfg.branch_from == str(tmp_path / "checkpoints" / first.trial_id / "step16") and cfg.branch_step == 16
    assert planner.next_trial() == WAIT
    planner.observe(first.trial_id, {"step": 25.0})  # stopped (by the pruner, say) at step 25
    assert isinstance(planner.next_trial(), Done)
    assert planner.decisions[-1]["action"] == "skip" and "before step 32" in planner.decisions[-1]["why"]


def test_branches_past_a_diverged_report_are_skipped_naming_the_trunk():
    """A trunk's non-finite report passes no branch point (no checkpoint of a diverged state is saved):
    the branches still waiting are skipped with a reason naming the trunk, never run to fail; the same
    from the trunk's last report alone (replay, resume)."""
    from orchestrator.core.planning import Done, WAIT
    from orchestrator.config.planners import GridPlanner

    nan = float("nan")
    spec = _spec(model={"n_params": [20000], "seq_len": 64}, learning_rates=[0.01])
    planner = GridPlanner(spec)
    trunk = planner.next_trial()
    assert trunk.checkpoint_steps == (16, 32)
    planner.observe_report(trunk.trial_id, {"step": 20.0, "train_loss": 4.0, "eval_loss": 4.1, "done": 0.0})
    assert planner.next_trial().branch_step == 16  # passed with a finite loss: its checkpoint exists
    planner.observe(trunk.trial_id, {"step": 35.0, "train_loss": nan, "eval_loss": nan, "done": 1.0})
    assert isinstance(planner.next_trial(), Done)
    skip = planner.decisions[-1]
    assert skip["action"] == "skip" and trunk.trial_id in skip["why"] and "diverged at step 35" in skip["why"]
    assert [t.branch_step for t in planner.skipped] == [32]

    replayed = GridPlanner(spec)
    trunk = replayed.next_trial()
    assert replayed.next_trial() == WAIT
    replayed.observe(trunk.trial_id, {"step": 40.0, "train_loss": nan, "eval_loss": float("inf"), "done": 1.0})
    assert isinstance(replayed.next_trial(), Done) and sorted(t.branch_step for t in replayed.skipped) == [16, 32]
    assert all("diverged" in d["why"] for d in replayed.decisions if d["action"] == "skip")


def test_a_resumed_sweep_knows_its_finished_trunks():
    from orchestrator.config.planners import GridPlanner

    planner = GridPlanner(_spec(model={"n_params": [20000], "seq_len": 64}, learning_rates=[0.01]))
    trunk = planner.trials[-1]
    planner.resume({trunk.trial_id: {"step": 40.0}})
    assert {planner.next_trial().branch_step, planner.next_trial().branch_step} == {16, 32}


def test_branching_needs_wsd_checkpoints():
    from orchestrator.config.spec import SpecError

    with pytest.raises(SpecError, match="only a WSD schedule"):
        _spec(schedule={"kind": "cosine", "branch": True})
    with pytest.raises(SpecError, match="checkpoints.enabled"):
        _spec(checkpoints={"enabled": False})
    for strategy in ("transfer", "law"):  # the search plans its own (search/branches.py)
        assert _spec(search={"strategy": strategy}).schedule.branch
