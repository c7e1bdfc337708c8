"""lr*(N, D) and batch*(D) laws: planted truth, coverage, censoring, coupling, the Step-Law golden test."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from orchestrator.core.laws.hparams import (
    HparamError,
    couple_lr,
    fit_bowl,
    fit_hparams,
    law_gap,
)

DATA = Path(__file__).resolve().parents[3] / "data" / "steplaw" / "dense_lr_bs_loss.csv"

# Planted truth: the Step-Law coefficients.
TRUE = {"lr_coef": 1.79, "N_exp": -0.713, "D_exp": 0.307, "b_coef": 0.58, "bD_exp": 0.571}
CURV = np.array([[0.030, 0.006], [0.006, 0.012]])  # log-loss Hessian/2 in (ln lr, ln batch): a bowl


def true_opt(N: float, D: float) -> tuple[float, float]:
    lr = TRUE["lr_coef"] * N ** TRUE["N_exp"] * D ** TRUE["D_exp"]
    return lr, TRUE["b_coef"] * D ** TRUE["bD_exp"]


def synth(
    seed: int,
    Ns=(1e8, 3e8, 1e9),
    Ds=(2e9, 1e10, 5e10),
    noise: float = 1e-3,
    scatter: float = 0.05,
    n_lr: int = 9,
    n_b: int = 7,
    diverge_at: float | None = 1.2,
) -> dict[str, np.ndarray]:
    """Runs on (lr, batch) grids per (N, D) cell: a quadratic bowl in log space around the planted
    optimum (plus per-cell scatter of the optimum), log-normal loss noise, and runs whose lr is
    more than exp(diverge_at) above the optimum diverge (loss NaN)."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[float]] = {k: [] for k in ("N", "D", "lr", "batch", "loss")}
    for N in Ns:
        for D in Ds:
            lr_s, b_s = true_opt(N, D)
            xs = math.log(lr_s) + scatter * rng.standard_normal()
            ys = math.log(b_s) + scatter * rng.standard_normal()
            # Grids with a random phase so the optimum is rarely on a grid point; lr step √2, batch 2x.
            gx = math.log(lr_s) + (np.arange(n_lr) - (n_lr - 1) / 2 + rng.uniform(-0.5, 0.5)) * math.log(2) / 2
            gy = math.log(b_s) + (np.arange(n_b) - (n_b - 1) / 2 + rng.uniform(-0.5, 0.5)) * math.log(2)
            base = math.log(1.7 + 400 / N**0.34 + 400 / D**0.28)
            for x in gx:
                for y in gy:
                    d = np.array([x - xs, y - ys])
                    z = base + d @ CURV @ d + noise * rng.standard_normal()
                    if diverge_at is not None and x - xs > diverge_at:
                        z = math.nan
                    for k, val in zip(rows, (N, D, math.exp(x), math.exp(y), math.exp(z))):
                        rows[k].append(val)
    return {k: np.array(v) for k, v in rows.items()}


# ------------------------------------------------------------------------------- planted truth


@pytest.mark.parametrize("method", ["steplaw", "bowl"])
def test_planted_exponents_recovered(method):
    runs = synth(seed=1, noise=5e-4, scatter=0.0)
    fit = fit_hparams(**runs, method=method, bootstrap=0)
    tol = 0.05 if method == "bowl" else 0.12  # the steplaw centroid is coarser (grid-quantised)
    assert fit.lr_law.N_exp == pytest.approx(TRUE["N_exp"], abs=tol)
    assert fit.lr_law.D_exp == pytest.approx(TRUE["D_exp"], abs=tol)
    assert fit.batch_law.D_exp == pytest.approx(TRUE["bD_exp"], abs=tol)
    # Predictions inside the sampled range are what a planner uses: within 10 % (bowl) of truth.
    for N, D in [(3e8, 1e10), (1e8, 5e10), (1e9, 2e9)]:
        lr, b = fit.predict(N, D)
        lr_t, b_t = true_opt(N, D)
        rel = 0.10 if method == "bowl" else 0.25
        assert abs(math.log(lr / lr_t)) < rel
        assert abs(math.log(b / b_t)) < rel


def test_bowl_recovers_cell_optimum_and_is_convex():
    runs = synth(seed=2, Ns=(3e8,), Ds=(1e10,), noise=5e-4, scatter=0.0, diverge_at=None)
    bowl = fit_bowl(runs["lr"], runs["batch"], runs["loss"])
    lr_t, b_t = true_opt(3e8, 1e10)
    assert bowl.convex and not bowl.constrained
    assert abs(math.log(bowl.lr / lr_t)) < 0.08
    assert abs(math.log(bowl.batch / b_t)) < 0.12


