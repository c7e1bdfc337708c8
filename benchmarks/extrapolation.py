"""Extrapolation of L(N, D) laws on public data: every candidate form and `--law auto`, backtested.

For each dataset and each outer backtest (leave the largest model size out; leave the largest
compute decade out, i.e. fit C <= C_max/10) the whole procedure is rerun on the training runs only:
each form alone (`fit_auto(forms=[f])`: its fit, its own inner backtests and calibrated intervals)
and `auto` (the selection among all forms, which sees only the training runs too). The held-out
runs then score the point predictions (mean and worst |relative error|, bias) and the 90 %
prediction intervals (coverage, mean width).

Data (tests/data, see tests/data/SOURCES.md): Epoch's 240 Chinchilla points; the datablations runs
(182 of the authors' outlier-removed fit, and all 296) with unique tokens U.

    python -m benchmarks.extrapolation [--json results/extrapolation.json] [--bootstrap 100]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from orchestrator.core.laws.candidates import candidate_forms
from orchestrator.core.laws.result import jsonable
from orchestrator.core.laws.selection import backtest_masks, fit_auto
from orchestrator.core.laws.table import read_table

ROOT = Path(__file__).parents[1] / "tests" / "data"
LEVEL = 0.9


def chinchilla():
    """Epoch's Chinchilla points, the 5 highest losses dropped (240), D = C / 6N."""
    t = read_table(ROOT / "chinchilla_epoch" / "svg_extracted_data.csv")
    N, C, L = t["Model Size"], t["Training FLOP"], t["loss"]
    keep = np.sort(np.argsort(L, kind="stable")[: len(L) - 5])
    return N[keep], C[keep] / (6 * N[keep]), L[keep], None


def datablations(name: str):
    """Muennighoff et al.'s runs with unique tokens U."""
    t = read_table(ROOT / "datablations" / f"{name}.csv")
    return t["N_params"], t["D_tokens_seen"], t["val_loss"], t["U_unique_tokens"]


DATASETS = {"chinchilla": chinchilla, "datablations_182": lambda: datablations("points_182"),
            "datablations_296": lambda: datablations("points_296")}


def evaluate(N, D, L, U, train, forms, bootstrap: int, seed: int) -> dict:
    """Fit on ``train`` with ``forms`` (None = auto), predict the rest with 90 % intervals."""
    test = ~train
    Ut = None if U is None else U[train]
    fit = fit_auto(N[train], D[train], L[train], Ut, forms=forms, bootstrap=bootstrap, seed=seed)
    pred, lo, hi = fit.predict_interval(N[test], D[test], None if U is None else U[test], level=LEVEL)
    rel = pred / L[test] - 1
    cover = (lo <= L[test]) & (L[test] <= hi)
    return {"form": fit.form, "weights": fit.weights, "n_train": int(train.sum()), "n_test": int(test.sum()),
            "mean_abs_rel_error": float(np.mean(np.abs(rel))), "max_abs_rel_error": float(np.max(np.abs(rel))),
            "bias_rel": float(np.mean(rel)), "coverage": float(np.mean(cover)),
            "mean_rel_width": float(np.mean((hi - lo) / pred))}


def write_json(path: Path | None, doc: dict) -> None:
    """Write a benchmark's numbers as JSON (no file when path is None) and say where."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(jsonable(doc), indent=2))
        print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("results/extrapolation.json"), help="write the numbers here")
    ap.add_argument("--bootstrap", type=int, default=100, help="bootstrap replicates per form")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    args = ap.parse_args()
    doc: dict = {"level": LEVEL, "bootstrap": args.bootstrap, "datasets": {}}
    print(f"{'dataset':17} {'backtest':13} {'form':21} {'chosen':19} {'n':>4} {'mean|err|':>9} {'worst':>7} "
          f"{'bias':>7} {'cover90':>7} {'width':>6}")
    for ds in args.datasets:
        N, D, L, U = DATASETS[ds]()
        names = [f.name for f in candidate_forms(N, D, U)]
        doc["datasets"][ds] = {}
        for bt, train in backtest_masks(N, D).items():
            rows = {}
            for form in names + ["auto"]:
                t0 = time.perf_counter()
                try:
                    r = evaluate(N, D, L, U, train, None if form == "auto" else [form], args.bootstrap, args.seed)
                except ValueError as exc:
                    r = {"error": str(exc)}
                r["seconds"] = time.perf_counter() - t0
                rows[form] = r
                if "error" in r:
                    print(f"{ds:17} {bt:13.13} {form:21} error: {r['error']}")
                    continue
                print(f"{ds:17} {bt:13.13} {form:21} {r['form']:19} {r['n_test']:4d} {r['mean_abs_rel_error']:9.2%} "
                      f"{r['max_abs_rel_error']:7.2%} {r['bias_rel']:+7.2%} {r['coverage']:7.1%} "
                      f"{r['mean_rel_width']:6.1%}")
            doc["datasets"][ds][bt] = rows
    write_json(args.json, doc)


if __name__ == "__main__":
    main()
