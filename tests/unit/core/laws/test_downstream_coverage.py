"""Planted truth: data drawn from a known two-step law; the 90 % bootstrap intervals of the
predicted accuracy (and loss) at a 4x-larger model must cover the truth in 85-95 % of 200 replications:
with the loss measured (two-step fit) and without it (the latent fit and its robust defaults)."""
import numpy as np

from benchmarks.downstream import coverage
from orchestrator.core.laws.downstream import fit_downstream

TRUE = dict(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.37)
K, L0, CHANCE = 4.0, 2.75, 0.25
REPS, RESAMPLES = 200, 100
TARGET = (1.6e9, 3.2e10)  # 4x the largest N, 20 tokens/param; true accuracy 0.869


def loss_law(N, D):
    return TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]


def accuracy(L):
    return CHANCE + (1 - CHANCE) / (1 + np.exp(K * (L - L0)))


def test_two_step_intervals_cover_the_planted_accuracy():
    sizes = np.array([2e7, 5e7, 1e8, 2e8, 4e8])
    N = np.repeat(sizes, 5)
    D = N * np.tile([5, 10, 20, 40, 80], 5)
    L_true = loss_law(N, D)
    acc_true = accuracy(L_true)
    L_t = loss_law(*TARGET)
    a_t = accuracy(L_t)
    cover_acc = cover_loss = 0
    for r in range(REPS):
        rng = np.random.default_rng(1000 + r)
        L = L_true * np.exp(rng.normal(0.0, 0.01, len(N)))  # 1 % noise on the task loss
        acc = rng.binomial(1000, acc_true) / 1000  # a 1,000-item benchmark
        fit = fit_downstream(N, D, acc, loss=L, chance=CHANCE, bootstrap=RESAMPLES, seed=r)
        p = fit.predict([TARGET[0]], [TARGET[1]])
        cover_acc += bool(p["low"][0] <= a_t <= p["high"][0])
        cover_loss += bool(p["loss_low"][0] <= L_t <= p["loss_high"][0])
    # measured: 0.915 and 0.915
    assert 0.85 <= cover_acc / REPS <= 0.95, cover_acc / REPS
    assert 0.85 <= cover_loss / REPS <= 0.95, cover_loss / REPS


def test_latent_intervals_with_the_robust_defaults_cover_the_planted_accuracy():
    """The latent fit (no loss column) with its robust defaults: benchmarks.downstream's planted two-step law (the
    latent fit composes the two steps: k (L - L0) = kA/N^alpha + kB/D^beta - k (L0 - E), so the truth is inside the
    latent law), 5 sizes x 8 checkpoints of one run each (D 3e9-3e11), a 1,000-item benchmark at every checkpoint, so
    the defaults act: rows weighted by D / the size's final D, the saturation rule run (on a law that does not
    saturate it must leave the rows in). Sizes are the unit (cluster=True), as the docs tell users for checkpoints:
    the intervals come from the CR2 variance of the linearised fit (orchestrator/core/laws/cr2.py), so 10 bootstrap
    resamples (the parameters' intervals only) keep the test cheap."""
    c = coverage(reps=REPS, bootstrap=10, cluster=True, checkpoints=8, target_N=3.2e9)  # 4x the largest N
    assert c["settings"] == [("latent-sigmoid", "tokens", 3.0)]
    # A calibrated 90 % interval covers in Binomial(200, 0.9) replications: 180 +- 4.2. The 85-95 % band
    # (170-190) is +-2.4 standard deviations: a calibrated interval passes with probability 0.987 (0.88 if its true
    # coverage is 0.875 or 0.925), so a failure means miscalibration, not bad luck; the seeds are fixed (deterministic).
    # Measured: 0.890 with these seeds (0.910 over 400 replications, benchmarks/downstream_intervals.py; the
    # leave-one-size-out jackknife before it: 0.915; the cluster bootstrap's percentile interval: 0.860).
    assert 0.85 <= c["coverage"] <= 0.95, c
    # The prediction interval is for one measured accuracy: it must cover a fresh evaluation at least as often.
    assert c["prediction_coverage"] >= 0.85, c  # measured: 0.955
    assert c["rows_left_out"] <= 3, c  # the saturation rule hardly ever fires on a law that does not saturate


def test_latent_intervals_hold_with_four_model_sizes():
    """Few sizes, where the cluster bootstrap failed: with 4 sizes its 90 % percentile interval covered the truth in
    0.68 of replications (0.29 with 3 sizes): a resample holds ~2.7 distinct sizes, on which the trend in N is barely
    identified and the refits stay near their start. CR2 with the exact working-model t: measured 0.91 here (0.865
    on the benchmark's 200 replications, benchmarks.downstream --coverage, 0.897 over 400; the leave-one-size-out
    jackknife with t(G - 1) before it: 0.91 here, 0.885 and 0.920). 100
    replications (cost): a calibrated interval covers 90 +- 3; the bounds are 2.3 sd below / 2.3 sd above, and the
    old interval fails them (0.66 on these seeds)."""
    c = coverage(reps=100, bootstrap=10, cluster=True, checkpoints=8, target_N=3.2e9, sizes=4, seed=7000)
    assert 0.83 <= c["coverage"] <= 0.97, c


def test_cluster_intervals_from_the_linearised_fit():
    """Sizes as the unit: the CR2 interval of the linearised fit (both steps of a two-step fit); several rows at once
    give each row's own interval, a given loss leaves only step 2's uncertainty, and the prediction interval (one
    measured accuracy) contains the interval of the law's mean."""
    from benchmarks.downstream import PLANTED_SIZES, planted_accuracy

    N = np.repeat(PLANTED_SIZES, 6)
    D = np.tile(np.geomspace(3e9, 3e11, 6), len(PLANTED_SIZES))
    acc = np.random.default_rng(3).binomial(1000, planted_accuracy(N, D)) / 1000
    fit = fit_downstream(N, D, acc, chance=0.25, bootstrap=5, cluster=True)
    assert fit.result.extra["prediction_intervals"] == "CR2 cluster-robust, exact working-model t"
    both = fit.predict([3.2e9, 8e8], [3e11, 3e11])
    for i, n in enumerate((3.2e9, 8e8)):
        one = fit.predict([n], [3e11])
        assert np.isclose(one["low"][0], both["low"][i]) and np.isclose(one["high"][0], both["high"][i])
    p = fit.predict([3.2e9], [3e11])
    assert p["pred_low"][0] <= p["low"][0] < p["acc"][0] < p["high"][0] <= p["pred_high"][0]
    # farther out, wider
    assert both["high"][0] - both["low"][0] > both["high"][1] - both["low"][1]

    D = N * np.tile([5, 10, 20, 40, 80, 160], 5)
    rng = np.random.default_rng(4)
    L = loss_law(N, D) * np.exp(rng.normal(0.0, 0.01, len(N)))  # 1 % noise on the task loss
    two = fit_downstream(N, D, rng.binomial(1000, accuracy(loss_law(N, D))) / 1000, loss=L, chance=CHANCE,
                         bootstrap=5, cluster=True)
    q = two.predict([TARGET[0]], [TARGET[1]])
    given = two.predict(loss=q["loss"])  # the same loss, given: step 1's uncertainty gone
    assert np.isclose(given["acc"][0], q["acc"][0])
    assert given["high"][0] - given["low"][0] < q["high"][0] - q["low"][0]
    assert q["loss_low"][0] < q["loss"][0] < q["loss_high"][0] and np.isnan(given["loss_low"][0])
