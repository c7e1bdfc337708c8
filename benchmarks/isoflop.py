"""IsoFLOP exponents: Porian et al.'s protocol vs Hoffmann et al.'s Approach 2 vs a parabola through every point.

Public data: Epoch's extraction of the Chinchilla isoFLOP runs (Hoffmann et al. report a = 0.49 by
Approach 2; Epoch's refit of Approach 3 gives a = 0.513). Planted worlds: the Chinchilla surface
of Besiroglu et al. (E 1.8172, A 477.8, B 2143.9, alpha 0.3473, beta 0.3672; a = 0.5139) sampled
on isoFLOP grids (9 budgets 6e18..3e21, 11 sizes a budget spanning 2.3 e-folds, 10x, either side
of the grid centre) with Gaussian loss noise; the grid centre is the true optimum ("centred"),
1.5 e-folds above it ("offset": the minimum sits near the small-N edge) or drifts from 1.5 e-folds
below to 1.5 above across budgets ("drift": the naive parabola's exponent bias); or Porian et al.'s
own grid of 16 sizes and 12 budgets ("porian-grid"). The truth only scores.

    python -m benchmarks.isoflop [--reps R] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from orchestrator.core.laws.isoflop import fit_isoflop, group_budgets
from orchestrator.core.laws.table import read_table

DATA = Path(__file__).parents[1] / "tests" / "data" / "chinchilla_epoch" / "svg_extracted_data.csv"
E, A, B, ALPHA, BETA = 1.8172, 477.8, 2143.9, 0.3473, 0.3672
A_TRUE = BETA / (ALPHA + BETA)
BUDGETS = (6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21)
DESIGNS = {"centred": (0.0, 0.0), "offset": (1.5, 1.5), "drift": (-1.5, 1.5)}


def planted(seed: int, design: str = "centred", noise: float = 0.002, per_budget: int = 11,
            half_width: float = 2.3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Runs (N, D, C, loss) on isoFLOP grids of the Chinchilla world; additive N(0, noise²) loss noise."""
    rng = np.random.default_rng(seed)
    if design == "porian-grid":
        N, C = porian_grid()
        D = C / (6 * N)
        return N, D, C, E + A / N ** ALPHA + B / D ** BETA + rng.normal(0, noise, len(N))
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    first, last = DESIGNS[design]
    Ns, Cs = [], []
    for i, c in enumerate(BUDGETS):
        shift = first + (last - first) * i / (len(BUDGETS) - 1)
        centre = g * (c / 6) ** A_TRUE * math.exp(shift)
        Ns.append(centre * np.exp(np.linspace(-half_width, half_width, per_budget)))
        Cs.append(np.full(per_budget, c))
    N, C = np.concatenate(Ns), np.concatenate(Cs)
    D = C / (6 * N)
    return N, D, C, E + A / N ** ALPHA + B / D ** BETA + rng.normal(0, noise, len(N))


def porian_grid() -> tuple[np.ndarray, np.ndarray]:
    """Porian et al.'s design: their 16 model sizes (5M-901M) at budgets 1.25e16 * 2^k, k = 0..11,
    each size at every budget where it sees 0.5-300 tokens per parameter (sizes, not their runs)."""
    sizes = np.array([5.17, 7.50, 9.81, 15.6, 22.5, 28.7, 37.1, 57.4, 84.8, 108.5, 149.0, 220.9, 347.1,
                      455.3, 612.0, 901.7]) * 1e6
    Ns, Cs = [], []
    for c in 1.25e16 * 2.0 ** np.arange(12):
        keep = (c / (6 * sizes ** 2) > 0.5) & (c / (6 * sizes ** 2) < 300)
        Ns.append(sizes[keep])
        Cs.append(np.full(int(keep.sum()), c))
    return np.concatenate(Ns), np.concatenate(Cs)


def naive_exponent(N, D, L, C) -> float:
    """The pre-protocol estimator: a parabola in log N through every run of a budget, OLS of the vertices."""
    labels = group_budgets(C)
    lc, ln = [], []
    for g in np.unique(labels):
        m = labels == g
        x = np.log(N[m])
        if len(np.unique(np.round(x, 9))) < 3:
            continue
        c2, c1, _ = np.polyfit(x - x.mean(), L[m], 2)
        x = x - x.mean()
        v = -c1 / (2 * c2)
        if c2 > 0 and x.min() <= v <= x.max():
            lc.append(np.log(C[m]).mean())
            ln.append(v + np.log(N[m]).mean())
    return float(np.polyfit(lc, ln, 1)[0]) if len(lc) >= 2 else math.nan


def _summary(r) -> dict:
    out = {}
    for m, doc in r.extra["methods"].items():
        out[m] = {k: doc["intervals"][k] for k in ("N_exp", "D_exp")} | {"n_budgets": doc["n_budgets"]}
    return out


