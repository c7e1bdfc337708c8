"""Backtest: fit below a compute threshold, errors on the runs above it by extrapolation distance."""
import numpy as np

from orchestrator.core.laws.backtest import backtest
from orchestrator.core.laws.chinchilla import ChinchillaLaw
from tests.unit.core.laws.test_chinchilla import chinchilla_points

TRUTH = ChinchillaLaw(E=1.8172, A=477.8, B=2143.9, alpha=0.3473, beta=0.3672)


def test_backtest_on_planted_world_is_accurate_and_binned():
    rng = np.random.default_rng(0)
    N = np.repeat(np.geomspace(1e7, 1e10, 8), 6)
    D = N * np.tile([5.0, 10, 20, 40, 80, 160], 8)
    L = TRUTH.predict(N, D) * np.exp(rng.normal(0, 0.002, len(N)))
    out = backtest(N, D, L, threshold_C=1e19)
    assert out["n_train"] + out["n_test"] == len(N)
    assert out["max_train_C"] <= 1e19
    assert out["overall"]["mean_abs_rel_error"] < 0.01
    lows = [b["decades_low"] for b in out["by_distance"]]
    assert lows == sorted(lows) and sum(b["n"] for b in out["by_distance"]) == out["n_test"]


def test_backtest_on_chinchilla_points():
    N, D, L = chinchilla_points()
    out = backtest(N, D, L, threshold_C=3e20)
    # Fit on small budgets, predict up to ~1.6 decades beyond: errors stay within a few percent.
    assert out["overall"]["mean_abs_rel_error"] < 0.03
    assert out["by_distance"][-1]["decades_high"] > 1.0
