"""Cluster intervals of the downstream fit compared on planted truth: which one covers in 85-95 %?

    python -m benchmarks.downstream_intervals [--reps 200] [--boot 199] [--cases latent,two-step] [--json OUT]

Issue 18 asks the 90 % intervals of a downstream prediction to cover a planted truth in 85-95 % of
replications in every setting. This benchmark fits each replication of the settings of
``benchmarks.downstream --coverage`` once (the point prediction is ``fit_downstream``'s) and computes,
from the same fit, ``default``: ``fit_downstream(cluster=True)``'s own interval — the CR2 one with the
exact working-model t since this benchmark chose it (``cr2_exact``; for the two-step fit ``cr2h_exact``);
the leave-one-size-out jackknife with t(G - 1) before (its column in docs/downstream.md was measured
as ``default`` at commit 270d59f of branch cov6, when it was the default) — and:

- ``cr2_tG1``: the CR2 (bias-reduced linearisation, Bell & McCaffrey 2002) cluster-robust standard
  error of the linearised fit with t quantiles on G - 1 degrees of freedom (Cameron & Miller 2015);
- ``cr2_bm``: CR2 with t on Bell-McCaffrey's (Satterthwaite) degrees of freedom under the working
  model (Imbens & Kolesar 2016);
- ``cr2_exact``: CR2 with the exact quantile of its |t| under the working model (normal errors);
- wild cluster bootstraps (Webb 2013 six-point weights, one weight per size, the same for every row of
  the size and, in the two-step fit, for both steps; refits from the full fit; unrestricted):
  ``wild_pct`` the symmetric percentile interval of the prediction's refits with the raw residuals;
  ``wild2_pct`` the same with CR2-transformed residuals (A_g e_g, whose working covariance is that of
  the errors, so the largest size's shrunk residuals are not under-weighted); ``wild2_t`` the
  bootstrap-t: CR2 standard error times the quantile of |p* - p| / se*_CR2 over the refits with the
  CR2-transformed residuals (MacKinnon, Nielsen & Webb 2023's transformed-residual wild bootstrap with
  a CR2 instead of CV3 transformation);
- a parametric bootstrap under the working model (``param``: normal errors with the working variances
  of the CR2 fit, independent rows; refits from the full fit): ``param_pct`` its symmetric percentile
  interval, ``param_t`` the bootstrap-t with the CR2 statistic — the nonlinear version of
  ``cr2_exact`` (which linearises the fit at its estimate);
- two-step only, ``cr2h_tG1`` / ``cr2h_bm`` / ``cr2h_exact``: the CR2 ones with step 1 linearised as the Huber
  M-estimator it is (scores clipped at delta in the meat, the bread weighted by psi', 0 in the linear part;
  Huber 1967) instead of as least squares at its IRLS weights.
Every world's ``_pct`` and ``_t`` are reported (``--boots``).

Prints one row per setting (coverage, its binomial standard error, mean width in points) and writes JSON.
Settings: the cluster rows of ``benchmarks.downstream.COVERAGE_CASES`` (the latent fit, no loss column)
and ``TWO_STEP_CASES`` (loss measured; the accuracy and the loss predictions), with the same seeds.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from benchmarks import downstream as bd
from orchestrator.core.laws import varpro
from orchestrator.core.laws.bootstrap import size_groups
from orchestrator.core.laws.cr2 import Block
from orchestrator.core.laws.downstream import (_TINY, _checkpoint_weights, _huber_delta, _Latent, _LinkProblem,
                                               _saturated, _stderr, batch_lm, fit_downstream)

WEBB = np.array([-math.sqrt(1.5), -1.0, -math.sqrt(0.5), math.sqrt(0.5), 1.0, math.sqrt(1.5)])
KINDS = ["wild", "wild2", "param"]  # bootstrap worlds (--boots)


def methods() -> list[str]:
    """The interval methods measured: fit_downstream's own, the CR2 ones, and a percentile and a bootstrap-t per
    world."""
    return ["default", "cr2_tG1", "cr2_bm", "cr2_exact"] + [f"{k}_{v}" for k in KINDS for v in ("pct", "t")]


def _inv_sqrt(B: np.ndarray) -> np.ndarray:
    lam, V = np.linalg.eigh((B + B.T) / 2)
    keep = lam > 1e-12 * max(float(lam.max()), 1e-300)
    return (V[:, keep] / np.sqrt(lam[keep])) @ V[:, keep].T


def _as_dict(b: Block, sw: np.ndarray) -> dict:
    return {"X": b.X, "r": b.r, "groups": b.groups, "phi": b.phi, "sw": sw, **({} if b.q is None else {"q": b.q})}


def block(J, resid, groups, w=None, shape=None):
    """A least-squares block in weighted coordinates (:meth:`orchestrator.core.laws.cr2.Block.weighted`) and sqrt w."""
    b = Block.weighted(J, resid, groups, w, shape)
    return _as_dict(b, np.sqrt(np.ones(len(b.r)) if w is None else np.asarray(w, np.float64)))


def cr2(blocks, grads, labels, exact_draws: int = 0, seed: int = 0, level: float = 0.9):
    """CR2 se of one prediction (grads[k]: (P_k,)), BM df, the exact working-model crit (if draws), and each
    block's CR2-transformed residuals (weighted coordinates)."""
    S = len(labels)
    u = np.zeros(S)
    ells, gms, phis, transformed = [], [], [], []
    for b, c in zip(blocks, grads):
        X, r, phi, g = b["X"], b["r"], b["phi"], b["groups"]
        n = len(r)
        q = b.get("q", np.ones(n))  # the bread's weights: psi' of an M-estimator (1 for least squares)
        Minv = np.linalg.pinv(X.T @ (q[:, None] * X), rcond=1e-12)
        IH = np.eye(n) - (q[:, None] * X) @ Minv @ X.T  # the score residuals are IH times the errors' scores
        a = Minv @ np.asarray(c, np.float64)
        Gc = np.zeros((n, S))
        rt = np.zeros(n)
        for s, lab in enumerate(labels):
            idx = np.flatnonzero(g == lab)
            if not len(idx):
                continue
            d = np.sqrt(phi[idx])
            Bg = d[:, None] * ((IH[idx] * phi) @ IH[idx].T) * d[None, :]
            A = d[:, None] * _inv_sqrt(Bg) * d[None, :]
            rt[idx] = A @ r[idx]
            AXa = A @ (X[idx] @ a)
            u[s] += AXa @ r[idx]
            Gc[idx, s] = AXa
        transformed.append(rt)
        ells.append(X @ a)
        gms.append(IH.T @ Gc)
        phis.append(phi)
    ell, Gm, Phi = np.concatenate(ells), np.vstack(gms), np.concatenate(phis)
    se = float(np.sqrt(np.sum(u ** 2)))
    Bm = Gm.T @ (Gm * Phi[:, None])
    df = float(np.trace(Bm) ** 2 / max(float(np.trace(Bm @ Bm)), 1e-300))
    crit = float("nan")
    if exact_draws:
        eps = np.random.default_rng(seed).standard_normal((exact_draws, len(Phi))) * np.sqrt(Phi)
        T = np.abs(eps @ ell) / np.maximum(np.sqrt(np.sum((eps @ Gm) ** 2, axis=1)), 1e-300)
        crit = float(np.quantile(T, level))
    return se, df, crit, transformed


