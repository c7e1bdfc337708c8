"""The transfer search with the pruner and WSD branching (the whole product), on planted worlds,
replayed as the efficiency benchmark's scalesweep arm runs it (`benchmarks.strategies.replay_planner`),
and the real-sweep path's acceptance of the combination (spec validation, planner construction)."""
from __future__ import annotations

import math

import pytest

from benchmarks import efficiency as E
from benchmarks import strategies as S
from orchestrator.core.laws.hparam_surface import SurfaceFit
from orchestrator.core.laws.hparams import BatchLaw, LrLaw
from orchestrator.config.trials import trial_config
from orchestrator.config.planners import make_planner
from orchestrator.core.planning.search.branches import bowl_penalty, corrected_loss
from orchestrator.core.planning.search.lattice import LAW_POINT
from orchestrator.config.planners import LawGuidedPlanner
from orchestrator.config.spec import parse_spec
from trainers.worlds import load_world

# The test checks the mechanics, not the online form selection: one form, fewer replicates (fast).
FAST = ("fit.law=chinchilla", "search.bootstrap=40")
WITHOUT = ("pruning.enabled=false", "schedule.branch=false")


def _data(world: str, seed: int) -> dict:
    target = E.DEFAULT_TARGETS[world]
    return E.benchmark_spec(E.prior_for(None, target)[0], world, target, seed)


def _arm(world: str, seed: int, *overrides: str):
    data = _data(world, seed)
    grid = S.Grid(parse_spec(data), load_world(world))
    planner, recs = S.replay_planner(grid, parse_spec(E.scalesweep_spec(data, FAST + overrides)), 8)
    return grid, planner, recs


@pytest.fixture(scope="module")
def arms():
    """crossing world (lr, batch laws that bend, a surface not of Chinchilla form), seed 2: the search
    opens several later cells of the largest sizes."""
    return {"with": _arm("crossing", 2), "without": _arm("crossing", 2, *WITHOUT)}


def _regret(world: str, grid, planner, recs) -> float:
    from orchestrator.core.proposals import fit_and_propose

    advice = planner.hparam_advice()
    target = E.DEFAULT_TARGETS[world]
    fit = fit_and_propose(S.completed_points(recs), [target], bootstrap=0, seed=0, hparams=advice.predict,
                          hparam_intervals=advice.intervals, corrected_loss=advice.corrected_loss)
    p = fit.proposals[0]
    return load_world(world).regret({k: p[k] for k in ("N", "D", "lr", "batch")}, target)


def test_the_pruner_never_stops_a_cell_winner(arms):
    grid, planner, recs = arms["with"]
    assert planner.branches is not None and planner.stopped
    best: dict = {}
    for r in recs:
        if r.status == "finished":
            key = planner.book.where[r.trial_id][0].key
            best[key] = min(best.get(key, math.inf), r.final_loss)
    for r in recs:
        if r.status == "stopped":  # what it would have reached had it run to its end
            final = grid.reports(grid.by_id[r.trial_id])[-1]["eval_loss"]
            assert final > best[planner.book.where[r.trial_id][0].key], r.trial_id
    assert _regret("crossing", grid, planner, recs) <= 0.005


def test_branching_and_the_pruner_spend_less_than_the_search_alone(arms):
    (grid, planner, recs), (_, alone, recs0) = arms["with"], arms["without"]
    assert alone.branches is None
    saved = S.saved_by_parts(recs, grid.by_id)
    assert saved["branches"] > 0 and saved["branching_flops"] > 0
    assert planner.decisions[-1]["wsd_branching"]["from_checkpoint"] == saved["branches"]
    spent, spent0 = sum(r.flops for r in recs), sum(r.flops for r in recs0)
    assert spent < spent0
    # a run from a checkpoint spends its own steps only (its reports count the checkpoint's share too)
    for r in recs:
        t = grid.by_id[r.trial_id]
        if t.branch_of and r.status == "finished":
            full = grid.reports(t)[-1]["flops"]
            assert r.flops == pytest.approx(full - t.branch_flops) and r.flops < full
            assert t.branch_step in grid.by_id[t.branch_of].checkpoint_steps


def test_branched_cells_enter_the_fit_corrected_to_their_law_point(arms):
    _, planner, _ = arms["with"]
    branched = [c for c in planner.cells if c.open_info.get("branch_of")]
    assert branched
    for c in branched:
        pen = c.open_info["bowl_penalty"]
        assert 0.0 <= pen <= planner.config.noise
        assert corrected_loss(c, c.loss[LAW_POINT]) == pytest.approx(c.loss[LAW_POINT] * math.exp(-pen))
        assert "WSD" in c.start_from and c.why[LAW_POINT].startswith("transfer + WSD branching")