def test_bowl_nonconvex_falls_back_and_warns():
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5))
    x, y = x.ravel(), y.ravel()
    z = 0.02 * x * x - 0.02 * y * y + 1e-4 * rng.standard_normal(x.size)  # a saddle
    bowl = fit_bowl(1e-3 * np.exp(x), 1e6 * np.exp(y), 2.5 * np.exp(z))
    assert not bowl.convex
    assert any("not convex" in w for w in bowl.warnings)
    best = int(np.argmin(z))
    assert abs(math.log(bowl.lr / (1e-3 * math.exp(x[best])))) < 0.6


def test_coverage_over_replications():
    """Two-stage bootstrap intervals cover the planted exponents in most of 50 replications."""
    hits = np.zeros(3)
    reps = 50
    for seed in range(reps):
        runs = synth(seed=100 + seed)
        fit = fit_hparams(**runs, method="steplaw", bootstrap=100, seed=seed, level=0.9)
        iv = fit.intervals
        hits += [
            iv["lr"]["N_exp"].covers(TRUE["N_exp"]),
            iv["lr"]["D_exp"].covers(TRUE["D_exp"]),
            iv["batch"]["D_exp"].covers(TRUE["bD_exp"]),
        ]
    coverage = hits / reps
    print("steplaw coverage (N_exp, D_exp, batch D_exp) at 90 %:", coverage)
    assert (coverage >= 0.75).all(), coverage


def test_bowl_coverage():
    """The bowl estimator's intervals, fewer replications (each bowl bootstrap refits every cell)."""
    hits = np.zeros(3)
    reps = 16
    for seed in range(reps):
        fit = fit_hparams(**synth(seed=500 + seed), method="bowl", bootstrap=40, seed=seed, level=0.9)
        iv = fit.intervals
        hits += [
            iv["lr"]["N_exp"].covers(TRUE["N_exp"]),
            iv["lr"]["D_exp"].covers(TRUE["D_exp"]),
            iv["batch"]["D_exp"].covers(TRUE["bD_exp"]),
        ]
    coverage = hits / reps
    print("bowl coverage (N_exp, D_exp, batch D_exp) at 90 %:", coverage)
    assert (coverage >= 0.6).all(), coverage  # 16 replications: binomial sd ~0.08 around 0.9


# ------------------------------------------------------------------------------- censoring


def _ceiling_ok(bowl, lr, batch, div) -> bool:
    """The optimum is below every diverged lr at a batch >= its own."""
    applies = div & (batch >= bowl.batch * (1 - 1e-9))
    return bool(not applies.any() or bowl.lr < lr[applies].min())


def test_diverged_runs_censor_the_optimum():
    # At batches up to the optimal one, runs above 0.74 x the optimal lr diverge; larger batches are
    # stable. The bowl fitted to the stable runs has its minimum among the diverged runs, inside the
    # sampled box: the optimum must move below the divergence at its batch (or to a larger batch).
    runs = synth(seed=3, Ns=(3e8,), Ds=(1e10,), noise=3e-4, scatter=0.0, diverge_at=None)
    lr_t, b_t = true_opt(3e8, 1e10)
    div = (runs["lr"] > 0.74 * lr_t) & (runs["batch"] < 1.1 * b_t)
    runs["loss"] = np.where(div, np.nan, runs["loss"])
    free = fit_bowl(runs["lr"][~div], runs["batch"][~div], runs["loss"][~div])
    assert not _ceiling_ok(free, runs["lr"], runs["batch"], div)  # what ignoring them would give
    bowl = fit_bowl(runs["lr"], runs["batch"], runs["loss"])
    assert bowl.constrained
    assert any("diverged" in w for w in bowl.warnings)
    assert _ceiling_ok(bowl, runs["lr"], runs["batch"], div)
    assert bowl.n_fit <= int((~div).sum())
    assert bowl.loss >= free.loss  # a constrained minimum cannot beat the free one

    # A `diverged` flag on a finite (but meaningless) loss censors exactly like NaN.
    loss = np.where(div, 10.0, runs["loss"])
    flagged = fit_bowl(runs["lr"], runs["batch"], loss, diverged=div)
    assert flagged.lr == pytest.approx(bowl.lr) and flagged.batch == pytest.approx(bowl.batch)
    # Without the flag the 10.0 losses would enter the candidate set; with it they never do.
    assert flagged.n_fit == bowl.n_fit


