"""Extrapolation-first law selection (`fit_auto`): planted forms recovered, 90 % prediction intervals
that cover held-out larger models, and the backtests measured on public data."""
import json
import math

import numpy as np
import pytest

from orchestrator.core.laws.chinchilla import ChinchillaLaw, budget_key
from orchestrator.core.laws.data_constrained import C4_CHINCHILLA, DataConstrainedLaw
from orchestrator.core.laws.forms import PowerSumForm, inputs
from orchestrator.core.laws.kaplan import KaplanLaw
from orchestrator.core.laws.selection import fit_auto
from orchestrator.core.laws.table import read_table
from tests.unit.core.laws.test_chinchilla import chinchilla_points

DATABLATIONS = "tests/data/datablations/points_182.csv"

# A small-model design like an over-training testbed: 6 sizes 20M-600M x 7 token multipliers 2.5-160.
SIZES = np.geomspace(2e7, 6e8, 6)
MULTS = [2.5, 5, 10, 20, 40, 80, 160]
N_GRID = np.repeat(SIZES, len(MULTS))
D_GRID = N_GRID * np.tile(MULTS, len(SIZES))

WORLDS = {
    "chinchilla": ChinchillaLaw(E=1.7, A=4000.0, B=1200.0, alpha=0.5, beta=0.25).predict,
    "equal-exponent": ChinchillaLaw(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.35).predict,
    "chinchilla-fixed-E": ChinchillaLaw(E=0.0, A=60.0, B=120.0, alpha=0.2, beta=0.15).predict,
    "kaplan": KaplanLaw(Nc=8.8e13, Dc=5.4e13, alphaN=0.076, alphaD=0.095).predict,
}
# Kaplan's form above a floor, with the simulated `kaplan` world's numbers (trainers/worlds/kaplan.yaml):
# E + [(A/N^alpha)^(1/beta) + (B/D^beta)^(1/beta)]^beta = E + [(Nc/N)^(alpha/beta) + Dc/D]^beta.
KAPLAN_E = {"E": 1.8172, "A": 482.0, "B": 2085.4, "alpha": 0.3478, "beta": 0.3658}
KAPLAN_E_NATURAL = {"E": 1.8172, "Nc": 482.0 ** (1 / 0.3478), "Dc": 2085.4 ** (1 / 0.3658), "alphaN": 0.3478,
                    "alphaD": 0.3658}


def kaplan_e_loss(N, D, E=1.8172, A=482.0, B=2085.4, alpha=0.3478, beta=0.3658):
    """The kaplan world's L*(N, D), written as the world writes it."""
    return E + ((A / N**alpha) ** (1 / beta) + (B / D**beta) ** (1 / beta)) ** beta


WORLDS["kaplan-E"] = kaplan_e_loss
CHINCHILLA_FORM_WORLDS = ("chinchilla", "equal-exponent", "chinchilla-fixed-E")


def test_equal_exponent_form_is_the_over_training_law_in_C_and_M():
    # alpha = beta = eta: L = E + (C/6)^(-eta/2) (A M^(eta/2) + B M^(-eta/2)), C = 6ND, M = D/N.
    f = PowerSumForm("equal-exponent", tie=True, centre=(math.log(1e8), math.log(1e9)))
    p = {"E": 1.9, "A": 300.0, "B": 900.0, "alpha": 0.3, "beta": 0.3}
    th = f.from_natural(p)
    N, D = np.array([3e7, 1e9, 7e9]), np.array([1e9, 2e10, 1e12])
    C, M, h = 6 * N * D, D / N, 0.15
    expected = p["E"] + (C / 6) ** (-h) * (p["A"] * M**h + p["B"] * M**-h)
    got = np.exp(f.log_predict(th[None, :], inputs(N, D))[0])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert f.n_params == 4 and f.natural(th)["alpha"] == f.natural(th)["beta"]


@pytest.mark.parametrize("world", list(WORLDS))
def test_auto_recovers_the_planted_form(world):
    # Noise 0.3 % (log-normal). Measured over seeds 0-11: every world recovered 12/12 except
    # chinchilla-fixed-E (E = 0 nested in chinchilla) 11/12; here 6 seeds, at most one miss.
    # Kaplan + E never won on a Chinchilla-form world (seeds 0-11: weight at most 0.27, on the
    # chinchilla world; 0 on the others); on the kaplan world (its E = 0 case) 0.33 at most.
    hits = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        L = WORLDS[world](N_GRID, D_GRID) * np.exp(rng.normal(0, 0.003, N_GRID.size))
        fit = fit_auto(N_GRID, D_GRID, L, bootstrap=0)
        hits += fit.form == world
        assert fit.selection["chosen"] == fit.form and fit.form in fit.selection["reason"]
        if world in CHINCHILLA_FORM_WORLDS:
            assert fit.weights["kaplan-E"] <= 0.35, (seed, fit.weights)
    assert hits >= 5, f"{world} recovered {hits}/6"


