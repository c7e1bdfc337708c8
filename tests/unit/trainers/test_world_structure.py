"""Optional world structure (issue 13): each feature changes the world as documented, defaults change nothing.

Planted-truth checks: every field's closed form, the brute-force optimum against `optimum`
(closed form or numeric search), and the simulated trainer's noise-free endpoint against
`true_loss`. docs/worlds.md documents every field tested here.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from trainers.contract import Schedule, TrialConfig
from trainers.simulated import train
from trainers.worlds import World, WorldError, bundled_worlds, load_world, world_from_dict

ROOT = Path(__file__).resolve().parents[3]
NEW_WORLDS = {"bent": 1e17, "repeated": 1e17, "kaplan": 1e22, "crossing": 1e22}


def tiny_doc() -> dict:
    return yaml.safe_load((ROOT / "trainers/worlds/tiny.yaml").read_text())


def world(**sections) -> World:
    """tiny, quiet, with some sections updated."""
    d = tiny_doc()
    for sec, upd in sections.items():
        d[sec].update(upd)
    return world_from_dict(d).without_noise()


def final(w: World, N, D, lr, b, schedule=None, eval_every=0, seed=0):
    cfg = TrialConfig("t", n_params=int(N), tokens=int(D), lr=lr, batch_tokens=int(b), seq_len=1,
                      eval_every=eval_every, seed=seed, **({"schedule": schedule} if schedule else {}))
    reps: list[dict] = []
    s = train(cfg, reps.append, w)
    return reps, s


# ------------------------------------------------------------------ defaults change nothing

def test_every_optional_field_at_its_default_is_the_old_world():
    d = tiny_doc()
    d["loss"].update(form="chinchilla", interaction=None, repetition=None)
    d["lr"].update(N_quad=0.0, D_quad=0.0, ref_N=1.0, ref_D=1.0, batch_exp=0.0)
    d["batch"].update(D_quad=0.0, ref_D=1.0)
    d["bowl"].update(lr_width_above=None)
    d["divergence"].update(N_exp=0.0, ref_N=1.0)
    d["curve"].update(lr_shape=0.0, lr_shape_power=1.0)
    d["noise"].update(tail_df=None, outlier_prob=0.0, outlier_scale=0.02)
    explicit, tiny = world_from_dict(d), load_world("tiny")
    assert explicit.fingerprint() == tiny.fingerprint() == "ac49ee9b6e5c"  # recorded before issue 13
    assert load_world("chinchilla").fingerprint() == "5a7734825618"
    cfg = TrialConfig("t", n_params=300_000, tokens=6_000_000, lr=0.05, batch_tokens=4096, eval_every=10,
                      seed=3, schedule=Schedule("cosine"))
    a, b = [], []
    assert train(cfg, a.append, explicit) == train(cfg, b.append, tiny) and a == b  # bit for bit
    assert explicit.optimum(1e15) == tiny.optimum(1e15)


# ------------------------------------------------------------------ the bowl

def test_asymmetric_bowl_widths_above_and_below_lr_star():
    w = world(bowl={"lr_width_above": 0.03})
    N, D = 1e6, 2e7
    lr0, b0 = float(w.lr_star(N, D)), float(w.batch_star(D))
    assert w.bowl_factor(N, D, 2 * lr0, b0) == pytest.approx(math.exp(0.03 * math.log(2) ** 2), rel=1e-12)
    assert w.bowl_factor(N, D, lr0 / 2, b0) == pytest.approx(math.exp(0.0081 * math.log(2) ** 2), rel=1e-12)
    # Still minimal at (lr*, batch*): a brute-force grid of true losses at fixed tokens.
    mult = np.exp(np.linspace(-1.2, 1.2, 25))
    pen = np.array([[w.bowl_factor(N, D, lr0 * m, b0 * k) for k in mult] for m in mult])
    assert np.unravel_index(np.argmin(pen), pen.shape) == (12, 12)
    with pytest.raises(WorldError, match="lr_width_above"):
        world(bowl={"lr_width_above": 0.002, "cross": -0.0075})  # 4·0.002·0.0069 < 0.0075²


# ------------------------------------------------------------------ laws that bend, lr* that moves with the batch

def test_bent_laws_have_the_planted_curvature_and_the_loss_follows_them():
    w = world(lr={"N_quad": -0.02, "D_quad": 0.01, "ref_N": 1e5, "ref_D": 2e6},
              batch={"D_quad": -0.01, "ref_D": 2e6})
    plain = load_world("tiny")
    assert w.lr_star(1e5, 2e6) == pytest.approx(plain.lr_star(1e5, 2e6), rel=1e-12)  # the pivot
    assert w.batch_star(2e6) == pytest.approx(plain.batch_star(2e6), rel=1e-12)
    # Second differences of ln lr* in ln N and ln D, of ln batch* in ln D: 2 × the quadratic term.
    h = 0.5
    x = np.log(3e6)
    f = lambda xn, xd: math.log(w.lr_star(math.exp(xn), math.exp(xd)))
    assert (f(x + h, 17.0) - 2 * f(x, 17.0) + f(x - h, 17.0)) / h**2 == pytest.approx(-0.04, rel=1e-6)
    assert (f(12.0, x + h) - 2 * f(12.0, x) + f(12.0, x - h)) / h**2 == pytest.approx(0.02, rel=1e-6)
    g = lambda xd: math.log(w.batch_star(math.exp(xd)))
    assert (g(x + h) - 2 * g(x) + g(x - h)) / h**2 == pytest.approx(-0.02, rel=1e-6)
    # Far from the pivot, the best lr of the simulated runs is the bent law's, not the power law's.
    N, D, b = 3e7, 5e8, float(w.batch_star(5e8))
    lrs = float(w.lr_star(N, D)) * np.exp(np.linspace(-0.5, 0.5, 101))
    best = lrs[int(np.argmin([w.true_loss(N, D, lr, b) for lr in lrs]))]
    assert best == pytest.approx(float(w.lr_star(N, D)), rel=0.011)
    assert abs(math.log(best / float(plain.lr_star(N, D)))) > 0.3


def test_lr_star_moves_with_the_batch_and_the_joint_optimum_stays_put():
    from scipy.optimize import minimize

    e = 0.3
    w = world(lr={"batch_exp": e})
    N, D = 1e6, 2e7
    lr0, b0 = float(w.lr_star(N, D)), float(w.batch_star(D))
    for k in (0.25, 4.0):
        b = b0 * k
        assert w.lr_star(N, D, b) == pytest.approx(lr0 * k**e, rel=1e-12)
        # Best lr at this batch: the moved centre, shifted by the cross term: u = −cross·v / (2·lr_width).
        v = math.log(k)
        want = lr0 * k**e * math.exp(-w.bowl.cross * v / (2 * w.bowl.lr_width))
        res = minimize(lambda x: math.log(w.bowl_factor(N, D, math.exp(x[0]), b)), [math.log(lr0)],
                       method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-14})
        assert math.exp(res.x[0]) == pytest.approx(want, rel=1e-4)
    # The divergence limit moves with it (larger batches tolerate a larger lr).
    assert w.lr_limit(N, D, 4 * b0) == pytest.approx(6.0 * lr0 * 4**e, rel=1e-12)
    # Jointly over (lr, batch) the bowl's minimum is still (lr*(N, D), batch*(D)).
    res = minimize(lambda x: math.log(w.bowl_factor(N, D, math.exp(x[0]), math.exp(x[1]))),
                   [math.log(lr0) + 0.7, math.log(b0) - 0.9], method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-16, "maxiter": 4000})
    assert math.exp(res.x[0]) == pytest.approx(lr0, rel=1e-3) and math.exp(res.x[1]) == pytest.approx(b0, rel=1e-3)


# ------------------------------------------------------------------ divergence that varies with N

def test_divergence_multiple_varies_with_N_and_the_trainer_obeys_it():
    w = world(divergence={"N_exp": -0.15, "ref_N": 1e5})
    assert w.lr_multiple(1e5) == pytest.approx(6.0)
    assert w.lr_multiple(1e7) == pytest.approx(1 + 5 * 100 ** -0.15, rel=1e-12)
    assert w.lr_multiple(1e4) > 6.0 > w.lr_multiple(1e7) > 1.0
    for N in (1e4, 1e7):
        D, b = 40 * N, 4096
        T = math.ceil(D / b)
        limit = w.lr_multiple(N) * float(w.lr_star(N, T * b))
        _, ok = final(w, N, T * b, 0.98 * limit, b)
        _, bad = final(w, N, T * b, 1.02 * limit, b)
        assert not ok.diverged and bad.diverged
        assert math.isinf(w.true_loss(N, T * b, 1.02 * limit, b)) and math.isfinite(w.true_loss(N, T * b, 0.98 * limit, b))
    # 5 × lr* diverges at 1e7 parameters, not at 1e5.
    assert w.diverges(1e7, 4e8, 5 * float(w.lr_star(1e7, 4e8))) and not w.diverges(1e5, 4e6, 5 * float(w.lr_star(1e5, 4e6)))


# ------------------------------------------------------------------ loss surfaces not of Chinchilla's form

def test_kaplan_form_is_kaplans_law_and_its_frontier():
    from orchestrator.core.laws.kaplan import KaplanLaw

    w = world(loss={"form": "kaplan"})
    p = w.loss
    law = KaplanLaw(Nc=p.A ** (1 / p.alpha), Dc=p.B ** (1 / p.beta), alphaN=p.alpha, alphaD=p.beta)
    N, D = np.geomspace(1e4, 1e8, 7), np.geomspace(1e5, 1e10, 7)
    np.testing.assert_allclose(w.loss_star(N, D), p.E + law.predict(N, D), rtol=1e-12)
    for C in (1e12, 1e16):  # E is a constant: Kaplan's closed-form frontier is the world's optimum
        o = w.optimum(C)
        N_star, _, _ = law.frontier(C)
        assert o["N"] == pytest.approx(float(N_star), rel=1e-5)


def test_interaction_term_adds_exactly_its_term():
    w = world(loss={"interaction": {"coef": 30.0, "N_exp": 0.25, "D_exp": 0.25}})
    plain = load_world("tiny")
    N, D = np.geomspace(1e4, 1e8, 5), np.geomspace(1e5, 1e10, 5)
    np.testing.assert_allclose(w.loss_star(N, D) - plain.loss_star(N, D), 30.0 / (N * D) ** 0.25, rtol=1e-10)


def test_repetition_is_the_data_constrained_law():
    from orchestrator.core.laws.data_constrained import DataConstrainedLaw

    U = 1e8
    w = world(loss={"repetition": {"unique_tokens": U}})
    p = w.loss
    law = DataConstrainedLaw(p.E, p.A, p.B, p.alpha, p.beta, R_D_star=15.387756, R_N_star=1e8)  # ~no N penalty
    N, D = np.full(6, 3e6), np.array([1e7, 1e8, 2e8, 5e8, 1e9, 1e10])
    np.testing.assert_allclose(w.loss_star(N, D), law.predict(N, D, np.minimum(U, D)), rtol=1e-7)  # U ≤ D, as its frontier passes it
    assert w.loss_star(3e6, 5e7) == load_world("tiny").loss_star(3e6, 5e7)  # one epoch: untouched
    assert w.loss_star(3e6, 1e9) > load_world("tiny").loss_star(3e6, 1e9)  # 10 epochs are worth less


@pytest.mark.parametrize("loss", [{"form": "kaplan"}, {"interaction": {"coef": 30.0, "N_exp": 0.25, "D_exp": 0.25}},
                                  {"repetition": {"unique_tokens": 1e7}}])
def test_other_surfaces_end_on_the_surface_and_curves_fall(loss):
    w = world(loss=loss)
    for N, D, b in [(3e4, 1e6, 512), (1e6, 3e7, 8192)]:
        lr = 1.5 * float(w.lr_star(N, D))
        D_seen = math.ceil(D / b) * b
        assert w.true_loss(N, D, lr, b) == pytest.approx(
            w.loss_star(N, D_seen) * w.bowl_factor(N, D_seen, lr, b), rel=1e-10)
        T = D_seen // b
        curve = w.curve_at(N, lr, b, T, Schedule("wsd"), np.arange(1, T + 1))
        assert np.all(np.diff(curve) < 0)
        reps, s = final(w, N, D_seen, lr, b, eval_every=50)
        assert s.final_eval_loss == pytest.approx(w.true_loss(N, D_seen, lr, b), rel=1e-12)


# ------------------------------------------------------------------ lr changes the curve's shape

def test_lr_shape_makes_curves_cross_and_leaves_the_endpoint():
    shaped = world(curve={"lr_shape": 0.05})
    flat = load_world("tiny").without_noise()
    N, b = 1e6, 8192
    T = math.ceil(2e7 / b)
    lr0 = float(shaped.lr_star(N, T * b))
    steps = np.arange(1, T + 1)
    c = {m: shaped.curve_at(N, lr0 * m, b, T, Schedule("wsd"), steps) for m in (1 / 3, 1.0, 3.0)}
    for m in (1 / 3, 3.0):  # the endpoint (and so the optimum and every regret) is unchanged
        assert c[m][-1] == pytest.approx(flat.true_loss(N, T * b, lr0 * m, b), rel=1e-12)
    early = T // 10
    assert c[3.0][early] < c[1.0][early] < c[1 / 3][early]  # a high lr leads early, a low one lags
    assert c[3.0][-1] > c[1.0][-1] and c[1 / 3][-1] > c[1.0][-1]  # ... and both lose at the end
    assert np.any(np.diff(np.sign(c[3.0] - c[1.0])) != 0)  # the curves cross
    gap_low = c[1 / 3] / c[1.0] - 1
    assert gap_low[-1] < 0.5 * gap_low[early]  # the low lr catches up partly
    # The factor is the documented exp(−lr_shape·u·h), h = 1 − S1(s)/S1(T) (lr_shape_power 1).
    r = np.cumsum(__import__("trainers.schedules", fromlist=["lr_array"]).lr_array(T, 1.0, Schedule("wsd")))
    base = flat.curve_at(N, 3 * lr0, b, T, Schedule("wsd"), steps)
    below = base < 0.75 * flat.curve.max_loss  # (the first steps saturate towards max_loss)
    np.testing.assert_allclose((c[3.0] / base)[below], np.exp(-0.05 * math.log(3) * (1 - r / r[-1]))[below], rtol=1e-12)


# ------------------------------------------------------------------ heavier-tailed noise and outliers

def seed_offsets(w: World, n: int) -> np.ndarray:
    quiet = w.without_noise()
    N, D, b = 1e5, 2e6, 4096
    _, ref = final(quiet, N, D, float(w.lr_star(N, D)), b)
    return np.array([final(w, N, D, float(w.lr_star(N, D)), b, seed=s)[1].final_eval_loss
                     for s in range(n)]) / ref.final_eval_loss - 1


def test_student_t_noise_has_the_same_spread_and_heavier_tails():
    d = tiny_doc()
    d["noise"].update(seed=0.01, eval=0.0, train=0.0)
    gauss = world_from_dict(d)
    d["noise"]["tail_df"] = 3.0
    heavy = world_from_dict(d)
    g, t = seed_offsets(gauss, 600), seed_offsets(heavy, 600)
    kurt = lambda x: float(np.mean((x - x.mean()) ** 4) / np.var(x) ** 2)
    assert 0.7 < np.median(np.abs(g)) / 0.00674 < 1.3  # Gaussian: median |z|·σ = 0.674σ
    assert kurt(g) < 4.0 < kurt(t)  # normal: 3; Student-t with 3 dof: infinite
    assert np.max(np.abs(t)) > np.max(np.abs(g))
    assert np.median(np.abs(t)) < np.median(np.abs(g))  # same std: more mass near 0 and in the tails


def test_outlier_runs_happen_at_the_planted_rate():
    d = tiny_doc()
    d["noise"].update(seed=0.001, eval=0.0, train=0.0, outlier_prob=0.1, outlier_scale=0.05)
    w = world_from_dict(d)
    off = seed_offsets(w, 500)
    d["noise"]["outlier_prob"] = 0.0
    clean = seed_offsets(world_from_dict(d), 500)
    # Outliers have their own random stream: every other trial draws exactly what it draws without them.
    jump = (1 + off) / (1 + clean) - 1
    out = jump > 1e-12
    np.testing.assert_allclose(jump[~out], 0.0, atol=1e-14)
    assert 0.06 < out.mean() < 0.14  # outlier_prob 0.1
    assert 0.035 < float(np.mean(jump[out])) < 0.07  # × (1 + 0.05·Exp(1)): mean jump 0.05


@pytest.mark.parametrize("edit,words", [
    (lambda d: d["noise"].update(tail_df=2.0), "noise.tail_df"),
    (lambda d: d["noise"].update(outlier_prob=1.5), "noise.outlier_prob"),
    (lambda d: d["loss"].update(form="power"), "loss.form"),
    (lambda d: d["loss"].update(repetition={"unique_tokens": -1}), "loss.repetition.unique_tokens"),
    (lambda d: d["curve"].update(lr_shape=-0.1), "curve.lr_shape"),
    (lambda d: d["lr"].update(ref_N=0), "lr.ref_N"),
])
def test_bad_optional_fields_fail_naming_the_field(edit, words):
    d = tiny_doc()
    edit(d)
    with pytest.raises(WorldError, match=words.replace(".", r"\.")):
        world_from_dict(d)


# ------------------------------------------------------------------ the bundled issue-13 worlds

def test_new_worlds_are_bundled_with_optima_at_10_to_100_tokens_per_parameter():
    assert set(NEW_WORLDS) <= set(bundled_worlds())
    for name, C in NEW_WORLDS.items():
        w = load_world(name)
        o = w.optimum(C)
        assert 10 <= o["D"] / o["N"] <= 100, name
        assert o["N"] < 1.3e10  # trainers.model.shape_for's largest member (proposals must be buildable)
        assert w.lr_multiple(o["N"]) > 2.0, name  # the optimum itself is far from diverging


@pytest.mark.parametrize("name", sorted(NEW_WORLDS))
def test_new_worlds_brute_force_optimum_matches(name):
    C = NEW_WORLDS[name] / 1e3  # near the benchmark grid's largest trial (target / 100)
    w = load_world(name).without_noise()
    o = w.optimum(C)
    if w.loss.plain:
        assert w.optimum_numeric(C)["N"] == pytest.approx(o["N"], rel=1e-4)
    Ns = o["N"] * np.exp(np.linspace(-1.0, 1.0, 41))
    mults = np.exp(np.linspace(-0.6, 0.6, 5))
    best = (math.inf, None)
    for N in Ns:
        D = C / (6 * N)
        lr0, b0 = float(w.lr_star(N, D)), float(w.batch_star(D))
        for m in mults:
            for k in mults:
                loss = w.true_loss(N, D, lr0 * m, b0 * k)
                if loss < best[0]:
                    best = (loss, (N, m, k))
    loss, (N, m, k) = best
    assert abs(math.log(N / o["N"])) <= 2.0 / 40 + 1e-9, name
    assert (m, k) == (pytest.approx(1.0), pytest.approx(1.0)), name
    assert loss == pytest.approx(o["loss"], rel=2e-4) and loss >= o["loss"] * (1 - 2e-4)


@pytest.mark.parametrize("name", sorted(NEW_WORLDS))
def test_new_worlds_trainer_ends_on_true_loss(name):
    w = load_world(name).without_noise()
    C = NEW_WORLDS[name] / 1e4
    o = w.optimum(C)
    for lr_mult, b_mult, sched in [(1.0, 1.0, None), (2.0, 0.5, Schedule("cosine")), (0.4, 2.0, Schedule("constant"))]:
        b = int(o["batch"] * b_mult)
        D = math.ceil(o["D"] / b) * b
        reps, s = final(w, o["N"], D, o["lr"] * lr_mult, b, schedule=sched, eval_every=25)
        assert s.final_eval_loss == pytest.approx(w.true_loss(int(o["N"]), D, o["lr"] * lr_mult, b, sched), rel=1e-12)
