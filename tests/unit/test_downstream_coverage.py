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
    saturate it must leave the rows in). Whole sizes resampled, as the docs tell users to for checkpoints."""
    c = coverage(reps=REPS, bootstrap=RESAMPLES, cluster=True, checkpoints=8, target_N=3.2e9)  # 4x the largest N
    assert c["settings"] == [("latent-sigmoid", "tokens", 3.0)]
    # A calibrated 90 % interval covers in Binomial(200, 0.9) replications: 180 +- 4.2. The 85-95 % band
    # (170-190) is +-2.4 standard deviations: a calibrated interval passes with probability 0.987 (0.88 if its true
    # coverage is 0.875 or 0.925), so a failure means miscalibration, not bad luck; the seeds are fixed (deterministic).
    # Measured: 0.86 with these seeds; 0.89 over 600 replications with other seeds (0.888 with 200 resamples), the
    # misses mostly on the low side (the prediction a little high: mean bias +0.1 point).
    assert 0.85 <= c["coverage"] <= 0.95, c
    # The prediction interval is for one measured accuracy: it must cover a fresh evaluation at least as often.
    assert c["prediction_coverage"] >= 0.85, c  # measured: 0.945
    assert c["rows_left_out"] <= 3, c  # the saturation rule hardly ever fires on a law that does not saturate
