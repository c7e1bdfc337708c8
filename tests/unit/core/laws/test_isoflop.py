"""IsoFLOP analysis: Porian et al.'s protocol and Hoffmann's Approach 2 on planted worlds and the Chinchilla points."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from orchestrator.core.laws.isoflop import _disagreement, approach2_budget, fit_isoflop, group_budgets, lower_envelope
from orchestrator.core.laws.isoflop_porian import interpolated_optimum, weighted_power_law
from orchestrator.core.laws.table import TableError, read_table

DATA = Path(__file__).resolve().parents[3] / "data" / "chinchilla_epoch" / "svg_extracted_data.csv"
# A Chinchilla world (Besiroglu et al. 2024 refit): a = beta / (alpha + beta) = 0.5139.
E, A, B, ALPHA, BETA = 1.8172, 477.8, 2143.9, 0.3473, 0.3672
A_TRUE = BETA / (ALPHA + BETA)
G = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
BUDGETS = [6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21]
METHODS = ("porian", "approach2")


def _world(N, D):
    return E + A / N ** ALPHA + B / D ** BETA


def _isoflop_design(seed, noise=0.002, per_budget=11, half_width=1.5, shift=(0.0, 0.0)):
    """Sizes log-spaced +-half_width e-folds around a centre shift[0]..shift[1] e-folds off the optimum."""
    rng = np.random.default_rng(seed)
    Ns, Cs = [], []
    for i, C in enumerate(BUDGETS):
        s = shift[0] + (shift[1] - shift[0]) * i / (len(BUDGETS) - 1)
        n_star = G * (C / 6) ** A_TRUE
        Ns.append(n_star * np.exp(s + np.linspace(-half_width, half_width, per_budget)))
        Cs.append(np.full(per_budget, C))
    N, C = np.concatenate(Ns), np.concatenate(Cs)
    D = C / (6 * N)
    return N, D, C, _world(N, D) + rng.normal(0, noise, len(N))


def _naive_exponent(N, L, C):
    """A parabola through every run of a budget (the old estimator), OLS of the vertices."""
    lab = group_budgets(C)
    lc, ln = [], []
    for g in np.unique(lab):
        m = lab == g
        x = np.log(N[m])
        c2, c1, _ = np.polyfit(x - x.mean(), L[m], 2)
        lc.append(np.log(C[m]).mean())
        ln.append(-c1 / (2 * c2) + x.mean())
    return np.polyfit(lc, ln, 1)[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_truth_exponent_both_methods(seed):
    N, D, C, L = _isoflop_design(seed)
    r = fit_isoflop(N, D, L)  # C from 6ND
    assert r.extra["method"] == "porian" and r.params == r.extra["methods"]["porian"]["params"]
    for m in METHODS:
        doc = r.extra["methods"][m]
        iv = doc["intervals"]["N_exp"]
        assert doc["params"]["N_exp"] == pytest.approx(A_TRUE, abs=0.03), m
        assert iv["low"] <= A_TRUE <= iv["high"], m
        assert doc["params"]["D_exp"] == pytest.approx(1 - A_TRUE, abs=0.03), m
        assert doc["n_budgets"] == 9
    # Approach 2 reads D off the budget's own (N, D) pairs: with C = 6ND exactly, the exponents sum to 1.
    a2 = r.extra["methods"]["approach2"]["params"]
    assert a2["N_exp"] + a2["D_exp"] == pytest.approx(1.0, abs=1e-9)
    # Porian interpolates loss against log D separately; the two only agree up to the grid.
    por = r.extra["methods"]["porian"]["params"]
    assert por["N_exp"] + por["D_exp"] == pytest.approx(1.0, abs=0.03)


def test_drifting_grid_biases_the_naive_parabola_not_the_protocols():
    # Wide grids (10x either side) whose centre drifts from 1.5 e-folds below the optimum to 1.5
    # above: the parabola through every run is pulled by the valley's asymmetry, more at the top.
    naive, est = [], {m: [] for m in METHODS}
    for seed in range(3):
        N, D, C, L = _isoflop_design(seed, half_width=2.3, shift=(-1.5, 1.5))
        naive.append(_naive_exponent(N, L, C))
        r = fit_isoflop(N, D, L, C, bootstrap=100, seed=seed)
        for m in METHODS:
            iv = r.extra["methods"][m]["intervals"]["N_exp"]
            est[m].append(iv["estimate"])
            assert iv["low"] <= A_TRUE <= iv["high"], (m, seed)
    # Measured over 100 replications (benchmarks.isoflop): naive +0.021, Approach 2 +0.0006, Porian -0.003.
    assert np.mean(naive) - A_TRUE > 0.015
    assert abs(np.mean(est["approach2"]) - A_TRUE) < 0.005
    assert abs(np.mean(est["porian"]) - A_TRUE) < 0.015


def test_minimum_outside_the_grid_approach2_drops_budgets_and_the_methods_disagree():
    # Grids offset so the optimum falls outside the sampled N at the largest budgets. Approach 2
    # drops every budget whose lowest run is at an edge; Porian et al.'s rule keeps a budget when
    # over half its noise replicates have an interior minimum, which noise grants on a flat edge:
    # its N* there sits inside the grid, too high, and the exponent rises (seeds 2, 3: 0.569, 0.590).
    for seed in (2, 3):
        N, D, C, L = _isoflop_design(seed, half_width=1.5, shift=(0.0, 2.0))
        r = fit_isoflop(N, D, L, C)
        a2 = r.extra["methods"]["approach2"]
        assert 4 <= a2["n_budgets"] < 9
        assert a2["params"]["N_exp"] == pytest.approx(A_TRUE, abs=0.01)
        assert a2["intervals"]["N_exp"]["low"] <= A_TRUE <= a2["intervals"]["N_exp"]["high"]
        assert r.extra["methods"]["porian"]["params"]["N_exp"] > A_TRUE + 0.04
        assert any("not bracketed" in w for w in r.warnings)
        assert any("disagree on N_exp" in w for w in r.warnings)


def test_interval_coverage_on_planted_worlds():
    # 90 % intervals; centred and drifting designs, noise known to the Porian bootstrap (0.002 nats).
    hits = {m: 0 for m in METHODS}
    reps = 0
    for design in ((0.0, 0.0), (-1.0, 1.0)):
        for seed in range(12):
            N, D, C, L = _isoflop_design(100 + seed, shift=design)
            r = fit_isoflop(N, D, L, C, bootstrap=60, seed=seed, noise_iters=400)
            reps += 1
            for m in METHODS:
                iv = r.extra["methods"][m]["intervals"]["N_exp"]
                hits[m] += iv["low"] <= A_TRUE <= iv["high"]
    # Measured 23/24 (porian) and 23/24 (approach2); benchmarks.isoflop measures more replications.
    for m in METHODS:
        assert hits[m] / reps >= 0.75, (m, hits[m], reps)


def test_budget_intervals_and_loss_opt_warning():
    N, D, C, L = _isoflop_design(3)
    r = fit_isoflop(N, D, L, C, bootstrap=100, seed=0, budgets=[1e23])
    iv = r.intervals["N_exp"]
    assert iv["low"] <= iv["estimate"] <= iv["high"]
    assert iv["high"] - iv["low"] < 0.08
    for m in METHODS:
        b = r.extra["methods"][m]["intervals"]["budgets"]["1e+23"]
        assert set(b) == {"N_opt", "D_opt"}
        assert b["N_opt"]["low"] < b["N_opt"]["estimate"] < b["N_opt"]["high"]
    assert r.intervals["budgets"] == r.extra["methods"]["porian"]["intervals"]["budgets"]
    assert any("loss_opt" in w for w in r.warnings)


def test_chinchilla_points_both_methods():
    t = read_table(DATA)
    N, C, L = t["Model Size"], t["Training FLOP"], t["loss"]
    r = fit_isoflop(N, C / (6 * N), L, C, bootstrap=200, seed=0, budgets=[5.76e23])
    # Hoffmann et al. report a = 0.49 by Approach 2, Epoch's refit 0.513. On these digitised points
    # (with stray runs off the nine budgets) we measure Porian 0.523 [0.513, 0.529] and Approach 2
    # 0.542 [0.505, 0.555] (90 %); the old parabola through every run gave 0.512.
    por, a2 = (r.extra["methods"][m]["intervals"]["N_exp"] for m in METHODS)
    assert por["estimate"] == pytest.approx(0.523, abs=0.01)
    assert a2["estimate"] == pytest.approx(0.542, abs=0.01)
    for iv in (por, a2):
        assert 0.45 < iv["low"] <= iv["estimate"] <= iv["high"] < 0.6
        assert abs(iv["estimate"] - 0.5) < 0.05
    assert r.params["N_exp"] == por["estimate"]
    assert r.extra["methods"]["approach2"]["n_budgets"] >= 9
    assert not any("disagree" in w for w in r.warnings)  # the intervals overlap
    assert r.to_json()["params"]["N_exp"] == r.params["N_exp"]


def test_disagreement_warning_fires_on_an_asymmetric_valley():
    # A valley steeper on the small-N side, more so at larger budgets: the least-squares parabola's
    # vertex slides towards the flat side, the Akima interpolation does not, so the exponents part.
    rows = []
    for i, C in enumerate(BUDGETS):
        x_star = math.log(G * (C / 6) ** A_TRUE)
        x = x_star + np.linspace(-1.2, 1.2, 13)
        u = x - x_star
        k_left = 0.02 * (1 + 1.2 * i)
        L = 2.5 - 0.05 * i + np.where(u < 0, k_left, 0.02) * u ** 2
        rows.append((np.exp(x), np.full(13, C), L))
    N, C, L = (np.concatenate(z) for z in zip(*rows))
    r = fit_isoflop(N, C / (6 * N), L, C, seed=0, noise=1e-4)
    por = r.extra["methods"]["porian"]["params"]["N_exp"]
    a2 = r.extra["methods"]["approach2"]["params"]["N_exp"]
    assert por == pytest.approx(A_TRUE, abs=0.01)
    assert a2 - por > 0.03
    assert any("disagree on N_exp" in w for w in r.warnings)


def test_disagreement_rule():
    def doc(a, lo, hi):
        return {"intervals": {"N_exp": {"estimate": a, "low": lo, "high": hi},
                              "D_exp": {"estimate": 1 - a, "low": 1 - hi, "high": 1 - lo}}}
    assert _disagreement({"a": doc(0.50, 0.48, 0.52), "b": doc(0.52, 0.50, 0.54)}) == []
    # 0.04 apart, half-widths 0.02 each: sqrt(2) * 0.02 = 0.028 < 0.04.
    out = _disagreement({"a": doc(0.50, 0.48, 0.52), "b": doc(0.54, 0.52, 0.56)})
    assert len(out) == 2 and "N_exp" in out[0] and "D_exp" in out[1]
    assert _disagreement({"a": doc(0.50, math.nan, math.nan), "b": doc(0.6, 0.59, 0.61)}) == []


def test_interpolated_optimum_and_weighted_fit():
    x = np.log(np.geomspace(1e8, 1e10, 9))
    loss = 3 + 0.1 * (x - np.log(7e8)) ** 2
    o = interpolated_optimum(x, loss, np.random.default_rng(0), iters=500)
    assert abs(o.log_opt - np.log(7e8)) < 0.03 and abs(o.log_opt_clean - np.log(7e8)) < 0.03
    # sigma floor: a third of the data spacing (noise-free replicates barely move).
    assert o.sigma == pytest.approx(0.33 * 25 * (x[-1] - x[0]) / (8 * 25 - 1), rel=0.05)
    # A minimum at the edge: no optimum.
    assert interpolated_optimum(x, 3 - 0.01 * x, np.random.default_rng(0), iters=200) is None
    lc = np.log([1e18, 1e19, 1e20])
    s, i = weighted_power_law(lc, np.stack([0.5 * lc, 0.6 * lc], axis=1), np.ones(3))
    assert s.tolist() == pytest.approx([0.5, 0.6])
    # Weights: a budget with a huge sigma barely counts.
    s, _ = weighted_power_law(lc, 0.5 * lc + np.array([0, 0, 3.0]), np.array([1, 1, 1e6]))
    assert s == pytest.approx(0.5, abs=1e-6)


def test_approach2_budget_selection():
    x = np.log(np.geomspace(1e7, 1e11, 17))
    lx = np.log(1e20 / 6) - x
    assert "not bracketed" in approach2_budget(x, lx, 3 - 0.01 * x)
    assert "< 3 distinct N" in approach2_budget(x[:2], lx[:2], np.array([3.0, 2.9]))
    # Far points that would pull a global parabola do not enter: only the window near the minimum.
    y = 3 + 0.05 * (x - np.log(1e9)) ** 2 + np.where(x > np.log(1e10), 5.0, 0.0)
    out = approach2_budget(x, lx, y)
    assert np.exp(out[0]) == pytest.approx(1e9, rel=1e-6)
    assert out[1] == pytest.approx(np.log(1e20 / 6 / 1e9), abs=1e-9)


def test_fit_is_deterministic():
    t = read_table(DATA)
    N, C, L = t["Model Size"], t["Training FLOP"], t["loss"]
    a = fit_isoflop(N, C / (6 * N), L, C, bootstrap=30, seed=5, noise_iters=200)
    b = fit_isoflop(N, C / (6 * N), L, C, bootstrap=30, seed=5, noise_iters=200)
    assert a.params == b.params and a.intervals == b.intervals and a.extra["methods"] == b.extra["methods"]


def test_method_choice_and_unknown_method():
    N, D, C, L = _isoflop_design(0)
    r = fit_isoflop(N, D, L, C, method="approach2", noise_iters=200)
    assert r.params == r.extra["methods"]["approach2"]["params"] and r.extra["method"] == "approach2"
    with pytest.raises(ValueError, match="unknown isoFLOP method"):
        fit_isoflop(N, D, L, C, method="parabola")


def test_group_budgets_merges_rounding_but_not_distinct_budgets():
    C = np.array([1e19, 1.01e19, 0.99e19, 3e19, 3.02e19, 1e20])
    labels = group_budgets(C)
    assert labels[0] == labels[1] == labels[2]
    assert labels[3] == labels[4] != labels[0]
    assert labels[5] not in (labels[0], labels[3])


def test_budget_with_too_few_sizes_is_skipped_with_warning():
    N, D, C, L = _isoflop_design(4)
    extra_N = np.array([1e8, 2e8])
    N2 = np.concatenate([N, extra_N])
    D2 = np.concatenate([D, 1e17 / (6 * extra_N)])
    L2 = np.concatenate([L, _world(extra_N, 1e17 / (6 * extra_N))])
    r = fit_isoflop(N2, D2, L2, noise_iters=200)
    assert r.extra["n_budgets"] == 9 and r.extra["methods"]["approach2"]["n_budgets"] == 9
    assert any("< 3 distinct N" in w for w in r.warnings)


def test_cli_reports_both_methods(tmp_path):
    from typer.testing import CliRunner

    from orchestrator.app.cli import get_app

    N, D, C, L = _isoflop_design(5)
    path = tmp_path / "iso.csv"
    path.write_text("N,D,loss,C\n" + "\n".join(f"{n},{d},{lo},{c}" for n, d, lo, c in zip(N, D, L, C)) + "\n")
    runner = CliRunner()
    res = runner.invoke(get_app(), ["fit", str(path), "--law", "isoflop", "--bootstrap", "50", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    for m in METHODS:
        iv = doc["extra"]["methods"][m]["intervals"]
        assert iv["N_exp"]["low"] <= iv["N_exp"]["estimate"] <= iv["N_exp"]["high"]
        assert iv["D_exp"]["low"] <= iv["D_exp"]["estimate"] <= iv["D_exp"]["high"]
    assert doc["params"]["N_exp"] == doc["extra"]["methods"]["porian"]["params"]["N_exp"]
    text = runner.invoke(get_app(), ["fit", str(path), "--law", "isoflop"])
    assert text.exit_code == 0 and "approach2" in text.stdout and "porian" in text.stdout


def test_lower_envelope_recovers_exponent_from_training_curves():
    # Approach 1 needs many D per N: each size is "trained" along a curve of D values.
    sizes = np.exp(np.linspace(math.log(2e7), math.log(2e10), 40))
    D_curve = np.exp(np.linspace(math.log(1e8), math.log(3e12), 120))
    N = np.repeat(sizes, len(D_curve))
    D = np.tile(D_curve, len(sizes))
    r = lower_envelope(N, D, _world(N, D), n_budgets=10)
    assert r.params["N_exp"] == pytest.approx(A_TRUE, abs=0.04)
    assert r.law == "isoflop-envelope" and len(r.extra["optima"]) >= 5


@pytest.mark.parametrize("cols, match", [
    (([1e8] * 6, [1e9] * 5, [3.0] * 6), "different lengths"),
    (([1e8] * 6, [1e9] * 6, [3.0, -1, 3, 3, 3, 3]), "non-positive"),
    (([1e8] * 6, [1e9] * 6, [3.0, float("nan"), 3, 3, 3, 3]), "NaN"),
    (([1e8, 2e8], [1e9] * 2, [3.0] * 2), "at least"),
    (([1e8, 2e8, 3e8, 1e8, 2e8, 3e8], [1e9] * 6, [3.0, 2.9, 3.1, 3.0, 2.9, 3.1]), "budgets"),
])
def test_bad_inputs(cols, match):
    with pytest.raises(TableError, match=match):
        fit_isoflop(*cols)


def test_falls_back_to_the_other_method_with_a_warning():
    # Three sizes a budget and a seed noise far above the valley's depth: most noise replicates put
    # Porian's argmin at an edge, so every budget is dropped; Approach 2 still fits.
    N, D, C, L = _isoflop_design(0, per_budget=3, half_width=0.7, noise=0.0)
    r = fit_isoflop(N, D, L, C, noise=1.0, noise_iters=200)
    assert r.extra["method"] == "approach2" and "porian" not in r.extra["methods"]
    assert any("reporting approach2 instead" in w for w in r.warnings)
    assert r.params["N_exp"] == pytest.approx(A_TRUE, abs=0.03)
