"""Downstream laws: planted parameters come back, warnings fire, bad inputs name the problem."""
import numpy as np
import pytest

from orchestrator.core.laws.downstream import (DownstreamError, backtest_by_size, fit_downstream,
                                          predictions_json)

TRUE = dict(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.37)
K_TRUE, L0_TRUE, CHANCE = 4.0, 2.75, 0.25


def loss_law(N, D):
    return TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]


def sigmoid(L, k=K_TRUE, L0=L0_TRUE, chance=CHANCE, ceiling=1.0):
    return chance + (ceiling - chance) / (1 + np.exp(k * (L - L0)))


def design():
    sizes = np.array([2e7, 5e7, 1e8, 2e8, 4e8])
    tpp = np.array([5, 10, 20, 40, 80])
    N = np.repeat(sizes, 5)
    return N, N * np.tile(tpp, 5)


def test_two_step_sigmoid_recovers_planted_law():
    N, D = design()
    L = loss_law(N, D)
    fit = fit_downstream(N, D, sigmoid(L), loss=L, chance=CHANCE)
    p = fit.params
    assert fit.law == "two-step-sigmoid"
    assert abs(p["loss.alpha"] - TRUE["alpha"]) < 1e-3 and abs(p["loss.E"] - TRUE["E"]) < 1e-2
    assert abs(p["acc.k"] - K_TRUE) < 1e-4 and abs(p["acc.L0"] - L0_TRUE) < 1e-5
    pred = fit.predict([2e9], [4e10])
    assert abs(pred["acc"][0] - sigmoid(loss_law(2e9, 4e10))) < 1e-3
    assert abs(pred["loss"][0] - loss_law(2e9, 4e10)) < 1e-3


def test_exponential_link_recovers_gadre_form():
    N, D = design()
    L = loss_law(N, D)
    eps, k, gamma = 0.74, 40.0, 1.6
    acc = (1 - eps) + k * np.exp(-gamma * L)
    fit = fit_downstream(N, D, acc, loss=L, link="exponential")
    assert fit.law == "two-step-exponential"
    assert abs(fit.params["acc.eps"] - eps) < 1e-4
    assert abs(fit.params["acc.gamma"] / gamma - 1) < 1e-3
    assert abs(fit.params["acc.k"] / k - 1) < 1e-2


def test_latent_fit_without_loss_predicts_the_planted_accuracy():
    N, D = design()
    acc = sigmoid(loss_law(N, D))
    fit = fit_downstream(N, D, acc, chance=CHANCE)
    assert fit.law == "latent-sigmoid" and fit.mode == "latent"
    # the latent composite is the same function: k*(L - L0) = kA/N^alpha + kB/D^beta - k(L0 - E)
    assert abs(fit.params["latent.alpha_N"] - TRUE["alpha"]) < 1e-3
    assert abs(fit.params["latent.A_N"] / (K_TRUE * TRUE["A"]) - 1) < 1e-2
    pred = fit.predict([2e9], [4e10])["acc"][0]
    assert abs(pred - sigmoid(loss_law(2e9, 4e10))) < 2e-3
    assert np.isnan(fit.predict([2e9], [4e10])["loss"][0])
    with pytest.raises(DownstreamError, match="latent"):
        fit.predict([2e9], [4e10], loss=[2.5])


def test_compute_mode_fits_a_power_law_in_C():
    C = np.geomspace(1e17, 1e21, 12)
    L = 1.9 + 2e3 * C ** -0.2
    fit = fit_downstream(C=C, acc=sigmoid(L), loss=L, chance=CHANCE)
    assert fit.scale == "C"
    assert abs(fit.params["loss.alpha"] - 0.2) < 1e-3
    assert abs(fit.predict(C=[1e23])["acc"][0] - sigmoid(1.9 + 2e3 * 1e23 ** -0.2)) < 2e-3


def test_bootstrap_intervals_bracket_the_prediction():
    rng = np.random.default_rng(3)
    N, D = design()
    L = loss_law(N, D) * np.exp(rng.normal(0, 0.01, len(N)))
    acc = rng.binomial(1000, sigmoid(loss_law(N, D))) / 1000
    fit = fit_downstream(N, D, acc, loss=L, chance=CHANCE, bootstrap=100, seed=1)
    pred = fit.predict([1e9, 2e9], [2e10, 4e10])
    assert np.all(pred["low"] < pred["acc"]) and np.all(pred["acc"] < pred["high"])
    assert np.all(pred["loss_low"] < pred["loss"]) and np.all(pred["loss"] < pred["loss_high"])
    assert "acc.k" in fit.result.intervals
    rows = predictions_json(fit, [1e9, 2e9], [2e10, 4e10])
    assert [r["N"] for r in rows] == [1e9, 2e9] and len(rows[0]["interval"]) == 2
    # using a given loss skips step 1: no loss uncertainty
    given = fit.predict([1e9], [2e10], loss=[2.4])
    assert given["loss"][0] == 2.4 and np.isnan(given["loss_low"][0])


