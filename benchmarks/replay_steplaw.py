"""Step-Law replay: per-cell (lr, batch) within 0.25 % of the cell's best, law-guided search vs random vs TPE.

    python -m benchmarks.replay_steplaw [--json OUT] [--fraction 0.25] [--seeds 5]

On the Step-Law dense grid (17 (N, D) cells, 1911 runs; loss = `smooth loss`, batch = bs × 2048)
every method may run at most `fraction` of the grid's runs. A method's pick in a cell is the
best run it made there; the cell is solved when that run's loss is within 0.25 % of the cell's
best loss in the whole grid. Baselines get the same run budget split evenly over the cells
(random search without replacement; Optuna TPE over (log lr, log batch) snapped to the cell's
recorded runs, repeats not counted); the global random baseline draws from the whole table.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import numpy as np

from orchestrator.app.replay import TableReplay, replay, steplaw_replay
from orchestrator.core.planning.search.config import SearchConfig
from orchestrator.config.planners import LawGuidedPlanner

THRESHOLD = 0.0025


def _cells(tr: TableReplay) -> dict[tuple[int, int], list[dict[str, Any]]]:
    out: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in tr.rows:
        out.setdefault((r["N"], r["D"]), []).append(r)
    return dict(sorted(out.items()))


def _score(picks: dict[tuple[int, int], float], best: dict[tuple[int, int], float]) -> dict[str, Any]:
    gaps = {k: (picks[k] / best[k] - 1.0) if k in picks else math.inf for k in best}
    return {"solved": sum(g <= THRESHOLD for g in gaps.values()), "max_gap": max(gaps.values()),
            "mean_gap": float(np.mean([g for g in gaps.values() if math.isfinite(g)] or [math.inf])),
            "gaps": {f"{k[0]}|{k[1]}": g for k, g in gaps.items()}}


def _shares(budget: int, n: int) -> list[int]:
    return [budget // n + (1 if i < budget % n else 0) for i in range(n)]


def run_law(tr: TableReplay, budget: int, seed: int) -> dict[str, Any]:
    """The law-guided planner, tuned for 'solve every cell' (no pruning, no early stop)."""
    cfg = SearchConfig(prune_below=0.0, tolerance=0.0, loss_tolerance=0.0, max_trials=budget)
    pl = LawGuidedPlanner(tr.spec, seed, cfg, candidates=tr.candidates)
    res = replay(pl, tr.lookup)
    picks = {}
    runs = {}
    for t in res.trials:
        r = tr.row_of(t)
        key = (r["N"], r["D"])
        runs[key] = runs.get(key, 0) + 1
        if not r["diverged"]:
            picks[key] = min(picks.get(key, math.inf), r["loss"])
    return {"runs": res.n_trials, "picks": picks, "runs_per_cell": runs, "stopped": res.stopped,
            "laws": pl.laws()}


def run_random_per_cell(cells, budget: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    picks, used = {}, 0
    for (key, rows), k in zip(cells.items(), _shares(budget, len(cells))):
        idx = rng.choice(len(rows), size=min(k, len(rows)), replace=False)
        used += len(idx)
        ok = [rows[i]["loss"] for i in idx if not rows[i]["diverged"]]
        if ok:
            picks[key] = min(ok)
    return {"runs": used, "picks": picks}


def run_random_global(tr: TableReplay, budget: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(tr.rows), size=min(budget, len(tr.rows)), replace=False)
    picks: dict[tuple[int, int], float] = {}
    for i in idx:
        r = tr.rows[i]
        if not r["diverged"]:
            key = (r["N"], r["D"])
            picks[key] = min(picks.get(key, math.inf), r["loss"])
    return {"runs": len(idx), "picks": picks}


def run_tpe_per_cell(cells, budget: int, seed: int) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    picks, used = {}, 0
    for c, ((key, rows), k) in enumerate(zip(cells.items(), _shares(budget, len(cells)))):
        x = np.log([r["lr"] for r in rows])
        y = np.log([r["batch"] for r in rows])
        sx, sy = max(np.ptp(x), 1e-9), max(np.ptp(y), 1e-9)
        sampler = optuna.samplers.TPESampler(seed=seed * 1000 + c)
        study = optuna.create_study(direction="minimize", sampler=sampler)
        seen: dict[int, float] = {}
        asks = 0
        while len(seen) < min(k, len(rows)) and asks < 20 * k:
            asks += 1
            trial = study.ask()
            u = trial.suggest_float("log_lr", float(x.min()), float(x.max()))
            v = trial.suggest_float("log_batch", float(y.min()), float(y.max()))
            # Snap to the nearest recorded run (the table is the only place results exist).
            i = int(np.argmin(((x - u) / sx) ** 2 + ((y - v) / sy) ** 2))
            r = rows[i]
            val = r["loss"] if not r["diverged"] else 1e3
            seen[i] = val  # a repeat costs nothing: the table already answered it
            study.tell(trial, val)
        used += len(seen)
        ok = [rows[i]["loss"] for i in seen if not rows[i]["diverged"]]
        if ok:
            picks[key] = min(ok)
    return {"runs": used, "picks": picks}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison, print the table, optionally write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--fraction", type=float, default=0.25, help="run budget as a fraction of the grid")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per method")
    args = ap.parse_args(argv)

    tr = steplaw_replay()
    cells = _cells(tr)
    best = {k: min(r["loss"] for r in rows if not r["diverged"]) for k, rows in cells.items()}
    budget = int(math.floor(args.fraction * len(tr.rows)))
    out: dict[str, Any] = {"grid_runs": len(tr.rows), "cells": len(cells), "budget_runs": budget,
                           "threshold": THRESHOLD, "seeds": args.seeds, "methods": {}}
    _run_methods(out, {"law-guided": lambda s: run_law(tr, budget, s)}, args.seeds, cells, best)
    law_runs = int(round(out["methods"]["law-guided"]["runs_mean"]))
    # Baselines at the cap and at the runs the law-guided search actually used.
    for b in (budget, law_runs):
        _run_methods(out, {
            f"random (per cell) @{b}": lambda s, b=b: run_random_per_cell(cells, b, s),
            f"random (global) @{b}": lambda s, b=b: run_random_global(tr, b, s),
            f"optuna TPE (per cell) @{b}": lambda s, b=b: run_tpe_per_cell(cells, b, s),
        }, args.seeds, cells, best)
    _print(out, cells, best)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(_clean(out), f, indent=2)
    return out


def _clean(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_clean(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def _run_methods(out: dict[str, Any], methods: dict[str, Any], seeds: int, cells, best) -> None:
    for name, fn in methods.items():
        reps = []
        t0 = time.perf_counter()
        for s in range(seeds):
            r = fn(s)
            reps.append({**_score(r["picks"], best), "runs": r["runs"],
                         **({"runs_per_cell": {f"{k[0]}|{k[1]}": v for k, v in r["runs_per_cell"].items()},
                             "laws": r["laws"], "stopped": r["stopped"]} if "runs_per_cell" in r else {})})
        out["methods"][name] = {
            "runs_mean": float(np.mean([r["runs"] for r in reps])),
            "solved_mean": float(np.mean([r["solved"] for r in reps])),
            "solved_min": int(min(r["solved"] for r in reps)),
            "all_solved_fraction": float(np.mean([r["solved"] == len(cells) for r in reps])),
            "max_gap": float(max(r["max_gap"] for r in reps)),
            "seconds": time.perf_counter() - t0,
            "replicates": reps,
        }


def _print(out: dict[str, Any], cells, best) -> None:
    print(f"Step-Law grid: {out['cells']} cells, {out['grid_runs']} runs; budget {out['budget_runs']} runs "
          f"({out['budget_runs'] / out['grid_runs']:.1%}); solved = best run within {THRESHOLD:.2%} of the cell's best; "
          f"{out['seeds']} seeds")
    print(f"{'method':<30}{'runs':>8}{'runs %':>8}{'solved (mean)':>15}{'min':>5}{'all 17':>8}{'max gap':>10}")
    for name, m in out["methods"].items():
        print(f"{name:<30}{m['runs_mean']:>8.1f}{m['runs_mean'] / out['grid_runs']:>8.1%}"
              f"{m['solved_mean']:>15.2f}{m['solved_min']:>5d}{m['all_solved_fraction']:>8.0%}{m['max_gap']:>10.3%}")
    law = out["methods"]["law-guided"]["replicates"][0]
    print("\nlaw-guided, seed 0, per cell:")
    print(f"{'N':>12}{'D':>14}{'grid runs':>11}{'runs':>6}{'gap':>9}")
    for k, rows in cells.items():
        key = f"{k[0]}|{k[1]}"
        print(f"{k[0]:>12d}{k[1]:>14d}{len(rows):>11d}{law['runs_per_cell'].get(key, 0):>6d}{law['gaps'][key]:>9.3%}")


if __name__ == "__main__":
    main()
