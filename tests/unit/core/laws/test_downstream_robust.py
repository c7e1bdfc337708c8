"""Robust latent fits (issue 18): checkpoints weighted by tokens, saturated rows of small models left
out, a warning beyond the extrapolation the backtests support. Planted truth: a latent-sigmoid law
with binomial noise; the smallest sizes lose accuracy late in training (as Pythia 70M/160M do)."""
import numpy as np
import pytest

from orchestrator.core.laws.downstream import (FAR_EXTRAPOLATION, DownstreamError, _checkpoint_weights,
                                               fit_downstream)

CHANCE = 0.25
A_N, ALPHA, A_D, BETA, C0 = 300.0, 0.3, 2000.0, 0.3, 2.5
SIZES = np.array([2e7, 5e7, 1.2e8, 3e8, 8e8])
D_FINAL = 3e11


def truth(N, D):
    z = A_N / N ** ALPHA + A_D / D ** BETA
    return CHANCE + (1 - CHANCE) / (1 + np.exp(z - C0))


def checkpoints():
    N = np.repeat(SIZES, 12)
    D = np.tile(np.geomspace(3e9, D_FINAL, 12), len(SIZES))
    return N, D


def saturating(rng, N, D):
    """Binomial noise of a 2,000-item benchmark; the two smallest sizes lose 20 points against the law over the last
    decade of training, about 10 below their peak (accuracy falling with D: no latent law has that)."""
    p = truth(N, D)
    late = np.clip(np.log(D / 3e10) / np.log(D_FINAL / 3e10), 0, 1)
    p = p - 0.2 * late * (N <= 5e7)
    return rng.binomial(2000, p) / 2000


def test_saturated_rows_are_left_out_and_the_large_model_is_predicted():
    rng = np.random.default_rng(0)
    N, D = checkpoints()
    acc = saturating(rng, N, D)
    target = truth(8e9, D_FINAL)  # 10x the largest fitted size
    robust = fit_downstream(N, D, acc, chance=CHANCE)
    naive = fit_downstream(N, D, acc, chance=CHANCE, checkpoint_weights="uniform", saturation_sigma=0)
    assert any("saturate" in w and "N 2e+07, 5e+07" in w for w in robust.warnings)
    assert not any("saturate" in w for w in naive.warnings)
    err_robust = abs(robust.predict([8e9], [D_FINAL])["acc"][0] - target)
    err_naive = abs(naive.predict([8e9], [D_FINAL])["acc"][0] - target)
    assert err_robust < 0.015, err_robust
    assert err_naive > 2 * err_robust, (err_naive, err_robust)


def test_clean_planted_law_is_recovered_with_the_robust_defaults():
    N, D = checkpoints()
    fit = fit_downstream(N, D, truth(N, D), chance=CHANCE)  # noise free: nothing saturates
    assert not any("saturate" in w for w in fit.warnings)
    assert fit.params["latent.alpha_N"] == pytest.approx(ALPHA, rel=1e-3)
    assert fit.predict([8e9], [D_FINAL])["acc"][0] == pytest.approx(truth(8e9, D_FINAL), abs=1e-4)


def test_token_weights_and_their_errors():
    N = np.array([1e7, 1e7, 1e8, 1e8, 1e8])
    D = np.array([1e9, 4e9, 1e9, 2e9, 4e9])
    assert _checkpoint_weights("tokens", N, D).tolist() == [0.25, 1.0, 0.25, 0.5, 1.0]
    assert _checkpoint_weights("uniform", N, D) == 1.0
    with pytest.raises(DownstreamError, match="checkpoint_weights"):
        _checkpoint_weights("late", N, D)
    with pytest.raises(DownstreamError, match="needs N and D"):
        _checkpoint_weights("tokens", None, None)


def test_two_step_fits_keep_uniform_weights_by_default():
    N, D = checkpoints()
    L = 2.0 + 300 / N ** 0.3 + 300 / D ** 0.3
    acc = CHANCE + (1 - CHANCE) / (1 + np.exp(4 * (L - 2.6)))
    auto = fit_downstream(N, D, acc, loss=L, chance=CHANCE)
    uniform = fit_downstream(N, D, acc, loss=L, chance=CHANCE, checkpoint_weights="uniform")
    assert auto.params == uniform.params


def test_far_extrapolation_warns():
    N, D = checkpoints()
    fit = fit_downstream(N, D, truth(N, D), chance=CHANCE)
    assert fit.prediction_warnings(N=[8e8 * FAR_EXTRAPOLATION * 0.9]) == []
    assert "backtests" in fit.prediction_warnings(N=[8e8 * FAR_EXTRAPOLATION * 1.5])[0]


def test_few_model_sizes_warn():
    N, D = checkpoints()
    three = N <= 1.2e8
    fit = fit_downstream(N[three], D[three], truth(N, D)[three], chance=CHANCE)
    assert any("only 3 model size(s)" in w for w in fit.warnings)
    assert not any("model size(s): the trend" in w for w in fit_downstream(N, D, truth(N, D), chance=CHANCE).warnings)
