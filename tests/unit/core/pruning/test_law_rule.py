"""The law rule (orchestrator/core/pruning/rules/law.py) fits a trial's curve law on the completed runs of
its own (N, peak lr) only: lr changes a curve's shape, not only its level (issue 13, the 120k cell of
tests/data/lrsweep/curves-s2-60k-120k.csv: a law fitted on other lrs stopped the winner at 35 %).

Planted: one (N, D) cell, one cosine schedule shape, two peak lrs whose curves are the annealing law
with different parameters. The higher lr trails the lower by 9 % at 35 % of the steps and ends 5 %
ahead (the winner): it gains more from the decay, which a law with a per-run offset cannot represent.
"""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.core.laws.curves import Curve
from orchestrator.core.laws.final_loss import make_law, predict_final
from orchestrator.core.pruning import PruneConfig, Pruner, TrialMeta
from orchestrator.core.pruning.rules.law import LawConfig, LawRule

T, EVERY, WARM = 200, 5, 10
CFG = PruneConfig(law="annealing")  # cheaper than the multi-power law; the rule fits what it is told
STEPS = np.arange(EVERY, T + 1, EVERY, dtype=float)
_s = np.arange(T)
SHAPE = np.where(_s < WARM, (_s + 1) / WARM, 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * (_s - WARM + 1) / (T - WARM))))
LOW_LR, HIGH_LR = 1e-3, 3e-3


def _meta(lr: float, cell_D: float | None = None) -> TrialMeta:
    return TrialMeta(N=1e6, D=T * 2048.0, total_steps=T, lr=lr * SHAPE, flops=6e6 * T * 2048.0,
                     warmup_steps=WARM, schedule="cosine", cell_D=cell_D)


def _truth(theta) -> np.ndarray:
    law = make_law("annealing")
    law.theta = np.array(theta, float)  # L0, A, alpha, C
    return law.predict_schedule(_meta(LOW_LR).law_schedule(), STEPS)


LOW = _truth([2.0, 0.5, 0.5, 1.0])   # the lower lr
HIGH = _truth([2.4, 0.5, 0.5, 8.0])  # the higher lr: gains more from the decay (behind early, ahead at the end)


def _noisy(curve: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return curve * np.exp(rng.normal(0, 0.01) + rng.normal(0, 0.003, curve.size))


def _complete(p: Pruner, tid: str, lr: float, loss: np.ndarray) -> None:
    p.on_complete(tid, float(loss[-1]), (STEPS, loss), meta=_meta(lr))


def _run(p: Pruner, tid: str, lr: float, loss: np.ndarray, upto: float = 1.0) -> tuple[bool, list[dict]]:
    """Feed the run up to fraction ``upto``; (stopped, the law rule's predictions)."""
    preds, seen = [], None
    for s, x in zip(STEPS, loss):
        if s > upto * T:
            break
        d = p.on_report(tid, _meta(lr), {"step": s, "train_loss": x, "eval_loss": x})
        if d.stops:
            return True, preds + [d.prediction]
        if d.prediction and d.prediction.get("step") != seen:
            seen = d.prediction["step"]
            preds.append(dict(d.prediction))
    return False, preds


def test_planted_lrs_cross():
    k = int(0.35 * T / EVERY)
    assert HIGH[k] > 1.08 * LOW[k] and HIGH[-1] < 0.96 * LOW[-1]


def test_a_law_of_another_lr_would_stop_the_winner():
    # The case bites: the other lr's curve law, the trial contributing its offset (the rule before
    # issue 13's fix), predicts the winner's final above the finished run's by more than the margin.
    sched = _meta(LOW_LR).law_schedule()
    curves = [Curve(STEPS, sched.lr[STEPS.astype(int)], _noisy(LOW, i), name=f"low-{i}", warmup_steps=WARM,
                    _schedule=sched) for i in range(2)]
    law = make_law("annealing", n_boot=CFG.n_boot, seed=CFG.seed).fit(curves)
    k = int(0.35 * T / EVERY)
    high = _noisy(HIGH, 10)
    fl = predict_final(STEPS[:k], high[:k], sched, completed=law, law="annealing", level=CFG.level,
                       final_step=T, n_boot=CFG.n_boot, seed=CFG.seed)
    assert fl.low > float(_noisy(LOW, 1)[-1]) * (1 + CFG.margin)
    assert not fl.low <= float(high[-1]) <= fl.high  # ... and its interval does not cover the truth


def test_a_law_fitted_on_another_lr_is_not_used():
    # Only the other lr has completed runs (here in another cell of the size, so that no reference
    # votes and every prediction is seen): the trial is predicted from its prefix alone, exactly
    # as with no completed run of the size (`laws.final_loss.predict_final` without a law).
    p = Pruner(CFG, rules=[LawRule(LawConfig.of(CFG))])
    for i in range(2):
        p.on_complete(f"low-{i}", float(_noisy(LOW, i)[-1]), (STEPS, _noisy(LOW, i)), meta=_meta(LOW_LR, cell_D=2e6))
    high = _noisy(HIGH, 10)
    stopped, preds = _run(p, "high-0", HIGH_LR, high, upto=0.5)
    assert not stopped and preds and all(pr["mode"] == "prefix-only" for pr in preds)
    first = preds[0]
    k = int(first["step"] / EVERY)
    fl = predict_final(STEPS[:k], high[:k], _meta(HIGH_LR).law_schedule(), law="annealing", level=CFG.level,
                       final_step=T, n_boot=CFG.n_boot, seed=CFG.seed)
    assert (first["estimate"], first["low"], first["high"]) == pytest.approx(tuple(fl))


def test_a_law_of_the_same_lr_is_used_and_keeps_the_winner():
    p = Pruner(CFG, rules=[LawRule(LawConfig.of(CFG))])
    for i in range(2):
        _complete(p, f"low-{i}", LOW_LR, _noisy(LOW, i))
    _complete(p, "high-1", HIGH_LR, _noisy(HIGH, 11))  # the same lr, another seed
    high = _noisy(HIGH, 10)
    stopped, preds = _run(p, "high-0", HIGH_LR, high)
    assert not stopped and preds and all(pr["mode"] == "law" for pr in preds)
    first = preds[0]  # at 30 % of the steps
    assert first["low"] <= float(high[-1]) <= first["high"]