def huber_block(J, resid, groups, delta):
    """A Huber M-estimator's block (:meth:`orchestrator.core.laws.cr2.Block.huber`)."""
    return _as_dict(Block.huber(J, resid, groups, delta), np.ones(len(resid)))


def block_batch(J, resid, groups, w, shape):
    """``block`` for B replicates at once: J (B, n, P), resid (B, n), w and shape (n,) or (B, n)."""
    n, P = J.shape[1:]
    w = np.broadcast_to(np.asarray(w, np.float64), resid.shape)
    shape = np.broadcast_to(np.asarray(shape, np.float64), resid.shape)
    sw = np.sqrt(w)
    scale = np.sum(w * resid ** 2, axis=1) / np.maximum(np.sum(w * shape, axis=1), 1e-300) * n / max(n - P, 1)
    return {"X": J * sw[..., None], "r": resid * sw, "groups": np.asarray(groups),
            "phi": w * shape * np.maximum(scale, 1e-300)[:, None]}


def cr2_se_batch(blocks, grads, labels) -> np.ndarray:
    """The CR2 standard error of ``cr2`` for B replicates at once (blocks of ``block_batch``, grads (B, P_k))."""
    u = 0.0
    sw = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731
    for b, c in zip(blocks, grads):
        X, r, phi, g = b["X"], b["r"], b["phi"], b["groups"]
        n = X.shape[1]
        Minv = np.linalg.pinv(sw(X) @ X, rcond=1e-12)
        IH = np.eye(n) - X @ Minv @ sw(X)
        xa = (X @ (Minv @ c[..., None]))[..., 0]  # (B, n)
        us = []
        for lab in labels:
            idx = np.flatnonzero(g == lab)
            d = np.sqrt(phi[:, idx])
            IHg = IH[:, idx, :]
            Bg = d[:, :, None] * ((IHg * phi[:, None, :]) @ sw(IHg)) * d[:, None, :]
            lam, Vv = np.linalg.eigh((Bg + sw(Bg)) / 2)
            keep = lam > 1e-12 * np.maximum(lam.max(axis=1, keepdims=True), 1e-300)
            inv = np.where(keep, 1.0 / np.sqrt(np.where(keep, lam, 1.0)), 0.0)
            A = d[:, :, None] * ((Vv * inv[:, None, :]) @ sw(Vv)) * d[:, None, :]
            us.append(np.einsum("bi,bij,bj->b", xa[:, idx], A, r[:, idx]))
        u = u + np.stack(us, axis=1)
    return np.sqrt(np.sum(u ** 2, axis=1))