def public(level: float) -> dict:
    t = read_table(DATA)
    N, C, L = t["Model Size"], t["Training FLOP"], t["loss"]
    t0 = time.perf_counter()
    r = fit_isoflop(N, C / (6 * N), L, C, bootstrap=1000, seed=0, level=level)
    return {"seconds": time.perf_counter() - t0, "methods": _summary(r), "warnings": r.warnings,
            "naive_N_exp": naive_exponent(N, C / (6 * N), L, C)}


def planted_worlds(reps: int, noise: float, level: float) -> dict:
    out = {}
    for design in (*DESIGNS, "porian-grid"):
        rows = {"porian": [], "approach2": [], "naive": []}
        warned = 0
        for s in range(reps):
            N, D, C, L = planted(s, design, noise)
            r = fit_isoflop(N, D, L, C, bootstrap=200, seed=s, level=level, noise=noise)
            for m, doc in r.extra["methods"].items():
                iv = doc["intervals"]["N_exp"]
                rows[m].append((iv["estimate"], iv["low"] <= A_TRUE <= iv["high"]))
            rows["naive"].append((naive_exponent(N, D, L, C), False))
            warned += any("disagree" in w for w in r.warnings)
        res = {}
        for m, v in rows.items():
            est = np.array([e for e, _ in v])
            res[m] = {"mean": float(np.nanmean(est)), "bias": float(np.nanmean(est) - A_TRUE),
                      "rmse": float(np.sqrt(np.nanmean((est - A_TRUE) ** 2))),
                      "coverage": None if m == "naive" else float(np.mean([c for _, c in v]))}
        res["disagreement_warnings"] = warned / reps
        out[design] = res
    return out


def noise_sensitivity(reps: int, level: float) -> dict:
    """Porian's exponent on their grid when the bootstrap's assumed noise differs from the data's."""
    out = {}
    for data_noise in (0.002, 0.01):
        for assumed in (0.002, 0.01):
            est, cov = [], []
            for s in range(reps):
                N, D, C, L = planted(s, "porian-grid", data_noise)
                r = fit_isoflop(N, D, L, C, seed=s, level=level, noise=assumed, bootstrap=20)
                iv = r.extra["methods"]["porian"]["intervals"]["N_exp"]
                est.append(iv["estimate"])
                cov.append(iv["low"] <= A_TRUE <= iv["high"])
            e = np.array(est)
            out[f"data {data_noise} / assumed {assumed}"] = {
                "mean": float(e.mean()), "rmse": float(np.sqrt(np.mean((e - A_TRUE) ** 2))),
                "coverage": float(np.mean(cov))}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=100, help="replications per planted design")
    p.add_argument("--noise", type=float, default=0.002, help="loss noise (nats) in the planted worlds")
    p.add_argument("--level", type=float, default=0.9)
    p.add_argument("--json", type=Path, default=Path("results/isoflop.json"))
    args = p.parse_args(argv)
    doc = {"truth_a": A_TRUE, "level": args.level, "noise": args.noise, "public": public(args.level),
           "planted": planted_worlds(args.reps, args.noise, args.level),
           "noise_sensitivity": noise_sensitivity(max(args.reps // 2, 2), args.level)}
    pub = doc["public"]
    print(f"Chinchilla points (Epoch extraction), {args.level:.0%} intervals; Hoffmann Approach 2 published 0.49")
    for m, v in pub["methods"].items():
        for q in ("N_exp", "D_exp"):
            iv = v[q]
            print(f"  {m:10s} {q} = {iv['estimate']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]"
                  f"  ({v['n_budgets']} budgets)")
    print(f"  naive      N_exp = {pub['naive_N_exp']:.3f}")
    print(f"\nPlanted Chinchilla worlds, true a = {A_TRUE:.4f}, noise {args.noise} nats, {args.reps} replications")
    print(f"{'design':11s} {'method':10s} {'mean a':>8s} {'bias':>8s} {'rmse':>7s} {'coverage':>9s}")
    for design, res in doc["planted"].items():
        for m in ("porian", "approach2", "naive"):
            v = res[m]
            cov = "–" if v["coverage"] is None else f"{v['coverage']:.2f}"
            print(f"{design:11s} {m:10s} {v['mean']:8.4f} {v['bias']:+8.4f} {v['rmse']:7.4f} {cov:>9s}")
        print(f"{design:11s} disagreement warning in {res['disagreement_warnings']:.0%} of replications")
    print("\nPorian on their grid: data noise vs the noise its bootstrap assumes (--isoflop-noise)")
    for k, v in doc["noise_sensitivity"].items():
        print(f"  {k:28s} mean a {v['mean']:.4f}  rmse {v['rmse']:.4f}  coverage {v['coverage']:.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2, default=float))
    print(f"\nwrote {args.json}")
    return doc


if __name__ == "__main__":
    main()
