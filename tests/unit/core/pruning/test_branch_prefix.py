"""A WSD branch (a cooldown branch of a longer run, an extension of a shorter one) is judged by the pruner on
its whole curve: its trunk's reports up to its start step (the same run: same N, lr, batch, seed and lr at
every step before it), then its own. Planted on the simulated tiny world: one size, two budgets of one
shared warmup in steps, the branch restored at the decay start of the shorter run, as
`core/planning/branching.py` (cooldown) and the law search's exact twins (extension) plan them."""
from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.config.pruning import trial_meta
from orchestrator.core.planning.branching import decay_steps, warmup_fraction
from orchestrator.core.pruning import STOP, PruneConfig, Pruner, completed_from_rows
from tests.unit.core.pruning.test_pruner import feed as feed_reports
from trainers.contract import Schedule, TrialConfig
from trainers.simulated import train
from trainers.worlds import load_world

WORLD = load_world("tiny")
N, BATCH = 100_000, 2048
D1, D2 = 2_048_000, 4_096_000  # 1000 and 2000 steps
WARMUP = int(round(0.05 * D1 // BATCH))  # the shorter run's warmup, in steps, shared by both
S1 = D1 // BATCH - decay_steps(D1 // BATCH, WARMUP, 0.2)  # the shorter run's decay start: where branches start
LR = float(WORLD.lr_star(N, D1))


def cfg(name: str, lr: float, D: int, branch_step: int = 0, seed: int = 0) -> TrialConfig:
    return TrialConfig(trial_id=name, n_params=N, tokens=D, lr=lr, batch_tokens=BATCH, seed=seed,
                       schedule=Schedule(kind="wsd", warmup=warmup_fraction(WARMUP, D // BATCH)), eval_every=20,
                       branch_step=branch_step, checkpoint_steps=() if branch_step else (S1,))


def reports(c: TrialConfig) -> list[dict]:
    out: list[dict] = []
    train(c, out.append, WORLD)  # a branch reports only the steps after its branch point
    return out


def feed(p: Pruner, c: TrialConfig, trunk: str | None = None, reps: list[dict] | None = None):
    """Feed a trial's reports (its simulated ones by default) until a stop: (decision, index of the
    stopping report or None)."""
    return feed_reports(p, c, reports(c) if reps is None else reps, trunk=trunk)


def completed(p: Pruner, c: TrialConfig) -> None:
    """A run that finished before (its whole curve), as a resumed sweep's history holds it."""
    r = reports(c)
    p.on_complete(c.trial_id, r[-1]["eval_loss"], ([x["step"] for x in r], [x["eval_loss"] for x in r]),
                  meta=trial_meta(c))


def test_the_planted_branch_point_is_the_shorter_runs_decay_start():
    assert (WARMUP, S1) == (50, 800)
    short, long_ = trial_meta(cfg("a", LR, D1)), trial_meta(cfg("b", LR, D2))
    assert np.array_equal(short.lr[:S1], long_.lr[:S1])  # one run up to the branch point
    assert not np.allclose(short.lr[S1:1000], long_.lr[S1:1000])  # then the shorter one decays


def _laggard_branch(trunk_D: int, branch_D: int, bad: float, known: bool):
    """Two finished runs at ``trunk_D`` (the best lr and ``bad``), then a branch of each at ``branch_D``
    from step S1 (its trunk given to the pruner when ``known``): the best lr's first, which must run to
    its end. Returns (pruner, the laggard's decision, index of its stopping report or None, its state)."""
    p = Pruner(PruneConfig())
    completed(p, cfg("trunk-best", LR, trunk_D))
    completed(p, cfg("trunk-low", bad, trunk_D))
    d, i = feed(p, cfg("best", LR, branch_D, S1), trunk="trunk-best" if known else None)
    assert i is None and d.action != "diverged"  # the leader runs to its end
    d, i = feed(p, cfg("low", bad, branch_D, S1), trunk="trunk-low" if known else None)
    t = p.history.trials["low"]
    if not known:  # no trunk's curve: not judged (as before), whatever it reports
        assert i is None and not t.from_start and t.n_prefix == 0
    return p, d, i, t


@pytest.mark.parametrize("known", [True, False])
def test_an_extension_is_judged_from_its_twins_prefix(known):
    # The law search: two lattice points of the shorter budget finished; the longer budget's runs
    # extend them from their decay start. The far-too-low lr's extension trails the best one's.
    p, d, i, t = _laggard_branch(D1, D2, LR / 30, known)
    if not known:
        return
    # its curve is its twin's up to the branch point, then its own; judged from its first own reports
    twin = p.history.trials["trunk-low"]
    assert t.from_start and t.steps[:t.n_prefix] == [s for s in twin.steps if s <= S1]
    assert t.loss[:t.n_prefix] == twin.loss[:t.n_prefix] and t.steps[t.n_prefix] > S1
    assert d.action == STOP and d.prediction["mode"] == "paired" and d.prediction["reference_trial"] == "best"
    # never on one report: the stop needs `min_reports` of its own reports voting
    assert i == PruneConfig().min_reports - 1 and d.prediction["votes"] == PruneConfig().min_reports


@pytest.mark.parametrize("known", [True, False])
def test_a_cooldown_branch_is_judged_from_its_trunks_prefix_not_its_trunks_stable_phase(known):
    # The grid's branching: the longer runs are trunks, the shorter budget's runs decay from their checkpoints.
    p, d, i, t = _laggard_branch(D2, D1, LR / 10, known)
    if not known:
        return
    trunk = p.history.trials["trunk-low"]
    # the trunk's curve after the branch point (its stable phase goes on) is not the branch's
    assert t.steps[:t.n_prefix] == [s for s in trunk.steps if s <= S1]
    own = reports(cfg("low", LR / 10, D1, S1))
    assert t.loss[t.n_prefix:t.n_prefix + 3] == [r["eval_loss"] for r in own[:3]]
    assert d.action == STOP and i >= PruneConfig().min_reports - 1
    assert d.prediction["reference_trial"] == "best"


def test_a_branch_is_not_judged_before_its_trunks_curve_reaches_its_start():
    # A trunk that has not yet reported past the branch point (a pruner behind its reports): the
    # branch waits, unjudged, and takes the prefix once the trunk's curve reaches it.
    p = Pruner(PruneConfig())
    completed(p, cfg("d2-best", LR, D2))
    feed(p, cfg("d1-best", LR, D1, S1), trunk="d2-best")
    trunk_c = cfg("d2-low", LR / 10, D2)
    trunk_reps = reports(trunk_c)
    early = [r for r in trunk_reps if r["step"] < S1]
    branch_c = cfg("d1-low", LR / 10, D1, S1)
    branch_reps = reports(branch_c)
    meta, bmeta = trial_meta(trunk_c), trial_meta(branch_c, trunk="d2-low")
    for r in early:
        p.on_report("d2-low", meta, r)
    for r in branch_reps[:3]:
        assert not p.on_report("d1-low", bmeta, r).stops
    t = p.history.trials["d1-low"]
    assert not t.from_start and t.n_prefix == 0
    for r in trunk_reps[len(early):]:
        if p.on_report("d2-low", meta, r).stops:
            break
    stops = [i for i, r in enumerate(branch_reps[3:]) if p.on_report("d1-low", bmeta, r).stops]
    assert t.from_start and t.steps[0] == trunk_reps[0]["step"] and t.steps[:t.n_prefix][-1] <= S1
    assert stops and stops[0] >= PruneConfig().min_reports - 1  # judged only once it has its whole curve


def test_a_noisy_extension_is_not_called_diverged():
    # The divergence rule's "above its first loss": a branch's first own report comes late in its
    # run, and a noisy report above it is no blow-up (it was: the leader's extension, "diverged" at
    # its 4th report). Its first loss is its trunk's first; without the trunk's curve, none.
    for known in (True, False):
        p = Pruner(PruneConfig())
        completed(p, cfg("d1-best", LR, D1))
        d, i = feed(p, cfg("d2-best", LR, D2, S1), trunk="d1-best" if known else None)
        assert i is None and d.action == "continue", d.reason


def _sweep(p: Pruner, trunk_known: bool) -> tuple[dict, dict, dict, dict]:
    """A planted law-search lattice of one size: 6 lrs × the two budgets. The shorter budget's runs
    finished (from scratch); the longer budget's run report by report, interleaved, each point an
    extension of its twin from the twin's decay start. Returns (decisions, realised finals, configs,
    the reference trial of each stop) by trial id. A run of the size at a third budget finished too (the curve law of the size exists, as in
    a running sweep: without it the law rule's prefix-only mode costs ~1 s a prediction)."""
    completed(p, cfg("other-budget", LR / 2, 3 * D1 // 2, seed=100))
    lrs = [LR * f for f in (1 / 30, 1 / 10, 1 / 3, 1.0, 2.0, 4.0)]
    decisions, finals, cfgs, refs = {}, {}, {}, {}
    for i, lr in enumerate(lrs):
        c = cfgs[f"d1-{i}"] = cfg(f"d1-{i}", lr, D1)
        completed(p, c)
        decisions[c.trial_id], finals[c.trial_id] = "finished", reports(c)[-1]["eval_loss"]
    streams = {}
    for i, lr in enumerate(lrs):
        c = cfgs[f"d2-{i}"] = cfg(f"d2-{i}", lr, D2, S1)
        streams[c.trial_id] = (trial_meta(c, trunk=f"d1-{i}" if trunk_known else None), reports(c))
        finals[c.trial_id] = streams[c.trial_id][1][-1]["eval_loss"]
    live = set(streams)
    for k in range(max(len(r) for _, r in streams.values())):
        for tid in sorted(live):
            meta, reps = streams[tid]
            d = p.on_report(tid, meta, reps[k])
            last = k == len(reps) - 1
            if d.stops or last:
                live.discard(tid)
                decisions[tid] = d.action if d.stops else "finished"
                if d.stops:
                    refs[tid] = d.prediction.get("reference_trial")
                if not d.stops:
                    p.on_complete(tid, reps[k]["eval_loss"])
    return decisions, finals, cfgs, refs


@pytest.fixture(scope="module")
def lattice():
    """The planted lattice with the trunks known (live pruner, decisions, finals, configs), without (decisions),
    and the reference trial of each stop with them."""
    live = Pruner(PruneConfig())
    new, finals, cfgs, refs = _sweep(live, True)
    old, _, _, _ = _sweep(Pruner(PruneConfig()), False)
    return live, new, finals, cfgs, old, refs


def test_no_cell_winner_is_stopped_and_extensions_are_judged_on_a_planted_lattice(lattice):
    _, new, finals, cfgs, old, refs = lattice
    extensions = [tid for tid, c in cfgs.items() if c.branch_step > 0]
    runs = {tid: finals[tid] for tid in extensions if math.isfinite(finals[tid])}
    winner = min(runs, key=runs.get)
    assert new[winner] == "finished" and old[winner] == "finished", (winner, new)
    # Against the noise-free truth (the finals above carry ~1 % of noise): the best run and every run
    # within 0.3 % of it run to their end, and every stopped run is truly worse than its reference.
    truth = {tid: WORLD.true_loss(N, cfgs[tid].tokens, cfgs[tid].lr, BATCH, cfgs[tid].schedule) for tid in runs}
    best = min(truth.values())
    assert all(new[t] == "finished" for t, v in truth.items() if v <= best * 1.003)
    for t in extensions:
        if new[t] == STOP:
            assert truth[t] > truth[refs[t]], (t, refs[t])
    # the extensions are judged now (some stopped), and were not before (none stopped but by divergence)
    assert any(new[t] == STOP for t in extensions)
    assert not any(old[t] == STOP for t in extensions)


def test_a_restored_branch_has_its_prefix_once(lattice):
    # Live, then rebuilt from store rows (each trial's own reports; `completed_from_rows`) as a resumed
    # sweep's pruner is: the same curve, the trunk's prefix exactly once, the same calibration pool.
    live, decisions, _, cfgs, _, _ = lattice
    rows = {tid: {"status": "finished" if a == "finished" else "stopped", "summary": {}, "time": float(k)}
            for k, (tid, a) in enumerate(decisions.items())}
    obs = [{"trial_id": tid, "step": r["step"], "eval_loss": r["eval_loss"]}
           for tid, c in cfgs.items() for r in reports(c)
           if tid in live.history.finals or r["step"] <= live.history.trials[tid].steps[-1]]
    metas = {tid: trial_meta(c, trunk=f"d1-{tid[3:]}" if c.branch_step else None) for tid, c in cfgs.items()}
    done = completed_from_rows(rows, obs, metas)
    branches = [c for c in done if metas[c.trial_id].start_step > 0]
    assert branches
    for c in branches:
        t = live.history.trials[c.trial_id]
        assert list(c.steps) == t.steps and list(c.loss) == t.loss
        assert all(b > a for a, b in zip(c.steps, c.steps[1:]))  # no step twice
    restored = Pruner(PruneConfig())
    restored.restore(done)
    for c in branches:
        r, t = restored.history.trials[c.trial_id], live.history.trials[c.trial_id]
        assert (r.steps, r.n_prefix, r.from_start) == (t.steps, t.n_prefix, True)
    assert len(restored.history.calibration.pairs) == len(live.history.calibration.pairs) > 0


def test_a_branch_without_its_trunks_curve_adds_no_calibration_pairs():
    # A branch's own reports alone would give its late overshoots to the early fractions of the
    # paired rule's calibration (narrowing the allowance there): only curves from step 0 pair.
    for known in (False, True):
        p = Pruner(PruneConfig())
        for name, lr in (("d1-a", LR), ("d1-b", LR / 3)):
            completed(p, cfg(name, lr, D1))
        for name, lr in (("d2-a", LR), ("d2-b", LR / 3)):
            c = cfg(name, lr, D2, S1)
            r = reports(c)
            p.on_complete(name, r[-1]["eval_loss"], ([x["step"] for x in r], [x["eval_loss"] for x in r]),
                          meta=trial_meta(c, trunk=("d1-" + name[-1]) if known else None))
        # the d1 pair always; the d2 pair only when both branches have their prefix
        assert len(p.history.calibration.pairs) == (2 if known else 1)


def test_the_forecast_rule_calibrates_across_warmup_lengths():
    # A branched sweep's WSD runs warm up for one number of steps per size, so every budget's runs have
    # another warmup fraction; the forecast rule pools them (its law sees each run's own schedule): it
    # is calibrated once 9 runs completed, not 9 runs of each warmup length.
    p = Pruner(PruneConfig())
    rule = next(r.rule for r in p.rules if r.name == "forecast")
    metas = []
    for k in range(10):
        D = D1 + 256_000 * k  # ten budgets of the size, one shared warmup in steps
        c = cfg(f"run-{k}", LR * (0.5 + 0.1 * k), D)
        metas.append(trial_meta(c))
        completed(p, c)
    assert len({m.schedule for m in metas}) == 10 and len({m.schedule_family() for m in metas}) == 1
    rule.check("run-0", p.history.trials["run-0"], p.history)  # catches up on the completed runs
    hi, lo, n = rule.allowances((metas[0].schedule_family(),) * 2)
    assert n == 9 and np.all(hi >= lo)  # every run scored by the law fitted before it (none before the first)