def webb(rng: np.random.Generator, B: int, G: int) -> np.ndarray:
    """Webb's six-point weights, one per (replicate, cluster)."""
    return WEBB[rng.integers(0, 6, size=(B, G))]


class _Chin:
    """Chinchilla in log loss for batch_lm (least squares at fixed IRLS weights), coordinates of varpro."""

    def __init__(self, p):
        self.p = p

    def value(self, th, u=None, v=None):
        u = self.p.u if u is None else u
        v = self.p.v if v is None else v
        E, a, b, al, be = (th[:, i:i + 1] for i in range(5))
        t1, t2 = np.exp(np.clip(a - al * u, -700, 700)), np.exp(np.clip(b - be * v, -700, 700))
        pred = E + t1 + t2
        J = np.stack([np.ones_like(t1), t1, t2, -u * t1, -v * t2], axis=-1) / pred[..., None]
        return np.log(np.maximum(pred, _TINY)), J


def _intervals(est, jk_lo, jk_hi, se, df, crit, G, p_star, se_star, level):
    """Every method's interval; p_star / se_star: per bootstrap world, the refits' predictions and CR2 se (B,)."""
    q = (1 + level) / 2
    out = {"default": (jk_lo, jk_hi),
           "cr2_tG1": (est - stats.t.ppf(q, G - 1) * se, est + stats.t.ppf(q, G - 1) * se),
           "cr2_bm": (est - stats.t.ppf(q, max(df, 1e-3)) * se, est + stats.t.ppf(q, max(df, 1e-3)) * se),
           "cr2_exact": (est - crit * se, est + crit * se)}
    for name, ps in p_star.items():
        h = float(np.quantile(np.abs(ps - est), level))
        out[name + "_pct"] = (est - h, est + h)
        tq = float(np.quantile(np.abs(ps - est) / np.maximum(se_star[name], 1e-300), level))
        out[name + "_t"] = (est - tq * se, est + tq * se)
    return out


