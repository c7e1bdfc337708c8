"""`fit_auto` compares the candidate forms on the same backtests (issue 12: a form skipped on a backtest
it cannot run was scored on the others alone, so forms were ranked on different held-out runs)."""
import math

import numpy as np
import pytest

from orchestrator.core.laws.selection import fit_auto


def _small_design(seed: int = 0):
    """4 sizes 2e7-1e8 x 20, 40, 80 tokens/param (12 runs): the compute-decade backtest trains on 6 runs,
    enough for the 4-parameter forms (n_params + 2 = 6), too few for the 5-parameter ones."""
    N = np.repeat(np.geomspace(2e7, 1e8, 4), 3)
    D = N * np.tile([20.0, 40.0, 80.0], 4)
    L = 1.8172 + 477.8 * N**-0.3473 + 2143.9 * D**-0.3672
    return N, D, L * np.exp(np.random.default_rng(seed).normal(0, 0.003, N.size))


def _rmse(f, name):
    return f.backtests[name]["rmse_log"]


def test_a_backtest_a_form_cannot_run_is_imputed_from_the_forms_that_ran_both():
    N, D, L = _small_design()
    fit = fit_auto(N, D, L, forms=("chinchilla", "equal-exponent", "chinchilla-fixed-E"), bootstrap=0)
    fits = {f.name: f for f in fit.fits}
    ran = {k: sorted(b for b, bt in f.backtests.items() if "rmse_log" in bt) for k, f in fits.items()}
    # the 5-parameter form cannot be refitted on the 6 runs of the compute-decade backtest; the others can
    assert ran == {"chinchilla": ["largest_size"],
                   "equal-exponent": ["largest_compute_decade", "largest_size"],
                   "chinchilla-fixed-E": ["largest_compute_decade", "largest_size"]}
    assert fit.selection["common_backtests"] == ["largest_size", "largest_compute_decade"]
    # log score = form effect + backtest effect: chinchilla's compute-decade error is its largest-size
    # error times the mean ratio (geometric) of the two backtests over the forms that ran both
    both = [fits["equal-exponent"], fits["chinchilla-fixed-E"]]
    ratio = math.exp(np.mean([math.log(_rmse(f, "largest_compute_decade") / _rmse(f, "largest_size")) for f in both]))
    ch = fits["chinchilla"]
    assert ch.imputed == {"largest_compute_decade": pytest.approx(_rmse(ch, "largest_size") * ratio, rel=1e-12)}
    assert ch.score == pytest.approx(_rmse(ch, "largest_size") * (1 + ratio) / 2, rel=1e-12)
    assert ch.score > _rmse(ch, "largest_size")  # the old rule's score: the easier backtest alone
    for f in both:
        assert not f.imputed and f.score == pytest.approx(np.mean([bt["rmse_log"] for bt in f.backtests.values()]))
    doc = fit.selection["candidates"]["chinchilla"]
    assert doc["imputed_backtests"] == ch.imputed and "largest_compute_decade" not in doc["backtests"]
    assert "(a backtest a form could not run: imputed)" in fit.selection["reason"]
    # a form's own intervals use only the backtests it ran (nothing imputed there)
    assert fits["chinchilla-fixed-E"].backtests["largest_compute_decade"]["n_train"] == 6


def test_with_room_for_every_form_nothing_is_imputed():
    N = np.repeat(np.geomspace(2e7, 4e8, 5), 4)
    D = N * np.tile([5.0, 20, 80, 320], 5)
    L = (1.8 + 480 * N**-0.35 + 2100 * D**-0.35) * np.exp(np.random.default_rng(0).normal(0, 0.003, N.size))
    fit = fit_auto(N, D, L, forms=("chinchilla", "equal-exponent"), bootstrap=0)
    assert fit.selection["common_backtests"] == ["largest_size", "largest_compute_decade"]
    for f in fit.fits:
        assert not f.imputed
        assert f.score == pytest.approx(np.mean([bt["rmse_log"] for bt in f.backtests.values()]), rel=1e-12)
