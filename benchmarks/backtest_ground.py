"""Which backtests forms are compared on, when a small design leaves a form unable to run one.

`fit_auto` refits a form in a backtest only with at least n_params + 2 training runs. On a 16-cell
design like tests/data/sweep_isoflop (4 N 2e4-1.6e5 x 4 D 4e5-3.2e6) the compute-decade backtest
trains on 6 runs: the 4-parameter forms run it, the 5-parameter ones cannot. Four rules for the score
(the mean RMS log error over backtests), replayed on planted worlds of that design (truth only scores):

- ``imputed`` (`selection.score_on_common_backtests`, the default): every form on every backtest,
  a missing one imputed as form effect + backtest effect in log score;
- ``old``: each form on the backtests it ran (before 7 Dec 2026);
- ``dropped``: every form on the backtests every form ran;
- ``excluded``: a form missing a backtest that another ran gets no score (weight 0).

Reported per world and rule: median and worst over replications of the worst |error| against the
noiseless truth at 6.4e5-1.3e6 parameters (4-8x the largest size), the median |log error| of
tokens/param at 1e13 FLOPs, the coverage of its 90 % interval, and the forms chosen.

    python -m benchmarks.backtest_ground [--reps 30] [--noise 0.0076] [--json results/backtest_ground.json]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

import orchestrator.core.laws.selection as sel
from trainers.worlds.world import load_world

from .extrapolation import write_json

C_TARGET = 1e13
N_CELLS = np.repeat([2e4, 4e4, 8e4, 1.6e5], 4)
D_CELLS = np.tile([4e5, 8e5, 1.6e6, 3.2e6], 4)
N_TARGET = np.array([6.4e5, 6.4e5, 1.28e6])
D_TARGET = np.array([3.2e6, 1.28e7, 2.56e7])
WORLDS = {"tiny": {}, "kaplan-E": {"form": "kaplan"},
          "unequal": {"alpha": 0.5, "beta": 0.25, "A": 19.5815 * 1e5 ** (0.5 - 0.3478),
                      "B": 71.7777 * 1e6 ** (0.25 - 0.3658)}}  # the tiny world, loss surface changed


def _ran(fits):
    return [(f, [k for k, bt in f.backtests.items() if "rmse_log" in bt]) for f in fits if f.theta is not None]


def _old(fits):
    for f, names in _ran(fits):
        f.imputed = {}
        f.score = float(np.mean([f.backtests[k]["rmse_log"] for k in names])) if names else math.nan
    return sorted({k for _, n in _ran(fits) for k in n})


def _by_ground(union: bool):
    def rule(fits):
        ran = [(f, set(n)) for f, n in _ran(fits)]
        sets = [n for _, n in ran if n]
        ground = sorted(set.union(*sets) if union else set.intersection(*sets)) if sets else []
        for f, _ in ran:
            f.imputed = {}
            f.score = sel._score_on(f, ground)
        return ground
    return rule


RULES = {"imputed": sel.score_on_common_backtests, "old": _old, "dropped": _by_ground(False),
         "excluded": _by_ground(True)}


def run(world_name: str, reps: int, noise: float, bootstrap: int) -> dict:
    """Every rule on `reps` noisy copies of one planted world's 16 cells."""
    base = load_world("tiny")
    world = base.model_copy(update={"loss": base.loss.model_copy(update=WORLDS[world_name])})
    opt = world.optimum(C_TARGET)
    tpp_true = opt["D"] / opt["N"]
    truth_t = world.loss_star(N_TARGET, D_TARGET)
    rows = {r: {"worst": [], "tpp_logerr": [], "covered": [], "chosen": {}} for r in RULES}
    default = sel.score_on_common_backtests
    try:
        for rep in range(reps):
            L = world.loss_star(N_CELLS, D_CELLS) * np.exp(np.random.default_rng(rep).normal(0, noise, N_CELLS.size))
            for r, fn in RULES.items():
                sel.score_on_common_backtests = fn
                fit = sel.fit_auto(N_CELLS, D_CELLS, L, bootstrap=bootstrap, budgets=[C_TARGET], seed=rep)
                iv = fit.intervals["budgets"][sel.budget_key(C_TARGET)]["tokens_per_param"]
                o = rows[r]
                o["worst"].append(float(np.max(np.abs(fit.law.predict(N_TARGET, D_TARGET) / truth_t - 1))))
                o["tpp_logerr"].append(abs(math.log(iv["estimate"] / tpp_true)))
                o["covered"].append(bool(iv["low"] <= tpp_true <= iv["high"]))
                o["chosen"][fit.form] = o["chosen"].get(fit.form, 0) + 1
    finally:
        sel.score_on_common_backtests = default
    return {"tokens_per_param_true": tpp_true, "rules": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30, help="replications per world")
    ap.add_argument("--noise", type=float, default=0.0076, help="log-normal noise of a cell's loss")
    ap.add_argument("--bootstrap", type=int, default=20, help="bootstrap replicates per form")
    ap.add_argument("--worlds", nargs="*", default=list(WORLDS), choices=list(WORLDS))
    ap.add_argument("--json", type=Path, default=Path("results/backtest_ground.json"))
    args = ap.parse_args()
    doc = {"reps": args.reps, "noise": args.noise, "bootstrap": args.bootstrap, "worlds": {}}
    print(f"{'world':9s} {'rule':9s} {'worst vs truth: median':>23s} {'max':>7s} {'tpp |log err|':>14s} "
          f"{'tpp cover90':>12s}  chosen")
    for w in args.worlds:
        res = doc["worlds"][w] = run(w, args.reps, args.noise, args.bootstrap)
        for r, o in res["rules"].items():
            worst = np.array(o["worst"])
            print(f"{w:9s} {r:9s} {np.median(worst):23.2%} {worst.max():7.2%} {np.median(o['tpp_logerr']):14.3f} "
                  f"{np.mean(o['covered']):12.2f}  {o['chosen']}")
    write_json(args.json, doc)


if __name__ == "__main__":
    main()
