"""The pruning rule: grace, noise, divergence, a far-off run stopped with its prediction, winners kept."""
from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.core.pruning import DIVERGED, STOP, PruneConfig, Pruner
from orchestrator.config.pruning import trial_meta
from trainers.contract import Schedule, TrialConfig
from trainers.simulated import train
from trainers.worlds import load_world

WORLD = load_world("tiny")
N, D, BATCH = 100_000, 2_000_000, 2048
LR_STAR = float(WORLD.lr_star(N, D))


def cfg(name: str, lr: float, kind: str = "cosine", seed: int = 0, eval_every: int = 20) -> TrialConfig:
    return TrialConfig(trial_id=name, n_params=N, tokens=D, lr=lr, batch_tokens=BATCH,
                       schedule=Schedule(kind=kind), eval_every=eval_every, seed=seed)


def reports(c: TrialConfig) -> list[dict]:
    out: list[dict] = []
    train(c, out.append, WORLD)
    return out


def feed(p: Pruner, c: TrialConfig, reps: list[dict], trunk: str | None = None):
    """Feed reports until a stop; (decision, index) of the stop, or (last decision, None). `trunk`: the
    WSD trunk a branch continues (`TrialMeta.trunk`)."""
    meta = trial_meta(c, trunk=trunk)
    d = None
    for i, r in enumerate(reps):
        d = p.on_report(c.trial_id, meta, r)
        if d.stops:
            return d, i
    p.on_complete(c.trial_id, reps[-1]["eval_loss"])
    return d, None


def with_history(p: Pruner, seed: int = 100) -> Pruner:
    """Give the pruner completed runs of this size (both schedules), as a running sweep has."""
    for kind in ("cosine", "wsd"):
        c = cfg(f"done-{kind}", LR_STAR / 2, kind=kind, seed=seed)
        r = reports(c)
        p.on_complete(c.trial_id, r[-1]["eval_loss"], ([x["step"] for x in r], [x["eval_loss"] for x in r]),
                      meta=trial_meta(c))
    return p


def const_frontier(value: float):
    return lambda meta: (value, value)


def test_trial_meta_matches_the_trainer():
    c = cfg("a", LR_STAR)
    meta = trial_meta(c)
    reps = reports(c)
    assert meta.total_steps == reps[-1]["step"]
    assert meta.flops == pytest.approx(reps[-1]["flops"])
    assert meta.lr[int(reps[5]["step"]) - 1] == pytest.approx(reps[5]["lr"])


def test_never_stops_before_grace_even_when_hopeless():
    # A frontier far below anything reachable: the rule wants to stop, but not before grace.
    c = cfg("a", LR_STAR)
    reps = reports(c)
    for grace in (0.3, 0.6):
        p = Pruner(PruneConfig(grace=grace), frontier=const_frontier(1.0))
        d, i = feed(p, c, reps)
        assert d.action == STOP
        assert reps[i]["step"] >= grace * trial_meta(c).total_steps
        assert d.prediction["fraction"] >= grace


def test_never_stops_on_one_outlier_report():
    # The run meets the frontier; one report (and only one) is a huge outlier.
    c = cfg("a", LR_STAR)
    reps = reports(c)
    final = reps[-1]["eval_loss"]
    n = len(reps)
    for k in (int(0.32 * n), int(0.5 * n), n - 2):  # right after grace, mid-run, the last report but one
        bad = [dict(r) for r in reps]
        bad[k]["eval_loss"] *= 1.4
        bad[k]["train_loss"] *= 1.4
        p = with_history(Pruner(PruneConfig(), frontier=const_frontier(final)))
        d, i = feed(p, c, bad)
        assert i is None, (k, d)


def test_one_stop_vote_is_not_enough():
    c = cfg("a", LR_STAR)
    reps = reports(c)
    strict = Pruner(PruneConfig(min_reports=3), frontier=const_frontier(1.0))
    loose = Pruner(PruneConfig(min_reports=1), frontier=const_frontier(1.0))
    d3, i3 = feed(strict, c, reps)
    d1, i1 = feed(loose, c, reps)
    assert d1.prediction["votes"] == 1 and d3.prediction["votes"] == 3
    assert i3 > i1


def test_nan_is_diverged_at_once():
    c = cfg("a", LR_STAR)
    reps = reports(c)[:5] + [{"step": 120.0, "train_loss": math.nan, "eval_loss": math.nan}]
    d, i = feed(Pruner(), c, reps)
    assert d.action == DIVERGED and i == 5 and "non-finite" in d.reason
    # inf anywhere, too; one NaN alone (no evaluation in this report) is not a divergence
    p = Pruner()
    meta = trial_meta(c)
    assert p.on_report("b", meta, {"step": 20.0, "train_loss": 5.0, "eval_loss": math.nan}).action == "continue"
    assert p.on_report("b", meta, {"step": 40.0, "train_loss": math.inf, "eval_loss": 4.0}).action == DIVERGED


def test_exploding_loss_is_diverged_before_it_is_nan():
    c = cfg("hot", 10 * LR_STAR, eval_every=4)  # the world blows up over 20 steps, then NaN
    reps = reports(c)
    assert not math.isfinite(reps[-1]["eval_loss"])
    d, i = feed(Pruner(), c, reps)
    assert d.action == DIVERGED and i < len(reps) - 1 and "exploding" in d.reason