def test_diverged_runs_above_optimum_do_not_move_it():
    runs = synth(seed=4, Ns=(3e8,), Ds=(1e10,), noise=3e-4, scatter=0.0, diverge_at=0.9)
    bowl = fit_bowl(runs["lr"], runs["batch"], runs["loss"])
    lr_t, _ = true_opt(3e8, 1e10)
    assert not bowl.constrained
    assert abs(math.log(bowl.lr / lr_t)) < 0.1


def test_fit_hparams_counts_and_errors():
    runs = synth(seed=5)
    fit = fit_hparams(**runs, method="bowl", bootstrap=0)
    assert fit.n_diverged == int((~np.isfinite(runs["loss"])).sum()) > 0
    assert len(fit.cells) == 9
    doc = fit.to_json()
    assert set(doc["lr"]) >= {"coef", "N_exp", "D_exp", "intervals"}
    assert set(doc["batch"]) >= {"coef", "D_exp", "intervals"}
    one = {k: v[:5] for k, v in runs.items()}  # one cell, five runs
    with pytest.raises(HparamError, match="at least"):
        fit_hparams(**one)
    same_n = {k: v.copy() for k, v in runs.items()}
    same_n["N"][:] = 1e8
    with pytest.raises(HparamError, match="distinct N"):
        fit_hparams(**same_n)
    bad = {k: v.copy() for k, v in runs.items()}
    bad["lr"][3] = -1.0
    with pytest.raises(HparamError, match="lr"):
        fit_hparams(**bad)
    with pytest.raises(HparamError, match="method"):
        fit_hparams(**runs, method="grid")


def test_predict_and_interval():
    fit = fit_hparams(**synth(seed=6), method="steplaw", bootstrap=50)
    lr, b = fit.predict(3e8, 1e10)
    ilr, ib = fit.predict_interval(3e8, 1e10)
    assert ilr.low < lr < ilr.high and ib.low < b < ib.high
    lr_t, b_t = true_opt(3e8, 1e10)
    assert ilr.low < lr_t < ilr.high and ib.low < b_t < ib.high


# ------------------------------------------------------------------------------- coupling


def test_couple_lr_sqrt_rule():
    assert couple_lr(1e-3, 2**19, 2**21) == pytest.approx(2e-3)
    assert couple_lr(2e-3, 2**21, 2**19) == pytest.approx(1e-3)
    assert couple_lr(1e-3, 1e6, 1e6) == 1e-3
    with pytest.raises(ValueError):
        couple_lr(1e-3, 0, 1e6)


# ------------------------------------------------------------------------------- Step-Law golden


@pytest.fixture(scope="module")
def steplaw_runs():
    import pyarrow.csv as pacsv

    t = pacsv.read_csv(DATA)
    return {
        "N": t.column("N").to_numpy().astype(float),
        "D": t.column("D").to_numpy().astype(float),
        "lr": t.column("lr").to_numpy().astype(float),
        "batch": t.column("bs").to_numpy().astype(float) * 2048.0,  # sequences of 2048 tokens
        "loss": t.column("smooth loss").to_numpy().astype(float),
    }


REF = {"lr_coef": 1.79, "N_exp": -0.713, "D_exp": 0.307, "b_coef": 0.58, "bD_exp": 0.571}


def _ref_law(N, D):
    return REF["lr_coef"] * N ** REF["N_exp"] * D ** REF["D_exp"], REF["b_coef"] * D ** REF["bD_exp"]