def test_the_final_fit_counts_branches_as_the_search_does(arms):
    """The proposals' fit (`fit_and_propose` with the search's rule, as run_sweep and the benchmark call
    it) sees each branched cell's loss corrected exactly as the search's own fit did."""
    from orchestrator.core.proposals import fit_and_propose

    _, planner, recs = arms["with"]
    rule = planner.hparam_advice().predict
    branched = {c.trials[LAW_POINT].trial_id: c for c in planner.cells if c.open_info.get("branch_of")}
    points = S.completed_points(recs)
    moved = 0
    for p in points:
        c = branched.get(p["trial_id"])
        assert rule.corrected_loss(p) == (corrected_loss(c, p["loss"]) if c is not None else p["loss"])
        moved += c is not None and c.open_info["bowl_penalty"] > 0
    assert moved > 0
    fit = fit_and_propose(points, [E.DEFAULT_TARGETS["crossing"]], bootstrap=0, hparams=rule,
                          corrected_loss=rule.corrected_loss)
    assert any(w.startswith(f"{moved} WSD branch loss(es) corrected") for w in fit.warnings)
    searched = {(round(n), round(d)): loss for n, d, loss in zip(*planner.book.fit_points())}
    for c in branched.values():  # the search's fit point of a branched cell is the final fit's cell
        cell = min(fit.cells, key=lambda x: abs(math.log(x["N"] / c.N)) + abs(math.log(x["cell_D"] / c.D)))
        assert cell["loss"] == pytest.approx(searched[(round(c.N), round(c.D))], rel=1e-12)


def test_the_replay_cache_keeps_the_branch_corrections(arms, tmp_path):
    """`propose` answered from the replay cache (orchestrator.app.replay_cache) fits the same corrected
    losses as the replay it cached: a fresh planner has no cells to correct with, so the factors travel."""
    from orchestrator.app import replay_cache

    _, planner, recs = arms["with"]
    spec = parse_spec(E.scalesweep_spec(_data("crossing", 2), FAST))
    assert replay_cache.save(tmp_path, "k", spec, planner, [], None)
    cached = replay_cache.load(tmp_path, "k", spec)[0].predict
    live = planner.hparam_advice().predict
    points = S.completed_points(recs)
    assert [cached.corrected_loss(p) for p in points] == [live.corrected_loss(p) for p in points]
    assert sum(cached.corrected_loss(p) != p["loss"] for p in points) > 0


def test_deterministic_given_a_seed(arms):
    _, planner, recs = arms["with"]
    _, planner2, recs2 = _arm("crossing", 2)
    assert [r.trial_id for r in recs] == [r.trial_id for r in recs2]
    assert [r.flops for r in recs] == [r.flops for r in recs2]
    assert planner.stopped == planner2.stopped


def test_bowl_penalty_is_the_fitted_bowl():
    s = SurfaceFit(LrLaw(1.0, 0.0, 0.0), BatchLaw(1.0, 0.0), 0.008, 0.007, -0.005, 0, 0, 0.0, lr_asym=2.5)
    u, v = math.log(1.3), math.log(1.6)
    assert bowl_penalty(s, u, v) == pytest.approx(0.008 * 2.5 * u * u + 0.007 * v * v - 0.005 * u * v)
    assert bowl_penalty(s, -u, 0.0) == pytest.approx(0.008 * u * u)
    assert bowl_penalty(None, 0.0, 0.0) == math.inf