def latent_rep(N, D, acc, target, acc_stderr, level, B, seed, exact_draws):
    """One replication of the latent setting: every method's interval for the prediction at target (N, D)."""
    fit = fit_downstream(N, D, acc, chance=bd.PLANTED["chance"], bootstrap=2, cluster=True, seed=seed, level=level,
                         acc_stderr=acc_stderr)
    pred = fit.predict([target[0]], [target[1]])
    keep, _ = _saturated(N, D, acc, _stderr(acc, acc_stderr))
    N, D, acc = N[keep], D[keep], acc[keep]
    w = _checkpoint_weights("tokens", N, D)
    lat = _Latent("sigmoid", [N, D], acc, bd.PLANTED["chance"], 1.0)
    theta = lat.fit(w)
    est = float(lat.predict(theta, [np.array([target[0]]), np.array([target[1]])])[0, 0])
    assert abs(est - pred["acc"][0]) < 1e-9, (est, pred["acc"][0])
    groups = size_groups(N)
    labels = np.unique(groups)
    G = len(labels)
    Uq = [np.log([target[0]]) - lat.centres[0], np.log([target[1]]) - lat.centres[1]]

    def lin(th, y):
        f, J = lat.value(th[None, :], lat.U)
        f, J = f[0], J[0]
        p = np.clip(f, 0.01, 0.99)
        c = lat.value(th[None, :], Uq)[1][0, 0]
        return block(J, y - f, groups, w, p * (1 - p)), c, f

    b, c, f = lin(theta, acc)
    se, df, crit, (rt,) = cr2([b], [c], labels, exact_draws, seed, level)
    rng = np.random.default_rng(10_000 + seed)
    V = webb(rng, B, G)[:, np.searchsorted(labels, groups)]  # (B, n)
    p_star, se_star = {}, {}
    Z = rng.standard_normal((B, len(f))) * np.sqrt(b["phi"]) / b["sw"]  # the working model's errors
    worlds = {"wild": V * (b["r"] / b["sw"])[None, :], "wild2": V * (rt / b["sw"])[None, :], "param": Z}
    for name in KINDS:
        Y = f[None, :] + worlds[name]
        th_b, _ = batch_lm(lat.model, Y, np.broadcast_to(theta, (B, lat.P)), np.broadcast_to(w, (B, len(w))),
                           lat.lo, lat.hi)
        p_star[name] = lat.predict(th_b, [np.array([target[0]]), np.array([target[1]])])[:, 0]
        fb, Jb = lat.value(th_b, lat.U)
        pb = np.clip(fb, 0.01, 0.99)
        se_star[name] = cr2_se_batch([block_batch(Jb, Y - fb, groups, w, pb * (1 - pb))],
                                     [lat.value(th_b, Uq)[1][:, 0, :]], labels)
    return {"acc": _intervals(est, pred["low"][0], pred["high"][0], se, df, crit, G, p_star, se_star, level)}