def test_steplaw_protocol_on_published_grid(steplaw_runs):
    fit = fit_hparams(**steplaw_runs, method="steplaw", bootstrap=200, seed=0)
    lr, b = fit.lr_law, fit.batch_law
    print(f"steplaw: lr = {lr.coef:.4g} N^{lr.N_exp:.4f} D^{lr.D_exp:.4f}; batch = {b.coef:.4g} D^{b.D_exp:.4f}")
    # The protocol on the 17 released cells (129 runs kept). The published law was fitted on the
    # authors' larger set; this file alone gives a flatter D exponent (see docs/hparams.md).
    assert sum(c.n_used for c in fit.cells) == 129
    assert lr.N_exp == pytest.approx(-0.7662, abs=1e-3)
    assert lr.D_exp == pytest.approx(0.1970, abs=1e-3)
    assert b.D_exp == pytest.approx(0.6125, abs=1e-3)
    # Against the reference: N and batch exponents within the issue's +-0.06; the reference's
    # N and batch exponents inside our 90 % intervals.
    assert abs(lr.N_exp - REF["N_exp"]) < 0.06
    assert abs(b.D_exp - REF["bD_exp"]) < 0.05
    assert fit.intervals["lr"]["N_exp"].covers(REF["N_exp"])
    assert fit.intervals["batch"]["D_exp"].covers(REF["bD_exp"])
    # Coefficients trade off against exponents (log N, log D span 1.6 and 3.2 e-folds): compare the
    # predictions on the grid's cells instead. batch within 10 %, lr within 40 % of the reference.
    for c in fit.cells:
        p_lr, p_b = fit.predict(c.N, c.D)
        r_lr, r_b = _ref_law(c.N, c.D)
        assert abs(math.log(p_b / r_b)) < 0.11
        assert abs(math.log(p_lr / r_lr)) < 0.34

    # What matters: the loss at the predicted optimum, read off each cell's bowl.
    gaps = law_gap(fit, **steplaw_runs)
    mean_gap = float(np.mean([g["gap"] for g in gaps]))
    print("gap to best run: mean %.3f %%, max %.3f %%" % (100 * mean_gap, 100 * max(g["gap"] for g in gaps)))
    assert all(g["inside_grid"] for g in gaps)
    assert max(g["gap"] for g in gaps) < 0.003  # every cell within 0.3 % of its best run
    assert mean_gap < 0.0012  # the authors: 0.09 %; we measure 0.093 %
    assert max(g["gap_to_bowl"] for g in gaps) < 0.0015
    # The reference law, evaluated the same way, does no better.
    fit.lr_law.coef, fit.lr_law.N_exp, fit.lr_law.D_exp = REF["lr_coef"], REF["N_exp"], REF["D_exp"]
    fit.batch_law.coef, fit.batch_law.D_exp = REF["b_coef"], REF["bD_exp"]
    ref_gap = float(np.mean([g["gap"] for g in law_gap(fit, **steplaw_runs)]))
    assert mean_gap < ref_gap + 2e-4


def test_bowl_method_on_published_grid(steplaw_runs):
    fit = fit_hparams(**steplaw_runs, method="bowl", bootstrap=30, seed=0)
    lr, b = fit.lr_law, fit.batch_law
    print(f"bowl: lr = {lr.coef:.4g} N^{lr.N_exp:.4f} D^{lr.D_exp:.4f}; batch = {b.coef:.4g} D^{b.D_exp:.4f}")
    assert all(c.convex for c in fit.cells)  # the published landscapes are convex near the optimum
    assert abs(lr.D_exp - REF["D_exp"]) < 0.05
    assert abs(b.D_exp - REF["bD_exp"]) < 0.07
    assert -0.95 < lr.N_exp < -0.70
    gaps = law_gap(fit, **steplaw_runs)
    assert max(g["gap"] for g in gaps) < 0.003
    assert float(np.mean([g["gap"] for g in gaps])) < 0.0012


# ------------------------------------------- why the lr D-exponent differs (docs/hparams.md)


@pytest.fixture(scope="module")
def steplaw_table():
    import pyarrow.csv as pacsv

    t = pacsv.read_csv(DATA)
    cols = {c: t.column(c).to_numpy().astype(float) for c in ("N", "D", "lr", "bs", "loss", "smooth loss")}
    cols["batch"] = cols["bs"] * 2048.0
    return cols


def _near_best(t, col, thr):
    """Runs within `thr` of their (N, D) cell's lowest `col` (the Step-Law selection)."""
    keep = np.zeros(len(t["N"]), dtype=bool)
    for key in set(zip(t["N"], t["D"])):
        idx = np.flatnonzero((t["N"] == key[0]) & (t["D"] == key[1]))
        best = t[col][idx].min()
        keep[idx] = np.abs(t[col][idx] / best - 1.0) < thr
    return keep


def _argmin(t, col):
    keep = np.zeros(len(t["N"]), dtype=bool)
    for key in set(zip(t["N"], t["D"])):
        idx = np.flatnonzero((t["N"] == key[0]) & (t["D"] == key[1]))
        keep[idx[np.argmin(t[col][idx])]] = True
    return keep


def _exponents(t, keep):
    """Pooled OLS in log space: (lr N_exp, lr D_exp, batch D_exp) of the kept runs."""
    lN, lD = np.log(t["N"][keep]), np.log(t["D"][keep])
    X = np.stack([np.ones_like(lN), lN, lD], axis=1)
    a, b = np.linalg.lstsq(X, np.log(t["lr"][keep]), rcond=None)[0][1:]
    g = np.linalg.lstsq(X[:, [0, 2]], np.log(t["batch"][keep]), rcond=None)[0][1]
    return float(a), float(b), float(g)


