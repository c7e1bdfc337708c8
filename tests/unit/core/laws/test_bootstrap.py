"""Bootstrap: intervals, cluster resampling, and the coverage property on planted truth."""
import numpy as np

from orchestrator.core.laws.bootstrap import interval, resample_weights, size_groups
from orchestrator.core.laws.chinchilla import ChinchillaLaw, fit_chinchilla, frontier_samples

TRUTH = ChinchillaLaw(E=1.8172, A=477.8, B=2143.9, alpha=0.3473, beta=0.3672)


def test_resample_weights_rows_and_clusters():
    rng = np.random.default_rng(0)
    W = resample_weights(10, 50, rng)
    assert W.shape == (50, 10) and np.all(W.sum(axis=1) == 10)
    groups = np.repeat(np.arange(4), 3)
    Wc = resample_weights(12, 50, rng, groups)
    # Rows of one group always share a count.
    assert np.all(Wc.reshape(50, 4, 3) == Wc.reshape(50, 4, 3)[:, :, :1])


def test_size_groups_merge_jittered_sizes():
    labels = size_groups(np.array([1e8, 1.00001e8, 2e8, 2.00002e8, 5e8]))
    assert list(labels) == [0, 0, 1, 1, 2]


def test_interval_methods():
    s = np.random.default_rng(0).normal(1.0, 0.1, 10_000)
    p = interval(1.0, s, 0.9, "percentile")
    assert abs(p.low - (1 - 0.1645)) < 0.01 and abs(p.high - (1 + 0.1645)) < 0.01
    b = interval(1.2, s, 0.9, "basic")
    assert abs(b.low - (2.4 - p.high)) < 1e-12
    lg = interval(1.0, np.exp(s - 1), 0.9, "percentile", log=True)
    assert lg.low > 0


def _design():
    N = np.repeat(np.geomspace(3e7, 3e9, 5), 5)
    return N, N * np.tile([5.0, 10, 20, 40, 80], 5)


def test_bootstrap_intervals_on_budgets_and_cluster_option():
    N, D = _design()
    L = TRUTH.predict(N, D) * np.exp(np.random.default_rng(5).normal(0, 0.002, len(N)))
    fit = fit_chinchilla(N, D, L, bootstrap=200, budgets=[1e21, 1e23], seed=1)
    assert fit.samples.shape == (200, 5)
    iv = fit.intervals["budgets"]["1e+23"]
    for key in ("N_opt", "D_opt", "loss_opt", "tokens_per_param"):
        assert iv[key]["low"] < iv[key]["estimate"] < iv[key]["high"], key
    assert fit.intervals["a"]["low"] < fit.law.a < fit.intervals["a"]["high"]
    cl = fit_chinchilla(N, D, L, bootstrap=200, cluster=True, seed=1)
    assert cl.result.extra["cluster"] is True
    # Same seed, same numbers.
    again = fit_chinchilla(N, D, L, bootstrap=200, budgets=[1e21, 1e23], seed=1)
    np.testing.assert_array_equal(again.samples, fit.samples)


def test_coverage_of_nominal_90_percent_intervals():
    """200 planted replications x 100 resamples: coverage of alpha and N*(1e23) in [0.85, 0.95]."""
    N, D = _design()
    C = 1e23
    n_true = TRUTH.frontier(C)["N_opt"][0]
    hits_alpha = hits_n = 0
    reps = 200
    for rep in range(reps):
        rng = np.random.default_rng(1000 + rep)
        L = TRUTH.predict(N, D) * np.exp(rng.normal(0, 0.002, len(N)))
        fit = fit_chinchilla(N, D, L, bootstrap=100, seed=rep)
        hits_alpha += interval(fit.params["alpha"], fit.samples[:, 3], 0.9).covers(TRUTH.alpha)
        n_reps = frontier_samples(fit.samples, [C])["N_opt"][:, 0]
        hits_n += interval(fit.law.frontier(C)["N_opt"][0], n_reps, 0.9, log=True).covers(n_true)
    cov_alpha, cov_n = hits_alpha / reps, hits_n / reps
    print(f"coverage alpha {cov_alpha:.3f}, N*(1e23) {cov_n:.3f}")
    assert 0.85 <= cov_alpha <= 0.95
    assert 0.85 <= cov_n <= 0.95