def two_step_rep(N, D, L, acc, target, level, B, seed, exact_draws):
    """One replication of the two-step setting: intervals for the accuracy and for the loss at target."""
    t = bd.TWO_STEP
    fit = fit_downstream(N, D, acc, loss=L, chance=t["chance"], bootstrap=2, cluster=True, seed=seed, level=level)
    pred = fit.predict([target[0]], [target[1]])
    # step 1 as fit_downstream makes it
    with varpro.single_threaded_blas():
        p1 = varpro.Problem.build(N, D, L)
        theta1, _ = varpro.global_fit(p1)
        delta = _huber_delta(theta1, p1)
        if delta > p1.delta:
            p1 = varpro.Problem.build(N, D, L, delta=delta)
            theta1, _ = varpro.global_fit(p1, extra_starts=[theta1])
    lp = _LinkProblem("sigmoid", L, acc, t["chance"], 1.0)
    w2 = np.ones(len(acc))
    theta2 = lp.fit(w2)
    chin = _Chin(p1)
    uq, vq = np.log([target[0]]) - p1.logN0, np.log([target[1]]) - p1.logD0

    def predict(th1, th2):
        """Accuracy and loss at the target for replicate rows th1 (K, 5), th2 (K, P): two (K,) arrays."""
        Lq = np.exp(chin.value(np.atleast_2d(th1), uq, vq)[0])  # (K, 1)
        return lp.value(np.atleast_2d(th2), Lq)[0][:, 0], Lq[:, 0]

    est, Lest = (float(x[0]) for x in predict(theta1, theta2))
    assert abs(est - pred["acc"][0]) < 1e-9 and abs(Lest - pred["loss"][0]) < 1e-9, (est, pred["acc"], Lest, pred["loss"])
    groups = size_groups(N)
    labels = np.unique(groups)
    G = len(labels)

    def lin(th1, th2, y1, y2):
        f1, J1 = chin.value(th1[None, :])
        f1, J1 = f1[0], J1[0]
        r1 = y1 - f1
        hw = np.minimum(1.0, p1.delta / np.maximum(np.abs(r1), _TINY))  # Huber's IRLS weights
        b1 = block(J1, r1, groups, hw)
        f2, J2 = lp.value(th2[None, :], L)
        f2, J2 = f2[0], J2[0]
        p = np.clip(f2, 0.01, 0.99)
        b2 = block(J2, y2 - f2, groups, w2, p * (1 - p))
        Lq_, Jq1 = chin.value(th1[None, :], uq, vq)
        Lq_ = float(np.exp(Lq_[0, 0]))
        dL = Lq_ * Jq1[0, 0]  # d loss / d theta1 (value's Jacobian is of log loss)
        accq, J2q = lp.value(th2[None, :], np.array([Lq_]))
        pp = {k: float(v_[0, 0]) for k, v_ in lp.unpack(th2[None, :]).items()}
        s = 1.0 / (1.0 + math.exp(min(max(pp["k"] * (Lq_ - pp["L0"]), -700), 700)))
        slope = -(pp["ceiling"] - pp["chance"]) * pp["k"] * s * (1 - s)
        return b1, b2, dL, slope * dL, J2q[0, 0], f1, f2, hw

    b1, b2, dL, cacc1, cacc2, f1, f2, hw = lin(theta1, theta2, p1.log_loss, acc)
    se_a, df_a, crit_a, (rt1, rt2) = cr2([b1, b2], [cacc1, cacc2], labels, exact_draws, seed, level)
    se_l, df_l, crit_l, _ = cr2([b1], [dL], labels, exact_draws, seed + 1, level)
    f1h, J1h = chin.value(theta1[None, :])
    b1h = huber_block(J1h[0], p1.log_loss - f1h[0], groups, p1.delta)
    huber = {"acc": (est, cr2([b1h, b2], [cacc1, cacc2], labels, exact_draws, seed, level)),
             "loss": (Lest, cr2([b1h], [dL], labels, exact_draws, seed + 1, level))}
    rng = np.random.default_rng(10_000 + seed)
    V = webb(rng, B, G)[:, np.searchsorted(labels, groups)]
    lo1 = np.array([0.0, -np.inf, -np.inf, varpro.EXP_BOUNDS[0], varpro.EXP_BOUNDS[0]])
    hi1 = np.array([np.inf, np.inf, np.inf, varpro.EXP_BOUNDS[1], varpro.EXP_BOUNDS[1]])
    stars = {}
    Z1 = rng.standard_normal((B, len(f1))) * np.sqrt(b1["phi"]) / b1["sw"]
    Z2 = rng.standard_normal((B, len(f2))) * np.sqrt(b2["phi"]) / b2["sw"]
    worlds = {"wild": (V * (b1["r"] / b1["sw"]), V * (b2["r"] / b2["sw"])),
              "wild2": (V * (rt1 / b1["sw"]), V * (rt2 / b2["sw"])), "param": (Z1, Z2)}
    for name in KINDS:
        Y1 = f1[None, :] + worlds[name][0]
        Y2 = f2[None, :] + worlds[name][1]
        th1_b, _ = batch_lm(chin.value, Y1, np.broadcast_to(theta1, (B, 5)), np.broadcast_to(hw, (B, len(hw))), lo1, hi1)
        th2_b, _ = batch_lm(lambda th: lp.value(th, L), Y2, np.broadcast_to(theta2, (B, lp.P)),
                            np.broadcast_to(w2, (B, len(w2))), lp.lo, lp.hi)
        a_b, L_b = predict(th1_b, th2_b)
        stars[name] = (a_b, L_b, th1_b, th2_b, Y1, Y2)
    se_a_star, se_l_star = {}, {}
    for name, (_, _, th1_b, th2_b, Y1, Y2) in stars.items():
        f1b, J1b = chin.value(th1_b)
        r1b = Y1 - f1b
        bb1 = block_batch(J1b, r1b, groups, np.minimum(1.0, p1.delta / np.maximum(np.abs(r1b), _TINY)), 1.0)
        f2b, J2b = lp.value(th2_b, L)
        pb = np.clip(f2b, 0.01, 0.99)
        bb2 = block_batch(J2b, Y2 - f2b, groups, w2, pb * (1 - pb))
        lq, Jq1 = chin.value(th1_b, uq, vq)
        Lqb = np.exp(lq[:, 0])
        dd = Lqb[:, None] * Jq1[:, 0]
        J2q = lp.value(th2_b, Lqb[:, None])[1][:, 0]
        pp = lp.unpack(th2_b)
        sg = 1.0 / (1.0 + np.exp(np.clip(pp["k"][:, 0] * (Lqb - pp["L0"][:, 0]), -700, 700)))
        slope = -(pp["ceiling"][:, 0] - pp["chance"][:, 0]) * pp["k"][:, 0] * sg * (1 - sg)
        se_a_star[name] = cr2_se_batch([bb1, bb2], [slope[:, None] * dd, J2q], labels)
        se_l_star[name] = cr2_se_batch([bb1], [dd], labels)
    out = {"acc": _intervals(est, pred["low"][0], pred["high"][0], se_a, df_a, crit_a, G,
                             {k: v_[0] for k, v_ in stars.items()}, se_a_star, level),
           "loss": _intervals(Lest, pred["loss_low"][0], pred["loss_high"][0], se_l, df_l, crit_l, G,
                              {k: v_[1] for k, v_ in stars.items()}, se_l_star, level)}
    q = (1 + level) / 2
    for key, (e, (se_h, df_h, crit_h, _)) in huber.items():  # step 1 linearised as the Huber M-estimator it is
        for name, k in (("cr2h_tG1", stats.t.ppf(q, G - 1)), ("cr2h_bm", stats.t.ppf(q, max(df_h, 1e-3))),
                        ("cr2h_exact", crit_h)):
            out[key][name] = (e - k * se_h, e + k * se_h)
    return out