def test_kaplan_e_recovers_the_kaplan_world():
    """Kaplan + E fitted alone recovers the kaplan world's parameters: exactly without noise; with 0.3 %
    noise (seeds 0-11) within E 0.057, alphaN 6.4 %, alphaD 3.4 %, Nc 19 %, Dc 15 % (the worst seed, 8)."""
    L = kaplan_e_loss(N_GRID, D_GRID)
    exact = fit_auto(N_GRID, D_GRID, L, bootstrap=0, forms=("kaplan-E",))
    for k, v in KAPLAN_E_NATURAL.items():
        assert exact.params[k] == pytest.approx(v, rel=1e-6), k
    tol = {"E": 0.04, "Nc": 0.3, "Dc": 0.25, "alphaN": 0.1, "alphaD": 0.06}  # E relative: 0.07 nats
    for seed in (0, 8, 3):  # seed 8 is the worst of 0-11
        rng = np.random.default_rng(seed)
        fit = fit_auto(N_GRID, D_GRID, L * np.exp(rng.normal(0, 0.003, N_GRID.size)), bootstrap=0,
                       forms=("kaplan-E",))
        for k, v in KAPLAN_E_NATURAL.items():
            assert fit.params[k] == pytest.approx(v, rel=tol[k]), (seed, k)
        assert not fit.warnings, fit.warnings


def test_auto_recovers_the_data_constrained_form_from_repeated_data():
    law = DataConstrainedLaw(**C4_CHINCHILLA, R_D_star=15.4, R_N_star=5.3)
    epochs = np.array([1, 2, 4, 8, 16, 32], float)
    N = np.repeat(np.geomspace(1e8, 2e9, 5), len(epochs))
    D = 40 * N
    U = D / np.tile(epochs, 5)
    rng = np.random.default_rng(0)
    L = law.predict(N, D, U) * np.exp(rng.normal(0, 0.003, N.size))
    fit = fit_auto(N, D, L, U, bootstrap=0)
    assert fit.form == "data-constrained"
    # Measured: weight 1.00, backtest RMS 0.42 % against >= 2.9 % for the forms that ignore U.
    assert fit.weights["data-constrained"] > 0.8
    others = [f.score for f in fit.fits if f.name != "data-constrained"]
    assert min(others) > 5 * fit.fits[-1].score


def test_prediction_intervals_cover_held_out_larger_models():
    """90 % intervals from small models cover new runs 3.5x-17x beyond the largest size (planted truth).

    An over-training design: 48 runs, 6 sizes 1e7-4e8 x 8 token multipliers 5-640 (0.25x-32x
    Chinchilla's 20); truth Besiroglu et al.'s Chinchilla fit; log-normal noise 0.5 %. Held out:
    N = 1.4e9 and 6.9e9 at 20 tokens/param, 1.4e9 at 640. Measured over 200 replications (with
    kaplan-E among the candidates and the score sd 0.28): 0.922 of 600 held-out runs covered
    (0.915, 0.90, 0.95 per point); worst |error| per replication median 0.94 %, 90th percentile
    1.56 %, maximum 2.77 %; equal-exponent chosen 195 times, chinchilla 5.

    A new run's noise is planted, so the chance that it lands in a replication's interval is
    exact: P(lo <= L* e^eps <= hi) with eps ~ N(0, 0.005^2) and L* the truth. Averaging that
    probability instead of one drawn run's hit or miss estimates the same coverage with less
    noise (a Rao-Blackwellised estimate): over those 200 replications it gave 0.915 (0.914,
    0.903, 0.928 per point) and a per-replication sd of 0.120 against 0.180 for hit-or-miss.
    So 90 replications (0.910 measured; 45 % of the CPU time of 200) have a standard error of
    0.120 / sqrt(90) = 0.0126, the same as the 200 hit-or-miss replications (0.180 / sqrt(200)
    = 0.0127) and as 600 independent Bernoulli(0.9) runs (0.0122). The band 0.85-0.95 is then
    about +-4 standard errors around 0.90: calibrated intervals fail it with probability below
    1e-4, and intervals whose true coverage is 0.80 (or 1.0: too wide) pass it about never.
    """
    from scipy.stats import norm

    truth = ChinchillaLaw(E=1.8172, A=477.8, B=2143.9, alpha=0.3473, beta=0.3672)
    sigma = 0.005
    N = np.repeat(np.geomspace(1e7, 4e8, 6), 8)
    D = N * np.tile([5, 10, 20, 40, 80, 160, 320, 640], 6)
    Nt = np.array([1.4e9, 6.9e9, 1.4e9])
    Dt = Nt * np.array([20.0, 20.0, 640.0])
    mean_t = truth.predict(Nt, Dt)
    covered = []
    for rep in range(90):
        rng = np.random.default_rng(10_000 + rep)
        L = truth.predict(N, D) * np.exp(rng.normal(0, sigma, N.size))
        fit = fit_auto(N, D, L, bootstrap=20, seed=rep)
        _, lo, hi = fit.predict_interval(Nt, Dt, level=0.9)
        assert np.all(lo < hi)
        covered.append(norm.cdf(np.log(hi / mean_t) / sigma) - norm.cdf(np.log(lo / mean_t) / sigma))
    coverage = float(np.mean(covered))
    assert 0.85 <= coverage <= 0.95, coverage