def test_an_extension_starts_at_the_shorter_runs_decay_start():
    """A run of one size, finished: a longer budget at a near law point starts from its checkpoint."""
    spec = parse_spec(E.scalesweep_spec(_data("tiny", 0)))
    pl = LawGuidedPlanner(spec, seed=0)
    br = pl.branches
    size = sorted(spec.model.sizes())[-1]
    short, long_ = sorted((c for c in pl.cells if c.key[0] == size), key=lambda c: c.D)[2:4]
    lr, batch = spec.lrs()[2], spec.batches()[0]
    surface = SurfaceFit(LrLaw(1.0, 0.0, 0.0), BatchLaw(1.0, 0.0), 0.008, 0.007, -0.005, 0, 0, 0.0)
    first = br.first(br._at(short, lr, batch, spec.seeds[0]))
    T = first.D // first.batch
    decay_start = T - round(spec.schedule.decay * T)
    assert decay_start in first.checkpoint_steps
    assert br.offer(long_, lambda N, D: (lr, batch), surface) is None  # still running
    assert br.cost(long_, lambda N, D: (lr, batch), surface) < long_.flops  # ... but worth waiting for
    br.ended(first.trial_id, ok=True)
    offer = br.offer(long_, lambda N, D: (lr * 1.05, batch), surface)
    t = br.adopt(long_, offer, lr * 1.05, batch)
    assert (t.branch_of, t.branch_step) == (first.trial_id, decay_start)
    assert t.lr == first.lr and t.batch == first.batch
    assert t.flops + t.branch_flops == pytest.approx(br._at(long_, lr, batch, spec.seeds[0]).flops)
    assert round(t.warmup * (t.D // t.batch)) == round(first.warmup * T)  # the same warmup in steps
    cfg = trial_config(spec, t, "/sweep/checkpoints/" + t.trial_id, None)
    assert cfg.branch_from == f"/sweep/checkpoints/{first.trial_id}/step{decay_start}" and cfg.branch_step == decay_start
    # far from the run's (lr, batch) on the bowl: no offer (the offset would cost more than a loss's noise)
    assert br.offer(long_, lambda N, D: (lr * 3.0, batch * 4), surface) is None


def test_the_real_sweep_accepts_transfer_with_pruning_and_branching():
    data = E.scalesweep_spec(_data("tiny", 0))
    spec = parse_spec(data)  # transfer + pruning + WSD branch (+ checkpoints): validated
    assert (spec.search.strategy, spec.pruning.enabled, spec.schedule.branch) == ("transfer", True, True)
    planner = make_planner(spec)
    assert isinstance(planner, LawGuidedPlanner) and planner.branches is not None
    # the search's lattice is never the grid's trunks and branches (their trunks may never run)
    assert not any(t.branch_of or t.checkpoint_steps for t in planner.trials)
    assert S.scalesweep_parts(spec)["wsd_branching"] and S.scalesweep_parts(spec)["pruner"]
    law = make_planner(parse_spec({**data, "search": {"strategy": "law"}}))  # exact twins (test_law_branching.py)
    assert law.branches is not None and not any(t.branch_of or t.checkpoint_steps for t in law.trials)


def test_a_replay_corrects_the_branches_the_run_handed_out_before_it_stopped():
    """A run with two slots hands out a WSD branch while the trial that stops the search is running; a
    replay of the ended trials (`resume`: what a resumed controller and `propose` do) observes them one
    at a time, so it stops before it would plan that branch. The branch must still join its cell, or
    `propose` fits its raw loss where the run's fit.json fitted the corrected one (found by
    tests/integration/test_branched_sweep.py)."""
    from orchestrator.config.trials import PlannedTrial
    from orchestrator.app.replay import replay
    from trainers.simulated import train

    spec = parse_spec({
        "name": "branched", "model": {"n_params": [14000, 44000, 140000, 440000], "seq_len": 128},
        "tokens": {"per_param": [5, 20, 80]}, "learning_rates": [0.003, 0.01, 0.03, 0.1],
        "batch_sizes": [1280, 5632], "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.2, "branch": True},
        "checkpoints": {"enabled": True}, "trainer": {"backend": "simulated", "world": "tiny"},
        "eval": {"every": 100000, "tokens": 2097152}, "budget": {"targets": [3e15]}, "fit": {"bootstrap": 0},
        "search": {"strategy": "transfer", "init_sizes": 2, "law_checks": 0, "noise": 0.02, "bootstrap": 20}})

    def last_report(t):
        reports = []
        train(trial_config(spec, t, None, None), reports.append)
        return reports[-1]

    run = make_planner(spec)
    ran = replay(run, last_report, concurrency=2)
    branches = [t.trial_id for t in ran.trials if t.branch_of]
    assert branches and run.stopped
    replayed = make_planner(spec)
    replayed.resume(ran.results)
    step = replayed.next_trial()
    assert not isinstance(step, PlannedTrial), "the replay would run a new trial"
    assert not replayed._resumed  # every ended trial has its place in the replayed search
    assert [replayed.loss_as_fitted(t, 3.0) for t in branches] == [run.loss_as_fitted(t, 3.0) for t in branches]
    assert any(run.loss_as_fitted(t, 3.0) != 3.0 for t in branches)