def run_latent(label, checkpoints, ratio, sizes, items, reps, B, level, exact_draws, seed=2000, first=0):
    grid = np.array(bd.PLANTED_SIZES) if sizes == len(bd.PLANTED_SIZES) else np.geomspace(
        bd.PLANTED_SIZES[0], bd.PLANTED_SIZES[-1], sizes)
    N = np.repeat(grid, checkpoints)
    D = np.tile(np.geomspace(*bd.PLANTED_D, checkpoints), len(grid))
    p = bd.planted_accuracy(N, D)
    target = (ratio * bd.PLANTED_SIZES[-1], bd.PLANTED_D[1])
    a_t = float(bd.planted_accuracy(*target))
    stderr = np.sqrt(p * (1 - p) / items)
    hits = {m: [] for m in methods()}
    widths = {m: [] for m in methods()}
    for r in range(first, first + reps):
        rng = np.random.default_rng(seed + r)  # the draws of benchmarks.downstream.coverage
        acc = rng.binomial(items, p) / items
        out = latent_rep(N, D, acc, target, None if items == 1000 else stderr, level, B, r, exact_draws)["acc"]
        for m, (lo, hi) in out.items():
            lo, hi = max(lo, 0.0), min(hi, 1.0)
            hits[m].append(lo <= a_t <= hi)
            widths[m].append(hi - lo)
    return _summary(label, reps, {"acc": (hits, widths)})


