"""Could the pruner's frontier rule stop hopeless trials inside the transfer search? (issue 13)

    python -m benchmarks.frontier_in_search [--world tiny,crossing] [--seeds 1] [--json OUT]

Replays the efficiency benchmark's scalesweep arm (`efficiency.scalesweep_spec`: transfer, the
pruner, WSD branching; grid from the default prior; 8 at once) and logs each trial's start and end
in simulated time. For every trial, the pruner's frontier (`orchestrator.core.pruning.frontier`'s recipe:
best final per (N, D) cell, Chinchilla fit with 64 bootstrap replicates once ≥ 8 cells over ≥ 3
sizes have finished, upper end at level 0.9) is fitted on the trials finished when it started, and
the trial's own realised final loss stands in for the law rule's prediction (an oracle: the real
prediction's low end is lower, so the rule stops at most these). Per margin it counts:

- `judged`: trials that started with a frontier to compare with;
- `hopeless`: final > frontier upper end × (1 + margin) — what the frontier rule could stop at best;
  of them `winners` (their cell's best finished run, a point of the L(N, D) fit) and `init`
  (the initial design, whose lattices the lr/batch laws are fitted on);
- `in_time`: of the hopeless, those the law rule could stop before their end at all (not a WSD
  branch, ≥ 4 reports after warmup by `grace` 30 % of the steps, then a second prediction
  ≥ 2 reports and 10 % more steps later: `min_reports` 2), and the FLOPs that would save
  (× the search's spent FLOPs).

A simulated world's truth only scores here (`true_ratio`: final / the true optimum at its compute).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any, Optional

import numpy as np

from benchmarks import efficiency as E
from benchmarks import strategies as S
from orchestrator.core.cells import cell_of
from orchestrator.core.laws.chinchilla import fit_chinchilla, frontier_samples
from orchestrator.config.planners import make_planner
from orchestrator.config.spec import parse_spec
from trainers.worlds import load_world

MARGINS = (0.0, 0.01, 0.02)  # 0.02: PruneConfig.margin's default


class _Logged:
    """A replay scheduler that records starts and ends in simulated-time order."""

    def __init__(self, inner: Any):
        self.inner, self.events = inner, []

    def add(self, run, t):
        self.events.append(("start", t.trial_id, None))
        self.inner.add(run, t)

    def result(self, run, t, iteration, report) -> bool:
        return self.inner.result(run, t, iteration, report)

    def complete(self, run, t, iteration, report, finished) -> None:
        self.events.append(("end", t.trial_id, report["eval_loss"] if finished else None))
        self.inner.complete(run, t, iteration, report, finished)


def _frontier(finals: dict[str, float], cells: dict[str, tuple[float, float]]):
    best: dict[tuple[float, float], float] = {}
    for tid, loss in finals.items():
        best[cells[tid]] = min(loss, best.get(cells[tid], math.inf))
    if len(best) < 8 or len({k[0] for k in best}) < 3:
        return None
    ks = sorted(best)
    try:
        return fit_chinchilla(np.array([k[0] for k in ks]), np.array([k[1] for k in ks]),
                              np.array([best[k] for k in ks]), bootstrap=64, seed=0)
    except (RuntimeError, ValueError):
        return None


def _upper(fit, C: float, level: float = 0.9) -> float:
    est = float(fit.law.frontier([C])["loss_opt"][0])
    reps = frontier_samples(fit.samples, [C])["loss_opt"][:, 0]
    reps = reps[np.isfinite(reps)]
    return max(est, float(np.quantile(reps, 0.5 + level / 2))) if reps.size else est


def earliest_stop(steps: list[float], T: int, warm: float, grace: float = 0.3) -> Optional[float]:
    """Fraction of its steps at which the law rule could stop a run at the earliest (None: never before
    its end): a first prediction once step ≥ grace·T with ≥ 4 reports after warmup, a second vote at
    least 2 reports and 10 % more steps later, before the final report.

    >>> earliest_stop([10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 100, 5)
    0.6
    >>> earliest_stop([57], 57, 3) is None
    True
    """
    first = next((i for i, s in enumerate(steps) if s >= grace * T and sum(x >= warm for x in steps[: i + 1]) >= 4), None)
    if first is None:
        return None
    return next((steps[j] / T for j in range(first + 2, len(steps) - 1) if steps[j] >= 1.1 * steps[first]), None)


def probe(world_name: str, seed: int, concurrency: int = 8) -> dict[str, Any]:
    """One replay of the scalesweep arm with every trial's frontier verdict (see the module doc)."""
    from orchestrator.adapters.tune.scheduler import PrunerScheduler

    target = E.DEFAULT_TARGETS[world_name]
    data = E.benchmark_spec(E.prior_for(None, target)[0], world_name, target, seed)
    world = load_world(world_name)
    grid = S.Grid(parse_spec(data), world)
    spec = parse_spec(E.scalesweep_spec(data, ()))
    planner = make_planner(spec)
    log = _Logged(S.TuneScheduler(PrunerScheduler(spec.pruning, background=False, process=False), grid))
    recs = S.replay(grid, S.PlannerSource(planner, grid), log, concurrency)
    by_id = {r.trial_id: r for r in recs}
    cells = {}
    for r in recs:
        t = grid.by_id[r.trial_id]
        c = cell_of({"N": t.n_target, "D": t.D, "D_nominal": t.D_nominal})
        cells[r.trial_id] = (c.N, c.D)
    best: dict[tuple[float, float], str] = {}
    for r in recs:
        k = cells[r.trial_id]
        if r.status == "finished" and (k not in best or r.final_loss < by_id[best[k]].final_loss):
            best[k] = r.trial_id
    winners = set(best.values())
    init = set(sorted({grid.by_id[r.trial_id].n_target for r in recs})[: planner.config.init_sizes])
    finals: dict[str, float] = {}
    fits: dict[int, Any] = {}
    rows = []
    for kind, tid, loss in log.events:
        if kind == "end":
            if loss is not None:
                finals[tid] = loss
            continue
        t, r = grid.by_id[tid], by_id[tid]
        if len(finals) not in fits:
            fits[len(finals)] = _frontier(dict(finals), cells)
        fit = fits[len(finals)]
        T = max(1, t.D // t.batch)
        warm = (t.warmup if t.warmup is not None else spec.schedule.warmup) * T
        steps = [float(x["step"]) for x in grid.reports(t)]
        row = {"trial_id": tid, "N": t.n_target, "D": t.D, "lr": t.lr, "batch": t.batch, "flops": t.flops,
               "status": r.status, "final": r.final_loss, "branch": bool(t.branch_of), "init": t.n_target in init,
               "winner": tid in winners, "reports": len(steps),
               "stop_at": None if t.branch_of else earliest_stop(steps, T, warm)}
        if fit is not None:
            C = 6.0 * t.n_target * t.D
            finite = math.isfinite(r.final_loss)
            row["ratio"] = r.final_loss / _upper(fit, C) if finite else math.inf
            row["true_ratio"] = r.final_loss / world.optimum(C)["loss"] if finite else math.inf
        rows.append(row)
    spent = sum(r.flops for r in recs)
    summary = {}
    for m in MARGINS:
        hope = [x for x in rows if x.get("ratio", 0.0) > 1 + m]
        in_time = [x for x in hope if x["stop_at"] is not None]
        summary[f"{m:g}"] = {"hopeless": len(hope), "winners": sum(x["winner"] for x in hope),
                             "init": sum(x["init"] for x in hope), "in_time": len(in_time),
                             "in_time_winners": sum(x["winner"] for x in in_time),
                             "saved_vs_spent": sum(x["flops"] * (1 - x["stop_at"]) for x in in_time) / spent}
    return {"world": world_name, "seed": seed, "trials": len(rows), "judged": sum("ratio" in x for x in rows),
            "first_judged": next((i for i, x in enumerate(rows) if "ratio" in x), None),
            "with_4_reports": sum(x["reports"] >= 4 for x in rows),
            "stoppable_at_all": sum(x["stop_at"] is not None for x in rows),
            "pruner_stopped": sum(r.status == "stopped" for r in recs), "spent_flops": spent,
            "margins": summary, "rows": rows}


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="tiny,crossing", help="bundled worlds, comma-separated, or 'all'")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--seed-start", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    worlds = E.bundled_worlds() if args.world == "all" else [w for w in args.world.split(",") if w]
    out = []
    print("| world | seed | trials | judged (first at #) | ≥ 4 reports | stoppable at all | margin: hopeless "
          "(winners, init) / in time, saved |")
    print("|---|---|---|---|---|---|---|")
    for w in worlds:
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            t0 = time.time()
            res = probe(w, seed)
            res["wall_s"] = time.time() - t0
            out.append(res)
            per = "; ".join(f"{m}: {s['hopeless']} ({s['winners']}, {s['init']}) / {s['in_time']}, "
                            f"{s['saved_vs_spent']:.2%}" for m, s in res["margins"].items())
            print(f"| `{w}` | {seed} | {res['trials']} | {res['judged']} (#{res['first_judged']}) | "
                  f"{res['with_4_reports']} | {res['stoppable_at_all']} | {per} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, default=float)


if __name__ == "__main__":
    main()
