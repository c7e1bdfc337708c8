"""The pruner on real recorded training curves: compute saved and whether a winner was stopped.

    python -m benchmarks.pruning_real [--data FILE ...] [--methods ours,asha,...] [--concurrency 6] [--json OUT]

The curves are real: GPT models trained on CPU by this project (``benchmarks.lr_sweep_curves``;
every ``tests/data/lrsweep/*.csv`` by default, one recorded sweep a file, tests/data/SOURCES.md):
``curves.csv``, 4 sizes (20k-160k parameters, two token budgets) × 6 learning rates (1e-3 … 0.32, √10
apart) × WSD and cosine, plus a second seed at lr 1e-2 (56 trials in 4 (N, D) cells); and the sweeps
recorded with two seeds of every config (``curves-s2-*.csv``). Each file is replayed as one sweep,
and the table gives each sweep and all of them together (compute saved over the FLOPs of every
sweep, winners summed). Nothing is simulated but the clock: the whole sweep is replayed
through `benchmarks.pruning.replay` (``--concurrency`` slots, trials started cheapest first, a
report's time proportional to the FLOPs spent, a stopped trial frees its slot at once), so every
method sees the reports in the order a real run would deliver them -- the same methods as
``benchmarks.pruning`` (ours: `orchestrator.core.pruning.Pruner` with the default `PruneConfig`; ASHA;
Optuna's median and Hyperband pruners), on the same curves, side by side.

Metrics: compute saved = 1 − FLOPs spent / FLOPs of the unpruned sweep; winners lost = trials with
the best final eval loss of their (N, D) cell (both schedules), resp. of their (N, schedule) group,
that the method stopped.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.pruning import METHODS, SimTrial, make_methods, parse_args, replay, score, stops_by
from orchestrator.config.pruning import trial_meta
from trainers.contract import Schedule, TrialConfig

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "lrsweep" / "curves.csv"
SWEEPS = tuple(sorted(DATA.parent.glob("*.csv")))  # every recorded sweep
SECONDS_PER_FLOP = 1e-12  # the replay's clock: a report arrives when its FLOPs are spent


def load_sweep(path: Path = DATA) -> list[SimTrial]:
    """Every recorded run as a trial of one sweep, cheapest first; ``budget`` is its (N, schedule) group."""
    rows: dict[tuple, list[dict]] = defaultdict(list)
    with Path(path).open() as fh:
        for r in csv.DictReader(fh):
            rows[(int(r["n_params"]), r["schedule"], float(r["lr"]), int(r["seed"]), int(r["total_steps"]),
                  int(r.get("batch_tokens") or 2048))].append(r)
    out = []
    for (N, kind, lr, seed, T, b), rs in rows.items():
        cfg = TrialConfig(trial_id=f"N{N}-T{T}-{kind}-lr{lr:.3g}-s{seed}", n_params=N, tokens=T * b, lr=lr,
                          batch_tokens=b, schedule=Schedule(kind=kind), seed=seed)
        if trial_meta(cfg).total_steps != T:
            raise ValueError(f"{cfg.trial_id}: the recorded steps do not match the trial contract's")
        reps = []
        for r in sorted(rs, key=lambda r: int(r["step"])):
            step = float(r["step"])
            flops = 6.0 * N * b * step
            reps.append({"step": step, "train_loss": float(r["train_loss"]), "eval_loss": float(r["eval_loss"]),
                         "flops": flops, "step_time_s": flops * SECONDS_PER_FLOP})
        last = reps[-1]
        final = last["eval_loss"] if last["step"] >= T and math.isfinite(last["eval_loss"]) else math.nan
        out.append(SimTrial(cfg.trial_id, cfg, reps, final, (float(N), float(T * b)), (float(N), kind)))
    out.sort(key=lambda t: (trial_meta(t.config).flops, t.trial_id))
    return out


def run(path: Path = DATA, concurrency: int = 6, methods: tuple[str, ...] = METHODS, seed: int = 0) -> dict[str, Any]:
    """Every method on one recorded sweep, side by side."""
    trials = load_sweep(path)
    max_t = max(len(t.reports) for t in trials)
    rows: dict[str, dict] = {}
    for m in make_methods(seed, max_t, methods):
        np.random.seed(seed)  # ASHA draws its bracket with np.random
        t0 = time.perf_counter()
        stopped = replay(trials, m, concurrency)
        res = score(trials, stopped)
        res["seconds"] = time.perf_counter() - t0
        res["winners"] = _winners(trials, stopped)
        res["flops_total"] = sum(t.flops for t in trials)
        if m.name.startswith("ours"):
            res["stops_by"] = stops_by(m.decisions)
            res["decisions"] = {tid: d.summary() for tid, d in m.decisions.items()}
        rows[m.name] = res
    return {"data": str(path), "trials": len(trials), "concurrency": concurrency, "results": rows}


def overall(sweeps: list[dict[str, Any]]) -> dict[str, dict]:
    """Every method over all the sweeps: compute saved over their FLOPs together, winners summed."""
    out: dict[str, dict] = {}
    for name in sweeps[0]["results"]:
        rs = [s["results"][name] for s in sweeps]
        total = sum(r["flops_total"] for r in rs)
        out[name] = {"compute_saved": sum(r["compute_saved"] * r["flops_total"] for r in rs) / total,
                     "compute_saved_min": min(r["compute_saved"] for r in rs),
                     **{k: sum(r[k] for r in rs) for k in ("stopped", "winners_lost_cell", "cells",
                                                           "winners_lost_compute", "budgets", "seconds")}}
        if "stops_by" in rs[0]:
            out[name]["stops_by"] = {k: sum(r["stops_by"].get(k, 0) for r in rs)
                                     for k in sorted({k for r in rs for k in r["stops_by"]})}
    return out


def _winners(trials: list[SimTrial], stopped: dict) -> list[dict]:
    """Each (N, D) cell's winner: its final loss, the runner-up's, and whether the method stopped it."""
    cells: dict[Any, list[SimTrial]] = defaultdict(list)
    for t in trials:
        if math.isfinite(t.final):
            cells[t.cell].append(t)
    out = []
    for cell, ts in sorted(cells.items()):
        ts.sort(key=lambda t: t.final)
        out.append({"cell": list(cell), "winner": ts[0].trial_id, "final": ts[0].final,
                    "runner_up_gap": ts[1].final / ts[0].final - 1 if len(ts) > 1 else None,
                    "stopped": stopped[ts[0].trial_id] is not None})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=[str(p) for p in SWEEPS],
                    help="recorded sweeps, one a file (the columns of benchmarks.lr_sweep_curves)")
    a, names = parse_args(ap, argv)
    sweeps = [run(Path(d), a.concurrency, names) for d in a.data]
    head = f"{'method':<24}{'saved':>8}{'stopped':>9}{'lost/(N,D)':>12}{'lost/(N,sched)':>16}{'s':>8}"
    for out in sweeps:
        print(f"{out['data']}: {out['trials']} recorded trials, concurrency {out['concurrency']}")
        print(head)
        for name, r in out["results"].items():
            _row(name, r)
    total = overall(sweeps)
    print(f"all {len(sweeps)} sweeps ({sum(s['trials'] for s in sweeps)} trials): compute saved over their FLOPs "
          f"together, winners summed")
    print(head)
    for name, r in total.items():
        _row(name, r)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump({"sweeps": sweeps, "overall": total}, fh, indent=2, default=float)


def _row(name: str, r: dict) -> None:
    print(f"{name:<24}{r['compute_saved']:>8.1%}{r['stopped']:>9}{r['winners_lost_cell']:>7}/{r['cells']:<4}"
          f"{r['winners_lost_compute']:>10}/{r['budgets']:<5}{r['seconds']:>8.1f}")
    if "stops_by" in r:
        print(f"  stops by {r['stops_by']}")


if __name__ == "__main__":
    main()
