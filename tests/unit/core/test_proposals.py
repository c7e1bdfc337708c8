"""Proposals: lr and batch at the target from laws learned on the sweep's runs (planted world)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.core.proposals import fit_and_propose, learned_hparams
from trainers.contract import Schedule, TrialConfig
from trainers.simulated import final_loss
from trainers.worlds import load_world

WORLD = load_world("tiny")


def _grid_runs(noise_seed=None):
    """A grid over N x D x lr x batch in the tiny world: final losses from the simulated trainer."""
    runs = []
    for n in (1e5, 3e5, 1e6):
        for tpp in (10, 20, 40):
            for bf in (0.5, 1.0, 2.0):
                batch = int(round(WORLD.batch_star(n * tpp) * bf / 128)) * 128
                d = math.ceil(n * tpp / batch) * batch  # whole batches: D moves a little with the batch
                for lf in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0):
                    lr = float(WORLD.lr_star(n, d)) * lf
                    cfg = TrialConfig("t", n_params=int(n), tokens=d, lr=lr, batch_tokens=batch, seq_len=128,
                                      eval_every=10**9, eval_tokens=2**21, schedule=Schedule(kind="wsd"),
                                      seed=0 if noise_seed is None else noise_seed)
                    runs.append({"N": n, "D": d, "lr": lr, "batch": batch, "loss": final_loss(cfg, WORLD),
                                 "batch_factor": bf, "lr_factor": lf})
    return runs


def test_learned_laws_recover_the_planted_lr_and_batch_far_beyond_the_grid():
    runs = _grid_runs()
    diverged = [r for r in runs if not math.isfinite(r["loss"])]
    assert diverged  # the 8x lr diverges (the world's limit is 6x): censored runs are part of the input
    rule = learned_hparams(runs)
    assert rule is not None
    n, d = 3e7, 6e8  # ~3,000x the grid's largest compute
    lr, batch = rule(n, d)
    assert lr == pytest.approx(float(WORLD.lr_star(n, d)), rel=0.25)
    assert batch == pytest.approx(float(WORLD.batch_star(d)), rel=0.3)


def test_proposals_use_the_learned_laws_and_fall_back_to_the_nearest_cell():
    runs = _grid_runs()
    finished = [r for r in runs if math.isfinite(r["loss"])]
    diverged = [{k: v for k, v in r.items() if k != "loss"} for r in runs if not math.isfinite(r["loss"])]
    fit = fit_and_propose(finished, [1e17], bootstrap=0, diverged=diverged)
    p = fit.proposals[0]
    assert p["hparams_from"].startswith("learned laws")
    assert WORLD.regret({"N": p["N"], "D": p["D"], "lr": p["lr"], "batch": p["batch"]}, 1e17) < 0.02
    # one batch size and two lrs per cell: neither a bowl (needs 3 batches) nor the Step-Law
    # protocol (6 finite runs per cell) can be fitted; the nearest observed cell answers
    one = [r for r in finished if r["batch_factor"] == 1.0 and r["lr_factor"] in (0.5, 1.0)]
    assert learned_hparams(one) is None
    p = fit_and_propose(one, [1e17], bootstrap=0).proposals[0]
    assert p["hparams_from"].startswith("nearest observed cell")
