"""Schedule-aware loss-curve laws: schedule features, planted-truth recovery, the published protocol."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.core.laws.annealing import AnnealingLaw, annealing_area
from orchestrator.core.laws.curves import Curve, per_step_schedule
from orchestrator.core.laws.curve_law import _huber, _huber_pseudo
from orchestrator.core.laws.multipower import PARAMS, PRIOR, MultiPowerLaw

DATA = Path(__file__).resolve().parents[3] / "data" / "multipowerlaw"
TRAIN = ["cosine_24000", "constant_24000", "wsdcon_9"]
PUBLISHED = {  # thu-yao-01-luo/MultiPowerLaw README: L0, A, alpha, B, C, beta, gamma
    "25": [3.04045406, 0.52468604, 0.50786857, 363.78751622, 2.06560812, 0.58279013, 0.64142257],
    "100": [2.6514477, 0.60115152, 0.45295811, 437.9464276, 2.13245612, 0.59785199, 0.65523644],
}
TEST = ["cosine_72000", "constant_72000", "wsd_20000_24000", "wsdld_20000_24000", "wsdcon_3", "wsdcon_18"]


def load(size: str, names: list[str]) -> list[Curve]:
    return [Curve.from_file(DATA / f"csv_{size}" / f"{n}.csv", warmup_steps=2160) for n in names]


def cosine(T: int, warm: int = 500, peak: float = 3e-4, end: float = 3e-5) -> np.ndarray:
    s = np.arange(T + 1, dtype=float)
    lr = end + 0.5 * (peak - end) * (1 + np.cos(np.pi * (s - warm) / (T - warm)))
    lr[: warm + 1] = np.linspace(0, peak, warm + 1)
    return lr


def wsd(T: int, decay_start: int, warm: int = 500, peak: float = 3e-4, end: float = 3e-5) -> np.ndarray:
    s = np.arange(T + 1, dtype=float)
    lr = np.full(T + 1, peak)
    lr[: warm + 1] = np.linspace(0, peak, warm + 1)
    tail = s >= decay_start
    lr[tail] = peak + (end - peak) * (s[tail] - decay_start) / (T - decay_start)
    return lr


def logged(lr: np.ndarray, every: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    steps = np.arange(start, len(lr), every)
    return steps.astype(float), lr[steps]


def test_per_step_schedule_detects_warmup_and_places_step_drops():
    steps = np.array([0, 100, 200, 300, 400, 500, 600, 700], dtype=float)
    lr = np.array([0, 1, 2, 2, 2, 1, 1, 1], dtype=float)
    sch = per_step_schedule(steps, lr)
    assert sch.warmup_end == 200  # the lr stops rising at the third log
    assert sch.lr[150] == pytest.approx(1.5)  # ramps are interpolated
    # 400 -> 500 changes with flat neighbours: a step drop, placed at the later log
    assert sch.lr[499] == 2 and sch.lr[500] == 1
    # a log that starts late gets a linear warmup from 0 over warmup_steps, then holds
    late = per_step_schedule(np.array([2176.0, 2304.0]), np.array([3e-4, 3e-4]), warmup_steps=2160)
    assert late.warmup_end == 2160 and late.lr[0] == 0 and late.lr[1080] == pytest.approx(1.5e-4)
    assert late.lr[2170] == pytest.approx(3e-4)


def test_forward_area_warmup_modes():
    sch = per_step_schedule(np.array([0.0, 10.0, 20.0]), np.array([0.0, 1.0, 1.0]))
    assert sch.warmup_end == 10
    t = np.array([20.0])
    assert sch.forward_area(t, "actual")[0] == pytest.approx(sum(k / 10 for k in range(1, 11)) + 10)
    assert sch.forward_area(t, "peak")[0] == pytest.approx(20.0)
    assert sch.forward_area(t, "none")[0] == pytest.approx(11.0)  # steps 10..20 at lr 1


def test_annealing_area_is_the_momentum_recursion():
    lr = wsd(3000, 2000)
    sch = per_step_schedule(np.arange(3001.0), lr)
    s2 = annealing_area(sch, 0.99)
    m, ref = 0.0, np.zeros(3001)
    for i in range(1, 3001):
        m = 0.99 * m + ((lr[i - 1] - lr[i]) if i > sch.warmup_end else 0.0)
        ref[i] = ref[i - 1] + m
    np.testing.assert_allclose(s2, ref, rtol=1e-10, atol=1e-15)


def test_binned_drop_sum_matches_exact_sum():
    curve = load("25", ["cosine_24000"])[0]
    theta = {"L0": 3.04, "A": 0.525, "alpha": 0.508, "B": 363.8, "C": 2.066, "beta": 0.583, "gamma": 0.641}
    preds = []
    for bw in (1, 16):
        law = MultiPowerLaw(bin_width=bw)
        law.eta_ref = 3e-4
        law.theta = law.internal(theta)
        preds.append(law.predict_schedule(curve.schedule, curve.step))
    assert np.max(np.abs(preds[0] - preds[1])) < 1e-4  # far below the loss noise (~1e-3)


def _planted(law, lrs, every=100):
    curves = []
    for lr in lrs:
        steps, lr_logged = logged(lr, every)
        sch = per_step_schedule(steps, lr_logged)
        keep = steps >= sch.warmup_end
        loss = law.predict_schedule(sch, steps[keep])
        curves.append(Curve(steps[keep], lr_logged[keep], loss, warmup_steps=sch.warmup_end))
    return curves


def test_multipower_recovers_planted_truth():
    truth = MultiPowerLaw()
    truth.eta_ref = 3e-4
    params = {"L0": 2.9, "A": 0.5, "alpha": 0.5, "B": 400.0, "C": 2.0, "beta": 0.6, "gamma": 0.6}
    truth.theta = truth.internal(params)
    train = _planted(truth, [cosine(8000), wsd(8000, 6000), np.r_[cosine(8000)[:501], np.full(7500, 3e-4)]])
    held = _planted(truth, [wsd(16000, 12000)])[0]
    law = MultiPowerLaw(prior_weight=0.0).fit(train)
    m = law.metrics(held)
    assert m["worst_rel_error"] < 2e-3  # a 2x longer, unseen schedule
    assert law.params["L0"] == pytest.approx(2.9, abs=0.1)
    assert law.params["alpha"] == pytest.approx(0.5, abs=0.1)


def test_annealing_recovers_planted_truth_with_noise():
    truth = AnnealingLaw()
    truth.theta = np.array([2.8, 0.6, 0.45, 0.4])
    train = _planted(truth, [cosine(10000), wsd(10000, 8000)])
    rng = np.random.default_rng(0)
    for c in train:
        c.loss = c.loss * np.exp(rng.normal(0, 5e-4, c.loss.shape))
    law = AnnealingLaw().fit(train)
    p = law.params
    assert p["L0"] == pytest.approx(2.8, abs=0.05)
    assert p["alpha"] == pytest.approx(0.45, abs=0.05)
    assert p["C"] == pytest.approx(0.4, rel=0.1)


def test_warmup_losses_are_never_fitted():
    truth = AnnealingLaw()
    truth.theta = np.array([2.8, 0.6, 0.45, 0.4])
    lr = cosine(6000)
    steps, lr_logged = logged(lr, 50)
    sch = per_step_schedule(steps, lr_logged)
    loss = np.full(steps.shape, 9.0)  # garbage during warmup
    post = steps >= sch.warmup_end
    loss[post] = truth.predict_schedule(sch, steps[post])
    curve = Curve(steps, lr_logged, loss)
    assert curve.schedule.warmup_end == 500 and not curve.fit_mask[: 10].any()
    law = AnnealingLaw().fit([curve])
    assert law.params["L0"] == pytest.approx(2.8, abs=0.05)


def _protocol(law, size):
    law.fit(load(size, TRAIN))
    ms = [law.metrics(c) for c in load(size, TEST)]
    return (
        float(np.mean([m["r2"] for m in ms])),
        float(np.mean([m["mean_rel_error"] for m in ms])),
        float(max(m["worst_rel_error"] for m in ms)),
    )


# Measured (docs/curves.md, `python -m benchmarks.curve_laws`): 25M mean 0.118 %, worst 0.70 %;
# 100M mean 0.136 %, worst 0.70 % (published: 0.110 % / 0.142 %). Bounds: the targets.
@pytest.mark.parametrize("size", ["25", "100"])
def test_multipower_published_protocol(size):
    law = MultiPowerLaw().fit(load(size, TRAIN))
    ms = [law.metrics(c) for c in load(size, TEST)]
    assert np.mean([m["r2"] for m in ms]) >= 0.997
    assert np.mean([m["mean_rel_error"] for m in ms]) <= 0.0025  # issue 12: mean <= 0.25 %
    assert max(m["worst_rel_error"] for m in ms) <= 0.01  # issue 12: every point within 1 %
    # The drop shape stays near the published one, not the degenerate shapes an unregularised
    # fit drifts to (beta -> 0.01 with B -> 5000 at 25M; C -> 0 with gamma -> 1.35 at 100M).
    assert 0.3 <= law.params["beta"] <= 1.0 and 1.0 <= law.params["C"] <= 4.0


@pytest.mark.parametrize("size,mean", [("25", 0.00110), ("100", 0.00142)])
def test_published_parameters_reproduce_the_published_errors(size, mean):
    """The law as we compute it, with the authors' fitted parameters (and their code's warmup
    handling), gives their reported mean error: the formula and the protocol are theirs."""
    law = MultiPowerLaw(warmup_drops=True)
    law.eta_ref = 3e-4
    law.theta = law.internal(dict(zip(PARAMS, PUBLISHED[size])))
    ms = [law.metrics(c) for c in load(size, TEST)]
    assert np.mean([m["mean_rel_error"] for m in ms]) == pytest.approx(mean, abs=6e-5)


def test_shape_prior_is_gaussian_and_effective():
    """The prior on (C, beta, gamma) is a quadratic penalty outside the Huber loss: a large weight
    pins the shape at the prior centre; a zero weight leaves it free."""
    curves = load("100", TRAIN)
    pinned = MultiPowerLaw(prior_weight=10.0).fit(curves).params
    for k, v in PRIOR.items():
        assert pinned[k] == pytest.approx(v, rel=0.02)
    law = MultiPowerLaw(prior_weight=0.0)
    law.eta_ref = 3e-4
    theta = law.internal({"L0": 2.7, "A": 0.6, "alpha": 0.45, "B": 500.0, "C": 1.0, "beta": 0.5, "gamma": 0.5})
    assert law._prior(theta)[0].size == 0


def test_huber_pseudo_residuals():
    r = np.array([-5e-3, -1e-3, -2e-4, 0.0, 3e-4, 1e-3, 2e-2])
    f, df = _huber_pseudo(r)
    np.testing.assert_allclose(0.5 * f * f, _huber(r), rtol=1e-12, atol=1e-18)
    h = 1e-9
    num = (_huber_pseudo(r + h)[0] - _huber_pseudo(r - h)[0]) / (2 * h)
    np.testing.assert_allclose(df, num, rtol=1e-5)


# Measured: 25M R² 0.99793, mean 0.00141, worst 0.0097; 100M R² 0.99778, mean 0.00154, worst 0.0121.
@pytest.mark.parametrize("size", ["25", "100"])
def test_annealing_published_protocol(size):
    r2, mean, worst = _protocol(AnnealingLaw(), size)
    assert r2 >= 0.996
    assert mean <= 0.002
    assert worst <= 0.014


@pytest.mark.parametrize("Law", [MultiPowerLaw, AnnealingLaw])
def test_warm_refit_matches_the_cold_fit(Law):
    """The pruner refits a size's law from its previous fit as runs complete: one local fit from
    the warm start must land where the full multi-start fit lands (published 100M curves)."""
    curves = load("100", TRAIN)
    cold = Law().fit(curves)
    for warm in (Law().fit(curves[:2]), Law().fit(load("25", TRAIN))):  # fewer curves; another size
        refit = Law().fit(curves, warm=warm)
        assert refit.result.objective <= cold.result.objective * 1.01 + 1e-9
        for c in load("100", TEST):
            assert refit.metrics(c)["worst_rel_error"] <= cold.metrics(c)["worst_rel_error"] + 1e-3


def test_predict_interval_brackets_and_widens_with_horizon():
    law = AnnealingLaw(n_boot=20).fit(load("100", TRAIN))
    c = load("100", ["cosine_72000"])[0]
    est, lo, hi = law.predict_interval(c.step, c.lr, level=0.9, warmup_steps=2160)
    assert np.all(lo <= est) and np.all(est <= hi)
    width = hi - lo
    assert width[-1] > width[np.searchsorted(c.step, 20000)]  # beyond the training horizon
    # On the training curves the 90 % band covers most observed points (measured 75–87 %).
    # It is a fit-uncertainty band: on other schedules the law's systematic error dominates
    # (cosine_72000: 13 % covered), which predict_final's model-error term accounts for.
    for train in load("100", TRAIN):
        e, lo_t, hi_t = law.predict_interval(train.step, train.lr, level=0.9, warmup_steps=2160)
        assert ((train.loss >= lo_t) & (train.loss <= hi_t)).mean() >= 0.7