def test_a_run_past_warmup_above_its_first_loss_is_diverged_and_said_so():
    # Not a blow-up (never 1.5x its running minimum): a loss that, past warmup, is back above where it
    # started on consecutive reports; the reason names that, not an explosion.
    c = cfg("flat", LR_STAR)
    meta = trial_meta(c)
    p = Pruner()
    losses = [10.80, 10.78, 10.76, 10.79, 10.81, 10.83]
    steps = [meta.warmup_steps * f for f in (0.3, 0.6, 0.9)] + [meta.warmup_steps + 10.0 * k for k in (1, 2, 3)]
    ds = [p.on_report("flat", meta, {"step": s, "train_loss": x, "eval_loss": x}) for s, x in zip(steps, losses)]
    assert [d.action for d in ds[:-1]] == ["continue"] * 5 and ds[-1].action == DIVERGED
    assert ds[-1].reason.startswith("loss above its first report after warmup: 10.83")


def test_far_off_run_is_stopped_with_reason_and_prediction():
    c = cfg("a", LR_STAR / 100)  # ~19 % above the best final loss of this cell
    reps = reports(c)
    best = reports(cfg("ref", LR_STAR, seed=1))[-1]["eval_loss"]
    p = Pruner(PruneConfig(), frontier=const_frontier(best))
    d, i = feed(p, c, reps)
    assert d.action == STOP and i is not None
    pred = d.prediction
    assert pred["reference"] == "frontier" and pred["reference_high"] == best
    assert pred["low"] > best * (1 + pred["margin"])
    assert pred["low"] <= pred["estimate"] <= pred["high"]
    assert "frontier" in d.reason and f"{pred['estimate']:.4g}" in d.reason
    s = d.summary()
    assert s["decision"] == "stop" and s["pred_low"] == pred["low"]


def test_intervals_are_the_laws():
    # The decision carries exactly what laws.final_loss.predict_final gives for that prefix.
    from orchestrator.core.laws.final_loss import predict_final

    c = cfg("a", LR_STAR / 100)
    reps = reports(c)
    p = Pruner(PruneConfig(law="annealing", level=0.8), frontier=const_frontier(1.0))
    d, i = feed(p, c, reps)
    meta = trial_meta(c)
    steps = np.array([r["step"] for r in reps[: i + 1]])
    loss = np.array([r["eval_loss"] for r in reps[: i + 1]])
    fl = predict_final(steps, loss, meta.law_schedule(), law="annealing", level=0.8,
                       final_step=meta.total_steps, n_boot=PruneConfig().n_boot)
    assert d.prediction["law"] == "annealing" and d.prediction["level"] == 0.8
    assert (d.prediction["estimate"], d.prediction["low"], d.prediction["high"]) == pytest.approx(tuple(fl))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_winner_survives_a_sweep_and_bad_lrs_are_stopped(seed):
    # One (N, D) cell, a 6-value lr grid × 2 schedules, run in lockstep (all reports of step k
    # before step k+1) after two earlier runs of the size completed (so the curve law is fitted,
    # as in a running sweep): the best final loss of the cell is never stopped; the far-off are.
    factors = (1 / 100, 1 / 10, 1 / 3, 1.0, 3.0, 10.0)
    cfgs = [cfg(f"{k}-{f:.3g}", LR_STAR * f, kind=k, seed=seed) for k in ("cosine", "wsd") for f in factors]
    reps = {c.trial_id: reports(c) for c in cfgs}
    metas = {c.trial_id: trial_meta(c) for c in cfgs}
    p = with_history(Pruner(PruneConfig(seed=seed)), seed=100 + seed)
    stopped = {}
    for k in range(max(len(r) for r in reps.values())):
        for c in cfgs:
            r = reps[c.trial_id]
            if c.trial_id in stopped or k >= len(r):
                continue
            d = p.on_report(c.trial_id, metas[c.trial_id], r[k])
            if d.stops:
                stopped[c.trial_id] = (d, k / len(r))
            elif k == len(r) - 1:
                p.on_complete(c.trial_id, r[k]["eval_loss"])
    finals = {t: r[-1]["eval_loss"] for t, r in reps.items() if math.isfinite(r[-1]["eval_loss"])}
    winner = min(finals, key=finals.get)
    assert winner not in stopped
    for f in (1 / 100, 10.0):  # far too low, far too high
        for kind in ("cosine", "wsd"):
            assert f"{kind}-{f:.3g}" in stopped
    assert stopped[f"cosine-{10.0:.3g}"][0].action == DIVERGED
    assert stopped[f"cosine-{0.01:.3g}"][0].action == STOP and stopped[f"cosine-{0.01:.3g}"][1] < 0.6
    # nothing within the margin of the winner is stopped by the loss rule
    for t, (d, _) in stopped.items():
        if d.action == STOP:
            assert finals[t] > finals[winner] * (1 + p.config.margin / 2), t


def test_config_is_validated_at_the_spec_boundary():
    # The pure rules take a frozen dataclass; the user's values are validated by the spec's
    # pydantic model, converted once (orchestrator.config.pruning.prune_config).
    from dataclasses import fields

    from orchestrator.config.pruning import prune_config
    from orchestrator.config.spec import PruningSpec

    with pytest.raises(ValueError, match="grace"):
        PruningSpec(grace=1.5)
    with pytest.raises(ValueError, match="law"):
        PruningSpec(law="nope")
    assert prune_config(PruningSpec()) == PruneConfig()  # one set of defaults
    # `enabled` and `background` are how the scheduler runs the rules, not the rules' config
    assert {f.name for f in fields(PruneConfig)} == set(PruningSpec.model_fields) - {"enabled", "background"}
    assert prune_config(PruningSpec(margin=0.05, law="annealing")) == PruneConfig(margin=0.05, law="annealing")