def test_backtest_by_size_holds_out_the_largest_final_run():
    N, D = design()
    L = loss_law(N, D)
    res = backtest_by_size(N, D, sigmoid(L), loss=L, chance=CHANCE)
    assert res["n_test"] == 1 and res["points"][0]["N"] == 4e8 and res["points"][0]["D"] == 4e8 * 80
    assert res["max_abs_error_points"] < 0.1


def test_near_chance_warning():
    N, D = design()
    acc = 0.25 + 0.01 * np.linspace(0, 1, len(N))
    fit = fit_downstream(N, D, acc, loss=loss_law(N, D), chance=0.25)
    assert any("too little signal" in w for w in fit.warnings)


def test_non_monotone_warning():
    N, D = design()
    L = loss_law(N, D)
    rng = np.random.default_rng(0)
    acc = rng.permutation(sigmoid(L))
    fit = fit_downstream(N, D, acc, loss=L, chance=CHANCE)
    assert any("not monotone" in w for w in fit.warnings)
    clean = fit_downstream(N, D, sigmoid(L), loss=L, chance=CHANCE)
    assert not any("not monotone" in w or "signal" in w for w in clean.warnings)


@pytest.mark.parametrize("kwargs, message", [
    (dict(acc_scale=100.0), "outside \\[0, 1\\]"),
    (dict(chance=0.9, ceiling=0.8), "chance 0.9 is not below the ceiling 0.8"),
    (dict(chance=1.5), "chance must be in \\[0, 1\\]"),
    (dict(rows=4), "need at least"),
    (dict(nan=True), "NaN"),
    (dict(chance=[0.25, 0.5]), "chance varies"),
])
def test_bad_inputs_name_the_problem(kwargs, message):
    N, D = design()
    L = loss_law(N, D)
    acc = sigmoid(L) * kwargs.pop("acc_scale", 1.0)
    if kwargs.pop("nan", False):
        acc[3] = np.nan
    rows = kwargs.pop("rows", None)
    if rows:
        N, D, L, acc = N[:rows], D[:rows], L[:rows], acc[:rows]
    if isinstance(kwargs.get("chance"), list):
        kwargs["chance"] = np.where(np.arange(len(N)) % 2, *kwargs["chance"])
    with pytest.raises(DownstreamError, match=message):
        fit_downstream(N, D, acc, loss=L, **{"chance": CHANCE, **kwargs})


def test_missing_scale_columns():
    with pytest.raises(DownstreamError, match="need columns N and D, or C"):
        fit_downstream(None, None, [0.3, 0.4, 0.5])


def test_attach_task_predictions_to_proposals():
    from orchestrator.core.laws.downstream_proposals import attach_task_predictions

    N, D = design()
    L = loss_law(N, D)
    rows = [{"task": "cloze", "N": n, "D": d, "acc": a, "chance": CHANCE} for n, d, a in zip(N, D, sigmoid(L))]
    rows += [{"task": "nll", "N": n, "D": d, "acc": a, "loss": l, "chance": CHANCE}
             for n, d, a, l in zip(N, D, sigmoid(L), L)]
    rows += [{"task": "broken", "N": 1e8, "D": 1e9, "acc": 1.5}] * 10
    props = [{"budget": 1e20, "N": 1e9, "D": 2e10}, {"budget": 1e21, "N": 2e9, "D": 8e10}]
    out, warnings = attach_task_predictions(props, rows, bootstrap=30)
    assert "task_metrics" not in props[0]  # copies, the input is untouched
    truth = [sigmoid(loss_law(p["N"], p["D"])) for p in props]
    for o, t in zip(out, truth):
        assert set(o["task_metrics"]) == {"cloze", "nll"}
        assert o["task_metrics"]["cloze"]["law"] == "latent-sigmoid"
        assert o["task_metrics"]["nll"]["law"] == "two-step-sigmoid"
        for m in o["task_metrics"].values():
            assert abs(m["acc"] - t) < 5e-3
            assert m["interval"][0] - 1e-9 <= m["acc"] <= m["interval"][1] + 1e-9  # noise-free: a point
    assert any("broken" in w and "outside [0, 1]" in w for w in warnings)


def test_row_bootstrap_on_many_rows_per_size_warns():
    N, D = design()  # 5 rows per size
    L = loss_law(N, D)
    rows = fit_downstream(N, D, sigmoid(L), loss=L, chance=CHANCE, bootstrap=20)
    assert any("--cluster" in w for w in rows.warnings)
    clustered = fit_downstream(N, D, sigmoid(L), loss=L, chance=CHANCE, bootstrap=20, cluster=True)
    assert not any("--cluster" in w for w in clustered.warnings)
