"""Fit speed on the Chinchilla points: our variable-projection fit vs the replication's grid recipe.

Reference estimator (Besiroglu et al. 2024, after Hoffmann et al. 2022, App. D.2): parameters
(a, b, e, alpha, beta) with L = exp(LSE(a - alpha log N, b - beta log D, e)), summed Huber
(delta 1e-3) on log L, scipy L-BFGS-B (default options, finite-difference gradients) from each
of 4,500 starts: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25};
the best successful run wins. Both run in this process, BLAS limited to one thread for both.

    python -m benchmarks.fit_speed [--json OUT] [--starts K] [--resamples R]
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from orchestrator.core.laws import varpro
from orchestrator.core.laws.chinchilla import fit_chinchilla
from orchestrator.core.laws.objectives import huber
from orchestrator.core.laws.table import read_table

DATA = Path(__file__).parents[1] / "tests" / "data" / "chinchilla_epoch" / "svg_extracted_data.csv"
NAMES = ("E", "A", "B", "alpha", "beta")


def chinchilla_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 240 points of the replication (5 highest losses dropped), D = C / 6N."""
    t = read_table(DATA)
    N, C, L = t["Model Size"], t["Training FLOP"], t["loss"]
    keep = np.sort(np.argsort(L, kind="stable")[: len(L) - 5])
    return N[keep], C[keep] / (6 * N[keep]), L[keep]


def reference_grid() -> list[list[float]]:
    """The 4,500 starts (a, b, e, alpha, beta) of the replication's grid."""
    alphas = betas = np.arange(0, 2.5, 0.5)
    es = np.arange(-1, 1.5, 0.5)
    abs_ = np.arange(0, 30, 5)
    return [[a, b, e, al, be] for al, be, e, a, b in itertools.product(alphas, betas, es, abs_, abs_)]


def reference_fit(N, D, L, starts) -> tuple[dict[str, float], float, np.ndarray]:
    """Best L-BFGS-B run over the starts (summed Huber on log L, no analytic gradient), all end values."""
    lN, lD, lL = np.log(N), np.log(D), np.log(L)

    def objective(x):
        a, b, e, alpha, beta = x
        pred = logsumexp(np.stack([a - alpha * lN, b - beta * lD, np.full_like(lN, e)]), axis=0)
        return float(huber(pred - lL, 1e-3)[0].sum())

    best_f, best_x, ends = np.inf, None, []
    for s in starts:
        res = minimize(objective, s, method="L-BFGS-B")
        ends.append(res.fun if res.success else np.inf)
        if res.success and res.fun < best_f:
            best_f, best_x = float(res.fun), res.x
    a, b, e, alpha, beta = best_x
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": float(alpha),
            "beta": float(beta)}, best_f, np.array(ends)


def main() -> None:
    """Run the benchmark, print a table and optionally write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    ap.add_argument("--starts", type=int, default=4500, help="reference starts (4500 = the full grid)")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples to time")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of our fit (median time)")
    args = ap.parse_args()

    N, D, L = chinchilla_points()
    ours_t = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = fit_chinchilla(N, D, L)
        ours_t.append(time.perf_counter() - t0)
    t_ours = float(np.median(ours_t))

    starts = reference_grid()[: args.starts]
    with varpro.single_threaded_blas():
        t0 = time.perf_counter()
        ref_params, ref_f, ends = reference_fit(N, D, L, starts)
        t_ref = time.perf_counter() - t0

    t0 = time.perf_counter()
    boot = fit_chinchilla(N, D, L, bootstrap=args.resamples, seed=0)
    t_boot = time.perf_counter() - t0 - t_ours

    # The same bootstrap refits one by one with warm-started L-BFGS-B (the obvious alternative).
    n_serial = min(args.resamples, 200)
    p = varpro.Problem.build(N, D, L)
    theta = varpro.from_natural(ours.params, p)
    rng = np.random.default_rng(0)
    with varpro.single_threaded_blas():
        t0 = time.perf_counter()
        for _ in range(n_serial):
            w = np.bincount(rng.integers(0, len(N), len(N)), minlength=len(N)).astype(float)
            varpro.polish(theta, p.with_weights(w))
        t_serial = (time.perf_counter() - t0) * args.resamples / n_serial
    se = dict(zip(NAMES, boot.samples.std(axis=0, ddof=1).tolist()))

    doc = {
        "n_points": len(N),
        "ours": {"seconds": t_ours, "objective": ours.objective, "params": ours.params},
        "reference": {"seconds": t_ref, "objective": ref_f, "params": ref_params, "starts": len(starts),
                      "starts_reaching_best": int(np.sum(ends <= ref_f * (1 + 1e-4))),
                      "starts_failed": int(np.sum(~np.isfinite(ends)))},
        "speed_ratio": t_ref / t_ours,
        "objective_ratio": ours.objective / ref_f,
        "bootstrap": {"resamples": args.resamples, "seconds_vectorised": t_boot,
                      "seconds_serial_lbfgsb_estimated": t_serial, "serial_from": n_serial, "se": se},
    }
    print(f"{'estimator':<34}{'seconds':>10}{'objective':>16}   E / A / B / alpha / beta")
    for key, label in (("ours", "ours (varpro + L-BFGS-B polish)"),
                       ("reference", f"reference ({len(starts)} starts)")):
        r = doc[key]
        ps = " / ".join(f"{r['params'][k]:.5g}" for k in NAMES)
        print(f"{label:<34}{r['seconds']:>10.3f}{r['objective']:>16.9e}   {ps}")
    print(f"speed ratio (reference / ours): {doc['speed_ratio']:.0f}x; objective ours/reference: "
          f"{doc['objective_ratio']:.9f}")
    r = doc["reference"]
    print(f"reference starts ending within 1e-4 of its best: {r['starts_reaching_best']} of {r['starts']} "
          f"({r['starts_failed']} reported failure)")
    print(f"bootstrap {args.resamples} resamples: {t_boot:.2f} s vectorised "
          f"(serial warm L-BFGS-B ~{t_serial:.1f} s); se " + ", ".join(f"{k} {v:.4g}" for k, v in se.items()))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
