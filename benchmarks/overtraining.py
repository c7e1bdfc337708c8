"""Over-training extrapolation: fit small models, predict models 10-20x larger, for every form and auto.

The protocol of issue 12's held-out testbed (small models at token multipliers 0.25x-32x
Chinchilla's 20 tokens per parameter; predict models 10-20x larger), on what we have:

- **planted worlds** (truth only scores): 6 sizes 1e7-4e8 x 8 token multipliers 5-640 (48 runs),
  log-normal noise 0.5 %; targets N = 4e9 and 6.9e9 (10x and 17x the largest fitted size) at 5, 20
  and 640 tokens per parameter, each drawn with its own noise. Worlds: ``chinchilla`` (Besiroglu et
  al.'s fit of the Chinchilla points), ``kaplan-E`` (the simulated kaplan world: Kaplan's form above
  E with the same five numbers) and ``interaction`` (Chinchilla plus an N·D term no candidate has:
  + 0.3 (N/1e8)^-0.2 (D/1e9)^-0.2 -- every form is wrong).
- **public data** (tests/data): for thresholds X, fit every run with N <= X and predict every run
  with 10X <= N <= 20X. Epoch's Chinchilla points (X = 1.5e8 ... 6e8) and the datablations runs
  (182, with unique tokens U; X = 2e8 ... 4e8).

Each form alone (`fit_auto(forms=[f])`, its calibrated intervals) and ``auto`` are refitted on the
training runs only. Reported per form: worst and median |relative error| over the cases (a case is
one replication of a world, or one threshold of a dataset; its error is the worst over its
targets), mean |error| and the coverage of 90 % prediction intervals over all targets.

Every target carries its own noise, so no prediction scores 0: two reference rows say how low a
case's worst error can go. ``floor`` is, in a world, the planted truth itself (its error is the
targets' noise: about 1.5 % worst over 20 x 6 targets at 0.5 % noise) and, on public data, the best
single form fitted to the training runs *and the targets* (in sample: what no candidate form can beat
on those runs). ``hindsight`` is, per case, the single form with the lowest case-worst error, chosen
knowing the targets: the best any rule that picks one candidate could do. ``auto-bagged`` is the
same ``auto`` fit and intervals with the bagged point prediction (each form's median over its
bootstrap replicates, `AutoFit.predict_interval(point="bagged")`). In the worlds every row
also scores against the noiseless truth (``vs truth``: the law's own error, which a 1.5 % target is
about).

    python -m benchmarks.overtraining [--reps 20] [--bootstrap 20] [--json results/overtraining.json]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from orchestrator.core.laws.chinchilla import ChinchillaLaw
from orchestrator.core.laws.candidates import candidate_forms
from orchestrator.core.laws.forms import inputs
from orchestrator.core.laws.objectives import DEFAULT_DELTA
from orchestrator.core.laws.selection import fit_auto

from .extrapolation import DATASETS, write_json

LEVEL = 0.9
NOISE = 0.005
SIZES = np.geomspace(1e7, 4e8, 6)
MULTS = np.array([5, 10, 20, 40, 80, 160, 320, 640], float)
TARGET_N = np.array([4e9, 6.9e9])
TARGET_M = np.array([5.0, 20.0, 640.0])
_CH = ChinchillaLaw(E=1.8172, A=477.8, B=2143.9, alpha=0.3473, beta=0.3672)


def _kaplan_e(N, D, E=1.8172, A=482.0, B=2085.4, alpha=0.3478, beta=0.3658):
    return E + ((A / N**alpha) ** (1 / beta) + (B / D**beta) ** (1 / beta)) ** beta


WORLDS = {
    "chinchilla": _CH.predict,
    "kaplan-E": _kaplan_e,
    "interaction": lambda N, D: _CH.predict(N, D) + 0.3 * (N / 1e8) ** -0.2 * (D / 1e9) ** -0.2,
}
THRESHOLDS = {"chinchilla": [1.5e8, 2e8, 3e8, 4e8, 6e8], "datablations_182": [2e8, 3e8, 4e8]}


def planted_cases(world: str, reps: int):
    """(label, N, D, L, U, Nt, Dt, Lt, U_t, noiseless Lt) per replication of a planted world."""
    truth = WORLDS[world]
    N = np.repeat(SIZES, len(MULTS))
    D = N * np.tile(MULTS, len(SIZES))
    Nt = np.repeat(TARGET_N, len(TARGET_M))
    Dt = Nt * np.tile(TARGET_M, len(TARGET_N))
    for rep in range(reps):
        rng = np.random.default_rng(20_000 + rep)
        L = truth(N, D) * np.exp(rng.normal(0, NOISE, N.size))
        Lt = truth(Nt, Dt) * np.exp(rng.normal(0, NOISE, Nt.size))
        yield f"rep {rep}", N, D, L, None, Nt, Dt, Lt, None, truth(Nt, Dt)


def public_cases(ds: str):
    """Fit N <= X, predict 10X <= N <= 20X, for each threshold X of the dataset."""
    N, D, L, U = DATASETS[ds]()
    for x in THRESHOLDS[ds]:
        tr = N <= x * 1.001
        te = (N >= 10 * x * 0.999) & (N <= 20 * x * 1.001)
        if te.sum() == 0 or len(np.unique(np.round(np.log(N[tr]), 3))) < 3:
            continue
        sub = (lambda a, m: None if a is None else a[m])
        yield f"X={x:.2g}", N[tr], D[tr], L[tr], sub(U, tr), N[te], D[te], L[te], sub(U, te), None


def score(N, D, L, U, Nt, Dt, Lt, Ut, truth, forms, bootstrap: int, seed: int) -> dict:
    """Fit with ``forms`` (None = auto), predict the targets: errors (and against the noiseless
    ``truth`` when known), coverage, chosen form."""
    fit = fit_auto(N, D, L, U, forms=forms, bootstrap=bootstrap, seed=seed)
    pred, lo, hi = fit.predict_interval(Nt, Dt, Ut, level=LEVEL)
    rel = pred / Lt - 1
    out = {"form": fit.form, "weights": {k: round(v, 3) for k, v in fit.weights.items() if v > 0},
           "n_train": int(len(L)), "n_test": int(len(Lt)), "rel_errors": rel.tolist(),
           "covered": ((lo <= Lt) & (Lt <= hi)).tolist(), "rel_width": ((hi - lo) / pred).tolist()}
    bag = np.exp(fit.law.bagged_log_predict(Nt, Dt, Ut))  # the same fit, bagged point (row auto-bagged)
    out["bagged"] = {"rel_errors": (bag / Lt - 1).tolist()}
    if truth is not None:
        out["rel_errors_truth"] = (pred / truth - 1).tolist()
        out["bagged"]["rel_errors_truth"] = (bag / truth - 1).tolist()
    return out


def bagged(row: dict) -> dict:
    """An ``auto`` row with the bagged point prediction (same fit, same intervals).

    >>> bagged({"form": "f", "rel_errors": [0.02], "covered": [True], "bagged": {"rel_errors": [0.01]}})
    {'form': 'f', 'rel_errors': [0.01], 'covered': [True]}
    """
    if "bagged" not in row:
        raise ValueError(row.get("error", "no bagged prediction"))
    return {**{k: v for k, v in row.items() if k != "bagged"}, **row["bagged"]}


def floor(N, D, L, U, Nt, Dt, Lt, Ut, truth) -> dict:
    """The reference row: the truth in a world; on data the best form fitted in sample to the runs and targets."""
    if truth is not None:
        return {"form": "truth", "rel_errors": (truth / Lt - 1).tolist(), "rel_errors_truth": [0.0] * len(Lt)}
    cat = (lambda a, b: None if a is None else np.concatenate([a, b]))
    X = inputs(cat(N, Nt), cat(D, Dt), cat(U, Ut))
    logL = np.log(cat(L, Lt))
    best = None
    for form in candidate_forms(X["N"], X["D"], X.get("U")):
        theta, _ = form.fit(X, logL, "huber", DEFAULT_DELTA)
        rel = np.expm1(form.log_predict(theta[None, :], X)[0] - logL)[len(L):]
        if best is None or np.max(np.abs(rel)) < np.max(np.abs(best["rel_errors"])):
            best = {"form": form.name, "rel_errors": rel.tolist()}
    return best


def hindsight(rows: list[dict]) -> dict:
    """The single form whose case-worst error was lowest on this case, picked knowing the targets: the
    best that choosing one candidate form could do.

    >>> hindsight([{"form": "a", "rel_errors": [0.03, -0.01]}, {"form": "b", "rel_errors": [0.02, 0.0]}])["form"]
    'b'
    """
    ok = [r for r in rows if "rel_errors" in r]
    if not ok:
        raise ValueError("no form fitted this case")
    return dict(min(ok, key=lambda r: float(np.max(np.abs(r["rel_errors"])))))


def summarise(cases: list[dict]) -> dict:
    """Worst and median over cases of each case's worst |error| (and against the truth where known); mean
    |error| and coverage over targets."""
    worst = np.array([np.max(np.abs(c["rel_errors"])) for c in cases])
    allerr = np.abs(np.concatenate([c["rel_errors"] for c in cases]))
    chosen: dict[str, int] = {}
    for c in cases:
        chosen[c["form"]] = chosen.get(c["form"], 0) + 1
    out = {"cases": len(cases), "n_targets": int(len(allerr)), "worst": float(worst.max()),
           "median_case_worst": float(np.median(worst)), "mean_abs": float(allerr.mean()), "chosen": chosen}
    if all("covered" in c for c in cases):
        out["coverage"] = float(np.mean(np.concatenate([c["covered"] for c in cases])))
        out["mean_width"] = float(np.mean(np.concatenate([c["rel_width"] for c in cases])))
    if all("rel_errors_truth" in c for c in cases):
        wt = np.array([np.max(np.abs(c["rel_errors_truth"])) for c in cases])
        out["worst_vs_truth"] = float(wt.max())
        out["median_vs_truth"] = float(np.median(wt))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20, help="replications per planted world")
    ap.add_argument("--bootstrap", type=int, default=20, help="bootstrap replicates per form")
    ap.add_argument("--worlds", nargs="*", default=list(WORLDS), choices=list(WORLDS))
    ap.add_argument("--datasets", nargs="*", default=list(THRESHOLDS), choices=list(THRESHOLDS))
    ap.add_argument("--forms", nargs="*", default=None, help="single forms to score beside auto (default: all)")
    ap.add_argument("--json", type=Path, default=Path("results/overtraining.json"))
    args = ap.parse_args()
    doc: dict = {"level": LEVEL, "bootstrap": args.bootstrap, "reps": args.reps, "settings": {}}
    settings = [(f"world:{w}", list(planted_cases(w, args.reps))) for w in args.worlds]
    settings += [(f"data:{d}", list(public_cases(d))) for d in args.datasets]
    print(f"{'setting':24} {'form':19} {'cases':>5} {'worst':>7} {'median':>7} {'mean':>6} {'cover90':>7} "
          f"{'width':>6} {'vs truth: worst':>15} {'median':>7}  chosen")
    for name, cases in settings:
        N0, D0, U0 = cases[0][1], cases[0][2], cases[0][4]
        names = args.forms if args.forms is not None else [f.name for f in candidate_forms(N0, D0, U0)]
        doc["settings"][name] = {}
        for form in ["floor"] + names + (["hindsight"] if len(names) > 1 else []) + ["auto", "auto-bagged"]:
            t0 = time.process_time()
            rows = []
            for i, (label, *data) in enumerate(cases):
                try:
                    if form == "hindsight":
                        r = hindsight([doc["settings"][name][f]["cases"][i] for f in names])
                    elif form == "auto-bagged":
                        r = bagged(doc["settings"][name]["auto"]["cases"][i])
                    else:
                        r = (floor(*data) if form == "floor" else
                             score(*data, None if form == "auto" else [form], args.bootstrap, i))
                except ValueError as exc:
                    r = {"error": str(exc)}
                r["case"] = label
                rows.append(r)
            ok = [r for r in rows if "error" not in r]
            s = summarise(ok) if ok else {"cases": 0}
            s["cpu_seconds"] = time.process_time() - t0
            s["failed"] = len(rows) - len(ok)
            doc["settings"][name][form] = {"summary": s, "cases": rows}
            if not ok:
                print(f"{name:24} {form:19} all cases failed")
                continue
            ch = ", ".join(f"{k} {v}" for k, v in sorted(s["chosen"].items(), key=lambda kv: -kv[1]))
            cov = f"{s['coverage']:7.1%} {s['mean_width']:6.1%}" if "coverage" in s else f"{'':7} {'':6}"
            vs = (f"{s['worst_vs_truth']:15.2%} {s['median_vs_truth']:7.2%}" if "worst_vs_truth" in s
                  else f"{'':15} {'':7}")
            ch = ch if form in ("auto", "floor", "hindsight") else ""
            print(f"{name:24} {form:19} {s['cases']:5d} {s['worst']:7.2%} {s['median_case_worst']:7.2%} "
                  f"{s['mean_abs']:6.2%} {cov} {vs}  {ch}", flush=True)
    write_json(args.json, doc)


if __name__ == "__main__":
    main()
