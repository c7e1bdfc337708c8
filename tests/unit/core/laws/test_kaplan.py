"""Kaplan law: planted-truth recovery, frontier, bootstrap shape, bad inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from orchestrator.core.laws.kaplan import KaplanLaw, fit_kaplan, law_from_result
from orchestrator.core.laws.table import TableError

# Kaplan et al. (2020) Eq. 1.5 constants.
TRUTH = KaplanLaw(Nc=8.8e13, Dc=5.4e13, alphaN=0.076, alphaD=0.095)


def _data(seed, n=120, noise=0.003):
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(math.log(1e7), math.log(1e10), n))
    D = np.exp(rng.uniform(math.log(1e9), math.log(1e11), n))
    return N, D, TRUTH.predict(N, D) * np.exp(rng.normal(0, noise, n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_truth_recovery(seed):
    N, D, L = _data(seed)
    r = fit_kaplan(N, D, L)
    p = r.params
    assert p["alphaN"] == pytest.approx(TRUTH.alphaN, rel=0.03)
    assert p["alphaD"] == pytest.approx(TRUTH.alphaD, rel=0.05)
    # Nc, Dc are far outside the sampled range, so they trade off with the exponents: 30 %.
    assert p["Nc"] == pytest.approx(TRUTH.Nc, rel=0.3)
    assert p["Dc"] == pytest.approx(TRUTH.Dc, rel=0.3)
    assert not r.warnings
    # Fitted law predicts the noiseless truth well inside the noise level.
    assert np.allclose(law_from_result(r).predict(N, D), TRUTH.predict(N, D), rtol=5e-3)


def test_fit_is_deterministic_and_robust_to_outliers():
    N, D, L = _data(3)
    L2 = L.copy()
    L2[:5] *= 1.3  # five wild runs; the Huber loss (delta 1e-3) caps their pull
    a, b = fit_kaplan(N, D, L2), fit_kaplan(N, D, L2)
    assert a.params == b.params and a.objective == b.objective
    assert a.params["alphaN"] == pytest.approx(TRUTH.alphaN, rel=0.05)


def test_frontier_closed_form_matches_numeric_minimum():
    C = 1e21
    N, D, L = TRUTH.frontier(C)
    res = minimize_scalar(lambda x: float(TRUTH.predict(math.exp(x), C / (6 * math.exp(x)))),
                          bounds=(math.log(1e5), math.log(1e15)), method="bounded", options={"xatol": 1e-10})
    assert float(N) == pytest.approx(math.exp(res.x), rel=1e-6)
    assert float(D) * float(N) * 6 == pytest.approx(C, rel=1e-12)
    assert float(L) == pytest.approx(res.fun, rel=1e-9)


def test_bootstrap_intervals_and_budgets():
    N, D, L = _data(4)
    r = fit_kaplan(N, D, L, bootstrap=30, seed=0, budgets=[1e21])
    for name in ("Nc", "Dc", "alphaN", "alphaD"):
        iv = r.intervals[name]
        assert iv["low"] <= iv["estimate"] <= iv["high"] and iv["level"] == 0.9
    b = r.intervals["budgets"]["1e+21"]
    n_true, d_true, l_true = (float(x) for x in TRUTH.frontier(1e21))
    assert b["N_opt"]["low"] < b["N_opt"]["high"]
    assert b["N_opt"]["estimate"] == pytest.approx(n_true, rel=0.1)
    assert b["loss_opt"]["estimate"] == pytest.approx(l_true, rel=0.01)
    assert r.to_json()["law"] == "kaplan"


@pytest.mark.parametrize("cols, match", [
    (([1e8, 2e8, 3e8, 4e8], [1e9] * 3, [3.0] * 4), "different lengths"),
    (([1e8, 2e8, 3e8, 4e8], [1e9] * 4, [3.0, 0.0, 3.0, 3.0]), "non-positive"),
    (([1e8, float("nan"), 3e8, 4e8], [1e9] * 4, [3.0] * 4), "NaN"),
    (([1e8, 2e8, 3e8], [1e9] * 3, [3.0] * 3), "at least 4"),
])
def test_bad_inputs(cols, match):
    with pytest.raises(TableError, match=match):
        fit_kaplan(*cols)


def test_kaplan_e_is_nameable_in_the_spec_and_the_cli(tmp_path):
    """`fit.law: kaplan-E` and `scalesweep fit --law kaplan-E` fit Kaplan's form above a floor E alone."""
    import json

    from pydantic import ValidationError
    from typer.testing import CliRunner

    from orchestrator.app.cli import get_app
    from orchestrator.config.spec import FitSpec

    assert FitSpec(law="kaplan-E").law == "kaplan-E"
    with pytest.raises(ValidationError):
        FitSpec(law="kaplan-F")
    truth = {"E": 1.8172, "alphaN": 0.3478, "alphaD": 0.3658}  # the simulated kaplan world
    N = np.repeat(np.geomspace(2e7, 6e8, 6), 7)
    D = N * np.tile([2.5, 5, 10, 20, 40, 80, 160], 6)
    L = truth["E"] + ((482.0 / N**0.3478) ** (1 / 0.3658) + (2085.4 / D**0.3658) ** (1 / 0.3658)) ** 0.3658
    L = L * np.exp(np.random.default_rng(0).normal(0, 0.003, N.size))
    table = tmp_path / "runs.csv"
    table.write_text("N,D,loss\n" + "\n".join(f"{n},{d},{loss}" for n, d, loss in zip(N, D, L)) + "\n")
    res = CliRunner().invoke(get_app(), ["fit", str(table), "--law", "kaplan-E", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["form"] == "kaplan-E" and doc["extra"]["weights"] == {"kaplan-E": 1.0}
    for k, v in truth.items():  # measured: E 1.854, alphaN 0.364, alphaD 0.374 (seed 0)
        assert doc["params"][k] == pytest.approx(v, rel=0.05), k
    text = CliRunner().invoke(get_app(), ["fit", str(table), "--law", "kaplan-E"])
    assert text.exit_code == 0 and "law: kaplan-E" in text.stdout
