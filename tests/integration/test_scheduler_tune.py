"""A real Ray Tune run of simulated trials with the PrunerScheduler: bad learning rates stop early."""
from __future__ import annotations

import math

import pytest

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from orchestrator.config.pruning import trial_meta  # noqa: E402
from orchestrator.core.pruning import PruneConfig  # noqa: E402
from orchestrator.adapters.tune.scheduler import PrunerScheduler  # noqa: E402
from orchestrator.adapters.tune.trainable import run_trial  # noqa: E402
from trainers.contract import Schedule, TrialConfig  # noqa: E402
from trainers.worlds import load_world  # noqa: E402

N, D, BATCH = 100_000, 2_000_000, 2048


def test_bad_learning_rates_are_stopped_early_and_the_best_runs_to_the_end(tmp_path, local_ray):
    world = load_world("tiny")
    lr_star = float(world.lr_star(N, D))
    # The good ones first (a completed curve is the strongest reference); then a mildly low, a far
    # too low (~19 % worse at the end) and a far too high one (10× lr*: the world diverges at 6×).
    factors = {"best": 1.0, "low3": 1 / 3, "high2": 2.0, "low10": 1 / 10, "low100": 1 / 100, "high10": 10.0}
    trials = [TrialConfig(trial_id=name, n_params=N, tokens=D, lr=lr_star * f, batch_tokens=BATCH,
                          schedule=Schedule(kind="cosine"), eval_every=20, seed=3).to_dict()
              for name, f in factors.items()]
    decisions = {}
    sched = PrunerScheduler(PruneConfig(), on_decision=lambda tid, d: decisions.setdefault(tid, d))
    local_ray(2)  # the session's 2-CPU local Ray instance (conftest.py)
    tuner = tune.Tuner(
        run_trial,
        param_space={"trial": tune.grid_search(trials), "backend": "simulated", "world": "tiny"},
        tune_config=tune.TuneConfig(scheduler=sched, metric="eval_loss", mode="min", max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="prune", verbose=0),
    )
    grid = tuner.fit()
    total = trial_meta(trials[0]).total_steps
    last = {r.config["trial"]["trial_id"]: r.metrics for r in grid}
    assert set(last) == set(factors)

    # The far-too-high lr is recorded as diverged, at once, with its reason.
    assert decisions["high10"].action == "diverged"
    assert "loss" in decisions["high10"].reason
    assert last["high10"]["step"] < 0.2 * total
    # The far-too-low lr is stopped early with the prediction that justified it.
    d = decisions["low100"]
    assert d.action == "stop" and d.reason
    assert last["low100"]["step"] < 0.7 * total
    p = d.prediction
    cfg = PruneConfig()
    assert p["low"] <= p["estimate"] <= p["high"]  # a paired stop: implied by the finished leader's loss
    assert p["margin"] == (cfg.paired_margin if p.get("mode") == "paired" else cfg.margin)
    assert "reference" in p and p["fraction"] >= min(cfg.grace, cfg.paired_grace)
    # The best lr runs to the end and is never stopped.
    assert "best" not in decisions
    assert last["best"]["step"] == total and math.isfinite(last["best"]["eval_loss"])
    summary = d.summary()
    assert summary["decision"] == "stop" and "pred_estimate" in summary