def test_no_protocol_variant_reproduces_the_published_lr_d_exponent(steplaw_table):
    """The variant table of docs/hparams.md: each row recomputed, none within +-0.05 on all three."""
    t = steplaw_table
    reserved = (t["N"] > 1e9) | (t["D"] >= 1e11)  # the paper's held-out test settings (1B, 100B)
    all_ = np.ones(len(t["N"]), dtype=bool)

    def fh(mask, col, method):
        f = fit_hparams(t["N"][mask], t["D"][mask], t["lr"][mask], t["batch"][mask], t[col][mask],
                        method=method, bootstrap=0)
        return f.lr_law.N_exp, f.lr_law.D_exp, f.batch_law.D_exp

    variants = {  # name: ((N_exp, D_exp, batch D_exp) as documented, recomputed)
        "authors' protocol (0.25 %, smooth loss)": ((-0.766, 0.197, 0.613), fh(all_, "smooth loss", "steplaw")),
        "same on the raw `loss` column": ((-0.793, 0.278, 0.719), fh(all_, "loss", "steplaw")),
        "0.1 % threshold": ((-0.755, 0.205, 0.668), _exponents(t, _near_best(t, "smooth loss", 0.001))),
        "0.5 % threshold": ((-0.712, 0.173, 0.496), _exponents(t, _near_best(t, "smooth loss", 0.005))),
        "1 % threshold": ((-0.640, 0.133, 0.475), _exponents(t, _near_best(t, "smooth loss", 0.01))),
        "argmin per cell": ((-0.823, 0.288, 0.498), _exponents(t, _argmin(t, "smooth loss"))),
        "argmin per cell, raw loss": ((-0.945, 0.215, 0.733), _exponents(t, _argmin(t, "loss"))),
        "bowl per cell": ((-0.827, 0.294, 0.628), fh(all_, "smooth loss", "bowl")),
        "reserved test points excluded": ((-0.891, 0.249, 0.606), fh(~reserved, "smooth loss", "steplaw")),
        "N = 1.07B excluded": ((-0.771, 0.198, 0.627), fh(t["N"] < 1e9, "smooth loss", "steplaw")),
        "D = 100B excluded": ((-0.826, 0.240, 0.582), fh(t["D"] < 1e11, "smooth loss", "steplaw")),
        "D/N <= 100": ((-0.853, 0.258, 0.510), fh(t["D"] / t["N"] <= 100, "smooth loss", "steplaw")),
    }
    for name, (doc, got) in variants.items():
        print(f"{name}: N_exp {got[0]:.3f}, D_exp {got[1]:.3f}, batch D_exp {got[2]:.3f}")
        assert got == pytest.approx(doc, abs=1.5e-3), name
        dev = max(abs(got[0] - REF["N_exp"]), abs(got[1] - REF["D_exp"]), abs(got[2] - REF["bD_exp"]))
        assert dev > 0.05, f"{name} now reproduces the published law: update docs/hparams.md"


def test_released_grid_puts_the_lr_d_exponent_near_0_2(steplaw_table):
    """The gap is in the data, not in the N-D trade-off: within each N the lr optimum grows as ~D^0.2."""
    t = steplaw_table
    keep = _near_best(t, "smooth loss", 0.0025)
    lN, lD, llr = np.log(t["N"][keep]), np.log(t["D"][keep]), np.log(t["lr"][keep])
    # N fixed effects: only variation of D at a fixed model size identifies the D exponent.
    sizes = np.unique(t["N"][keep])
    X = np.stack([lD] + [(t["N"][keep] == n).astype(float) for n in sizes], axis=1)
    within = float(np.linalg.lstsq(X, llr, rcond=None)[0][0])
    # N exponent pinned at the published -0.713: the D exponent stays where it was.
    pinned = float(np.polyfit(lD, llr - REF["N_exp"] * lN, 1)[0])
    print(f"within-N D-slope {within:.3f}; with N_exp = -0.713: {pinned:.3f}")
    assert within == pytest.approx(0.198, abs=2e-3)
    assert pinned == pytest.approx(0.195, abs=2e-3)
    assert REF["D_exp"] - within > 0.09 and REF["D_exp"] - pinned > 0.09
    # The published exponents with a free coefficient fit the kept runs significantly worse (F test).
    from scipy import stats

    A = np.stack([np.ones_like(lN), lN, lD], axis=1)
    rss_free = float(np.sum((llr - A @ np.linalg.lstsq(A, llr, rcond=None)[0]) ** 2))
    off = llr - REF["N_exp"] * lN - REF["D_exp"] * lD
    rss_pub = float(np.sum((off - off.mean()) ** 2))
    n = len(llr)
    F = ((rss_pub - rss_free) / 2) / (rss_free / (n - 3))
    assert stats.f.sf(F, 2, n - 3) < 0.01