@pytest.fixture(scope="module")
def chinchilla_auto():
    N, D, L = chinchilla_points()
    return fit_auto(N, D, L, bootstrap=50, budgets=[1e23], seed=0)


def test_chinchilla_points_backtests(chinchilla_auto):
    """Measured leave-the-largest-out errors on Epoch's 240 Chinchilla points (documented in docs/fitting.md).

    The largest size is a single run; the top compute decade holds 19 runs.
    """
    fit = chinchilla_auto
    assert fit.form == "equal-exponent"
    measured = {  # form: (largest size |rel err|, top decade mean |rel err|, top decade worst)
        "chinchilla": (0.0140, 0.0095, 0.0293),
        "equal-exponent": (0.0107, 0.0086, 0.0298),
        "chinchilla-fixed-E": (0.0019, 0.0271, 0.0757),
        "kaplan": (0.0181, 0.0243, 0.0487),
        "kaplan-E": (0.0058, 0.0123, 0.0253),
    }
    for f in fit.fits:
        bs, bc = f.backtests["largest_size"], f.backtests["largest_compute_decade"]
        assert bs["n_test"] == 1 and bc["n_test"] == 19
        got = (bs["max_abs_rel_error"], bc["mean_abs_rel_error"], bc["max_abs_rel_error"])
        np.testing.assert_allclose(got, measured[f.name], atol=2e-4, err_msg=f.name)
        assert bc["by_distance"] and sum(b["n"] for b in bc["by_distance"]) == 19


def test_auto_fit_is_a_drop_in_for_proposals(chinchilla_auto):
    fit = chinchilla_auto
    fr = fit.law.frontier([1e23])
    assert set(fr) == {"N_opt", "D_opt", "loss_opt", "tokens_per_param"}
    iv = fit.intervals["budgets"][budget_key(1e23)]
    for key in ("N_opt", "D_opt", "loss_opt", "tokens_per_param"):
        assert iv[key]["low"] < iv[key]["estimate"] < iv[key]["high"], key
    assert math.isclose(iv["N_opt"]["estimate"], fr["N_opt"][0], rel_tol=1e-9)
    # The frontier minimises the law along C = 6ND.
    n = fr["N_opt"][0] * np.array([0.9, 1.0, 1.1])
    losses = fit.law.predict(n, 1e23 / (6 * n))
    assert losses[1] <= losses.min() + 1e-12
    assert set(fit.params) == {"E", "A", "B", "alpha", "beta"}
    json.dumps(fit.to_json(), allow_nan=False)
    loss, lo, hi = fit.predict_interval([1e9], [2e10])
    assert lo[0] < loss[0] < hi[0]


def test_datablations_backtests():
    """Measured on the 182 runs of Muennighoff et al.'s outlier-removed fit (with unique tokens U)."""
    t = read_table(DATABLATIONS)
    fit = fit_auto(t["N_params"], t["D_tokens_seen"], t["val_loss"], t["U_unique_tokens"], bootstrap=0)
    measured = {  # form: (largest size RMS log error, top compute decade RMS log error)
        "chinchilla": (0.0187, 0.0399),
        "equal-exponent": (0.0185, 0.0532),
        "chinchilla-fixed-E": (0.0390, 0.0259),
        "kaplan": (0.0361, 0.0355),
        "kaplan-E": (0.0159, 0.0275),
        "data-constrained": (0.0249, 0.0493),
    }
    for f in fit.fits:
        got = (f.backtests["largest_size"]["rmse_log"], f.backtests["largest_compute_decade"]["rmse_log"])
        np.testing.assert_allclose(got, measured[f.name], atol=5e-4, err_msg=f.name)
        assert f.backtests["largest_size"]["n_test"] == 7 and f.backtests["largest_compute_decade"]["n_test"] == 26
    assert fit.form in measured and sum(fit.weights.values()) == pytest.approx(1.0)


def test_e_prior_forms_win_with_a_right_prior_and_lose_with_a_wrong_one():
    # Equal-exponent world with E = 1.8. Measured, seeds 0-5: with --e-prior 1.8 the 3-parameter
    # equal-exponent-fixed-E form is chosen every time (weights 0.50-0.94); with 1.2 it gets 0.
    truth = WORLDS["equal-exponent"]
    for seed in range(3):
        rng = np.random.default_rng(seed)
        L = truth(N_GRID, D_GRID) * np.exp(rng.normal(0, 0.003, N_GRID.size))
        right = fit_auto(N_GRID, D_GRID, L, bootstrap=0, e_prior=1.8)
        assert right.form == "equal-exponent-fixed-E" and right.params["E"] == 1.8
        wrong = fit_auto(N_GRID, D_GRID, L, bootstrap=0, e_prior=1.2)
        assert wrong.form in ("equal-exponent", "chinchilla")
        assert wrong.weights["equal-exponent-fixed-E"] < 0.05