def run_two_step(label, sizes, reps, B, level, exact_draws, seed=1000, first=0):
    w = bd.two_step_world(sizes)
    N, D, L_true, target, L_t, a_t = (w[k] for k in ("N", "D", "L_true", "target", "L_t", "a_t"))
    res = {k: (defaultdict(list), defaultdict(list)) for k in ("acc", "loss")}
    for r in range(first, first + reps):
        rng = np.random.default_rng(seed + r)  # the draws of benchmarks.downstream.coverage_two_step
        L = L_true * np.exp(rng.normal(0.0, 0.01, len(N)))
        acc = rng.binomial(1000, w["acc_true"]) / 1000
        out = two_step_rep(N, D, L, acc, target, level, B, r, exact_draws)
        for key, truth in (("acc", a_t), ("loss", L_t)):
            for m, (lo, hi) in out[key].items():
                if key == "acc":
                    lo, hi = max(lo, 0.0), min(hi, 1.0)
                res[key][0][m].append(lo <= truth <= hi)
                res[key][1][m].append(hi - lo)
    return _summary(label, reps, res)


def _summary(label, reps, res):
    out = {"label": label, "reps": reps, "hits": {}}
    for key, (hits, widths) in res.items():
        for m in hits:
            c = float(np.mean(hits[m]))
            out["hits"][f"{key}.{m}"] = [int(h) for h in hits[m]]
            out[f"{key}.{m}"] = {"coverage": c, "se": math.sqrt(max(c * (1 - c), 1e-12) / reps),
                                 "width_points": 100 * float(np.mean(widths[m])) if key == "acc" else
                                 float(np.mean(widths[m]))}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--boot", type=int, default=199, help="wild bootstrap refits per replication")
    ap.add_argument("--draws", type=int, default=4000, help="working-model draws of cr2_exact's critical value")
    ap.add_argument("--cases", default="latent,two-step")
    ap.add_argument("--first", type=int, default=0, help="first replication (seed offset): runs can be pooled")
    ap.add_argument("--boots", default=",".join(KINDS), help="bootstrap worlds: wild (raw residuals), wild2 (CR2-"
                    "transformed residuals), param (normal errors with the working variances)")
    ap.add_argument("--only", default="", help="comma-separated substrings of case labels to run")
    ap.add_argument("--json", type=Path, default=Path("results") / "downstream_intervals.json")
    args = ap.parse_args(argv)
    cases = args.cases.split(",")
    KINDS[:] = [k for k in args.boots.split(",") if k]
    only = [s for s in args.only.split(",") if s]
    results = []
    print(f"{'case':36s} " + " ".join(f"{m:>16s}" for m in methods() + ["cr2h_tG1", "cr2h_bm", "cr2h_exact"]),
          flush=True)
    todo = []
    if "latent" in cases:
        todo += [("latent", c) for c in bd.COVERAGE_CASES if c[1]]
    if "two-step" in cases:
        todo += [("two", c) for c in bd.TWO_STEP_CASES]
    for kind, c in todo:
        if only and not any(s in c[0] for s in only):
            continue
        t0 = time.time()
        if kind == "latent":
            label, _, checkpoints, ratio, sizes, items = c
            s = run_latent(label, checkpoints, ratio, sizes, items, args.reps, args.boot, 0.9, args.draws,
                           first=args.first)
        else:
            label, _, sizes = c
            s = run_two_step(label, sizes, args.reps, args.boot, 0.9, args.draws, first=args.first)
        s["seconds"] = time.time() - t0
        results.append(s)
        for key in ("acc", "loss"):
            if f"{key}.default" not in s:
                continue
            name = label if key == "acc" else f"  (loss)"
            print(f"{name:36s} " + " ".join(
                f"{s[f'{key}.{m}']['coverage']:6.3f} ({s[f'{key}.{m}']['width_points']:6.2f})"
                for m in methods() + ["cr2h_tG1", "cr2h_bm", "cr2h_exact"] if f"{key}.{m}" in s),
                flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=float))
    print(f"(coverage (mean width, accuracy points; loss: nats)); {args.reps} replications: binomial se "
          f"{math.sqrt(0.09 / args.reps):.3f} at 0.90, {math.sqrt(0.0475 / args.reps):.3f} at 0.95; wrote {args.json}")


if __name__ == "__main__":
    main()
