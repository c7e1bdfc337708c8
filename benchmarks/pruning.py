"""Compute saved and winners lost: our pruner vs ASHA vs Optuna's median and Hyperband pruners.

    python -m benchmarks.pruning [--world tiny[,bent,...]] [--seeds K] [--seed-start S] [--methods ours,asha,...]
                                 [--concurrency 6] [--json OUT]

Seeds S, S+1, ..., S+K-1 (default 0..2); ``--methods`` picks a subset of the methods (default all).

A simulated sweep (``trainers.simulated.train``, the world's ground truth; no model is trained):
two isoFLOP budgets × three sizes (the world's compute-optimal N and N/2, 2N) × a fixed 6-value
lr grid (√10 apart, the same absolute values for every size, as a user would write it) × WSD and
cosine schedules. Every trial's full curve is generated once; each method then sees the same
curves **replayed** through an event-driven simulation of the sweep: ``--concurrency`` slots,
trials started cheapest first, reports arriving at their simulated wall time (the trainer's
``step_time_s``), a stopped trial frees its slot at once. So every method sees reports in the
order a real Tune run would deliver them, and one that stops early also changes what runs when.

- ours: ``orchestrator.core.pruning.Pruner`` (default PruneConfig, every registered rule; TrialMeta from
  the trial config), the same without its forecast rule (what that rule adds), and without its paired
  rule (``paired_grace`` 0.99: the law-prediction rules alone);
- ASHA: Ray Tune's ``AsyncHyperBandScheduler`` with its defaults (time_attr training_iteration,
  grace_period 1, reduction_factor 4, 1 bracket) except ``max_t``, set to the longest trial's
  report count (the default 100 would cut every longer trial at 100 reports); its
  ``on_trial_add/on_trial_result/on_trial_complete`` are called directly with lightweight trial
  objects (it reads only ``trial_id``), exactly the calls Tune's controller makes;
- Optuna: ``MedianPruner()`` and ``HyperbandPruner()`` with defaults, one ask()-ed trial per sweep
  trial, ``trial.report(eval_loss, step)`` + ``should_prune()`` per report, ``tell`` at the end.

Metrics (per seed, then totals): compute saved = 1 − FLOPs spent / FLOPs of the unpruned sweep
(diverged trials stop themselves in both); winners lost = trials with the best final loss of
their (N, D) cell, resp. of their compute budget, that the method stopped.
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.core.pruning import RULES, PruneConfig, Pruner, TrialMeta
from orchestrator.config.pruning import trial_meta
from trainers.contract import Schedule, TrialConfig
from trainers.simulated import train
from trainers.worlds import load_world

LR_GRID = (1e-3, 10**-2.5, 1e-2, 10**-1.5, 1e-1, 10**-0.5)
BUDGETS = (3e12, 3e13)
SIZE_FACTORS = (0.5, 1.0, 2.0)
SCHEDULES = (Schedule(kind="wsd"), Schedule(kind="cosine"))
REPORTS_PER_TRIAL = 60


@dataclass
class SimTrial:
    """One trial of the simulated sweep with its full, pre-generated report stream."""

    trial_id: str
    config: TrialConfig
    reports: list[dict[str, float]]
    final: float  # realised final eval loss (NaN when diverged)
    cell: tuple[float, float]
    budget: float

    @property
    def flops(self) -> float:
        return self.reports[-1]["flops"]


def make_sweep(world: str = "tiny", seed: int = 0) -> list[SimTrial]:
    """The sweep's trials, cheapest first, each with the reports the simulated trainer produces."""
    w = load_world(world)
    out = []
    for C in BUDGETS:
        n_opt = w.optimum(C)["N"]
        for f in SIZE_FACTORS:
            N = int(round(n_opt * f))
            D = C / (6.0 * N)
            batch = max(128, int(round(w.batch_star(D) / 128)) * 128)
            steps = math.ceil(D / batch)
            every = max(1, steps // REPORTS_PER_TRIAL)
            for sched in SCHEDULES:
                for lr in LR_GRID:
                    tid = f"C{C:.0e}-N{N}-{sched.kind}-lr{lr:.3g}-s{seed}"
                    cfg = TrialConfig(trial_id=tid, n_params=N, tokens=int(D), lr=lr, batch_tokens=batch,
                                      schedule=sched, eval_every=every, seed=seed)
                    reps: list[dict[str, float]] = []
                    s = train(cfg, reps.append, w)
                    out.append(SimTrial(tid, cfg, reps, s.final_eval_loss, (float(N), float(f"{D:.3g}")), C))
    # Cheapest first by *planned* FLOPs (a diverged trial's realised FLOPs must not leak into the order).
    out.sort(key=lambda t: (trial_meta(t.config).flops, t.trial_id))
    return out


# ---------------------------------------------------------------------------- methods
class Method:
    """A pruning method driven by the replay: start, report (True = stop), complete."""

    name = "none"

    def start(self, t: SimTrial) -> None:
        pass

    def report(self, t: SimTrial, i: int, rep: dict[str, float]) -> bool:
        return False

    def complete(self, t: SimTrial, rep: dict[str, float]) -> None:
        pass


class OurPruner(Method):
    name = "ours"

    def __init__(self, config: PruneConfig = PruneConfig(), name: str = "ours", pruner: Pruner | None = None):
        self.name = name
        self.pruner = pruner if pruner is not None else Pruner(config)
        self.metas: dict[str, TrialMeta] = {}
        self.decisions: dict[str, Any] = {}
        self.report_s: list[float] = []

    def start(self, t):
        self.metas[t.trial_id] = trial_meta(t.config)

    def report(self, t, i, rep):
        t0 = time.perf_counter()
        d = self.pruner.on_report(t.trial_id, self.metas[t.trial_id], rep)
        self.report_s.append(time.perf_counter() - t0)
        if d.stops:
            self.decisions[t.trial_id] = d
        return d.stops

    def complete(self, t, rep):
        self.pruner.on_complete(t.trial_id, rep["eval_loss"])


class _LiteTrial:
    """What AsyncHyperBandScheduler reads of a Tune Trial: its id."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id


class Asha(Method):
    name = "asha"

    def __init__(self, max_t: int):
        from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

        self.stop = TrialScheduler.STOP
        self.s = AsyncHyperBandScheduler(metric="eval_loss", mode="min", max_t=max_t)
        self.trials: dict[str, _LiteTrial] = {}

    def start(self, t):
        self.trials[t.trial_id] = _LiteTrial(t.trial_id)
        self.s.on_trial_add(None, self.trials[t.trial_id])

    def report(self, t, i, rep):
        res = {"training_iteration": i + 1, "eval_loss": rep["eval_loss"]}
        # Reaching max_t at a trial's own last report is its normal end, not a prune.
        return self.s.on_trial_result(None, self.trials[t.trial_id], res) == self.stop and i + 1 < len(t.reports)

    def complete(self, t, rep):
        self.s.on_trial_complete(None, self.trials[t.trial_id], {"training_iteration": len(t.reports),
                                                                  "eval_loss": rep["eval_loss"]})


class OptunaPruner(Method):
    def __init__(self, kind: str, seed: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        pruner = optuna.pruners.MedianPruner() if kind == "median" else optuna.pruners.HyperbandPruner()
        self.name = f"optuna-{kind}"
        # named: Optuna's HyperbandPruner puts trials in brackets by a hash of the study's name, so an
        # unnamed (random-name) study gives other figures on every run
        self.study = optuna.create_study(direction="minimize", pruner=pruner, study_name=f"{self.name}-{seed}",
                                         sampler=optuna.samplers.RandomSampler(seed=seed))
        self.trials: dict[str, Any] = {}

    def start(self, t):
        self.trials[t.trial_id] = self.study.ask()

    def report(self, t, i, rep):
        v = rep["eval_loss"]
        tr = self.trials[t.trial_id]
        if not math.isfinite(v):
            return False
        tr.report(v, int(rep["step"]))
        if i + 1 < len(t.reports) and tr.should_prune():
            self.study.tell(tr, state=self.optuna.trial.TrialState.PRUNED)
            return True
        return False

    def complete(self, t, rep):
        v = rep["eval_loss"]
        st = self.optuna.trial.TrialState
        if math.isfinite(v):
            self.study.tell(self.trials[t.trial_id], v)
        else:
            self.study.tell(self.trials[t.trial_id], state=st.FAIL)


# ---------------------------------------------------------------------------- replay
def replay(trials: list[SimTrial], method: Method, concurrency: int) -> dict[str, int | None]:
    """Run the sweep through ``method``: trial id -> index of the report it was stopped at (None = ran to end)."""
    queue = list(trials)[::-1]
    events: list[tuple[float, int, int, int]] = []
    stopped: dict[str, int | None] = {}
    seq = 0

    def start(now: float) -> None:
        nonlocal seq
        if queue:
            t = queue.pop()
            idx = trials.index(t)
            method.start(t)
            heapq.heappush(events, (now + t.reports[0]["step_time_s"], seq, idx, 0))
            seq += 1

    for _ in range(concurrency):
        start(0.0)
    starts = {}
    while events:
        now, _, idx, i = heapq.heappop(events)
        t = trials[idx]
        starts.setdefault(t.trial_id, now - t.reports[0]["step_time_s"])
        rep = t.reports[i]
        if method.report(t, i, rep):
            stopped[t.trial_id] = i
            start(now)
        elif i + 1 == len(t.reports):
            method.complete(t, rep)
            stopped[t.trial_id] = None
            start(now)
        else:
            nxt = starts[t.trial_id] + t.reports[i + 1]["step_time_s"]
            heapq.heappush(events, (nxt, seq, idx, i + 1))
            seq += 1
    return stopped


def score(trials: list[SimTrial], stopped: dict[str, int | None]) -> dict[str, Any]:
    """Compute saved and winners lost for one replay."""
    total = sum(t.flops for t in trials)
    used = sum(t.flops if stopped[t.trial_id] is None else t.reports[stopped[t.trial_id]]["flops"] for t in trials)
    lost_cell, lost_c = _lost(trials, stopped, lambda t: t.cell), _lost(trials, stopped, lambda t: t.budget)
    return {"compute_saved": 1.0 - used / total, "stopped": sum(v is not None for v in stopped.values()),
            "winners_lost_cell": lost_cell[0], "cells": lost_cell[1],
            "winners_lost_compute": lost_c[0], "budgets": lost_c[1]}


def _lost(trials, stopped, key) -> tuple[int, int]:
    groups: dict[Any, SimTrial] = {}
    for t in trials:
        if math.isfinite(t.final) and (key(t) not in groups or t.final < groups[key(t)].final):
            groups[key(t)] = t
    return sum(stopped[w.trial_id] is not None for w in groups.values()), len(groups)


def stops_by(decisions: dict[str, Any]) -> dict[str, int]:
    """How ours ended the trials it ended: diverged, paired (calibrated or not), a calibrated forecast
    (the forecast rule) or a law prediction."""
    out: dict[str, int] = {}
    for d in decisions.values():
        p = d.prediction
        key = d.action if d.action != "stop" else (
            ("paired across schedules" if p.get("cross_schedule") else
             "paired (calibrated)" if p.get("calibrated") else "paired (uncalibrated)") if p.get("mode") == "paired"
            else "forecast (calibrated)" if p.get("mode") == "forecast" else "law prediction")
        out[key] = out.get(key, 0) + 1
    return out


METHODS = ("none", "ours", "ours (no forecast rule)", "ours (no paired rule)", "asha", "optuna-median",
           "optuna-hyperband")


def without(config: PruneConfig, *names: str) -> Pruner:
    """A pruner with the default rules of ``config`` but those named (to measure what one rule adds)."""
    return Pruner(config, rules=[make(config, None) for n, make in RULES.items() if n not in names])


def make_methods(seed: int, max_t: int, names: tuple[str, ...]) -> list[Method]:
    make = {"none": lambda: Method(), "ours": lambda: OurPruner(PruneConfig(seed=seed)),
            "ours (no forecast rule)": lambda: OurPruner(PruneConfig(seed=seed), name="ours (no forecast rule)",
                                                         pruner=without(PruneConfig(seed=seed), "forecast")),
            "ours (no paired rule)": lambda: OurPruner(PruneConfig(seed=seed, paired_grace=0.99),
                                                       name="ours (no paired rule)"),
            "asha": lambda: Asha(max_t), "optuna-median": lambda: OptunaPruner("median", seed),
            "optuna-hyperband": lambda: OptunaPruner("hyperband", seed)}
    return [make[n]() for n in METHODS if n in names]


def check_learns(world: str, trials: list[SimTrial]) -> None:
    """Raise ValueError when most of the sweep's runs end less than 5 % below their first loss: the fixed
    budgets and lr grid are laid for the CPU-scale worlds, and at a published-scale world's tiny N
    every run is flat, its "winners" noise and every stop the divergence rule's.

    >>> check_learns("tiny", make_sweep("tiny", 0)[:4])
    """
    learned = [math.isfinite(t.final) and t.final < 0.95 * t.reports[0]["eval_loss"] for t in trials]
    if sum(learned) < len(learned) / 2:
        raise ValueError(f"world {world}: {len(learned) - sum(learned)} of {len(learned)} runs end less than 5 % "
                         f"below their first loss at this benchmark's budgets ({', '.join(f'{c:.0e}' for c in BUDGETS)} "
                         f"FLOPs) and lr grid, which are laid for CPU-scale worlds (tiny, bent, repeated); "
                         f"nothing to prune there")


def run(world: str, seeds: int, concurrency: int, seed_start: int = 0,
        methods: tuple[str, ...] = METHODS) -> dict[str, Any]:
    """Every method (of ``methods``) on every seed's sweep, side by side."""
    rows: dict[str, list[dict]] = {}
    latency: list[float] = []
    examples: list[dict] = []
    seed_list = list(range(seed_start, seed_start + seeds))
    for seed in seed_list:
        trials = make_sweep(world, seed)
        check_learns(world, trials)
        max_t = max(len(t.reports) for t in trials)
        for m in make_methods(seed, max_t, methods):
            np.random.seed(seed)  # ASHA draws its bracket with np.random
            t0 = time.perf_counter()
            res = score(trials, replay(trials, m, concurrency))
            res["seconds"] = time.perf_counter() - t0
            res["seed"] = seed
            rows.setdefault(m.name, []).append(res)
            if m.name.startswith("ours"):
                res["stops_by"] = stops_by(m.decisions)
            if m.name == "ours":
                latency += m.report_s
                for tid, d in list(m.decisions.items())[:3]:
                    examples.append({"trial": tid, **d.summary()})
    summary = {}
    for name, rs in rows.items():
        summary[name] = {
            "compute_saved_mean": float(np.mean([r["compute_saved"] for r in rs])),
            "compute_saved_min": float(np.min([r["compute_saved"] for r in rs])),
            "winners_lost_cell": int(sum(r["winners_lost_cell"] for r in rs)),
            "cells": int(sum(r["cells"] for r in rs)),
            "winners_lost_compute": int(sum(r["winners_lost_compute"] for r in rs)),
            "budgets": int(sum(r["budgets"] for r in rs)),
            "stopped": int(sum(r["stopped"] for r in rs)),
            "seconds": float(sum(r["seconds"] for r in rs)),
        }
    lat = np.array(latency) if latency else np.array([math.nan])
    return {"world": world, "seeds": seeds, "seed_list": seed_list, "concurrency": concurrency,
            "lr_grid": list(LR_GRID),
            "budgets": list(BUDGETS), "size_factors": list(SIZE_FACTORS), "schedules": [s.kind for s in SCHEDULES],
            "trials_per_seed": len(trials), "summary": summary, "per_seed": rows,
            "ours_report_latency_s": {"mean": float(lat.mean()), "p50": float(np.median(lat)),
                                      "p99": float(np.quantile(lat, 0.99)), "max": float(lat.max()),
                                      "reports": len(latency)},
            "ours_example_decisions": examples}


def parse_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, tuple[str, ...]]:
    """Add the options every pruning benchmark shares (--methods, --concurrency, --json); parse."""
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated subset of: {', '.join(METHODS)}")
    ap.add_argument("--concurrency", type=int, default=6)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    names = tuple(n.strip() for n in a.methods.split(",") if n.strip())
    bad = [n for n in names if n not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    return a, names


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="tiny", help="a world, or several comma-separated (one table each)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-start", type=int, default=0, help="first seed (seeds S..S+K-1)")
    a, names = parse_args(ap, argv)
    worlds = [w.strip() for w in a.world.split(",") if w.strip()]
    outs = {}
    for world in worlds:
        try:
            out = outs[world] = run(world, a.seeds, a.concurrency, a.seed_start, names)
        except ValueError as exc:
            ap.error(str(exc))
        print(f"world {out['world']}, {out['seeds']} seeds × {out['trials_per_seed']} trials, "
              f"concurrency {out['concurrency']}")
        print(f"{'method':<24}{'saved mean':>11}{'saved min':>11}{'stopped':>9}{'lost/(N,D)':>12}{'lost/C':>9}{'s':>8}")
        for name, s in out["summary"].items():
            print(f"{name:<24}{s['compute_saved_mean']:>11.1%}{s['compute_saved_min']:>11.1%}{s['stopped']:>9}"
                  f"{s['winners_lost_cell']:>7}/{s['cells']:<4}{s['winners_lost_compute']:>5}/{s['budgets']:<3}"
                  f"{s['seconds']:>8.1f}")
        for name, rs in out["per_seed"].items():
            for r in rs if name.startswith("ours") else ():
                print(f"{name}, seed {r['seed']}: saved {r['compute_saved']:.1%}, winners lost "
                      f"{r['winners_lost_cell']}/{r['cells']} (N, D), {r['winners_lost_compute']}/{r['budgets']} C; "
                      f"stops by {r['stops_by']}")
        lat = out["ours_report_latency_s"]
        if lat["reports"]:
            print(f"ours: per-report latency mean {lat['mean'] * 1e3:.2f} ms, p50 {lat['p50'] * 1e3:.3f} ms, "
                  f"p99 {lat['p99'] * 1e3:.1f} ms, max {lat['max'] * 1e3:.0f} ms over {lat['reports']} reports")
    if a.json:
        with open(a.json, "w") as fh:  # one world: its result as before; several: world -> result
            json.dump(outs[worlds[0]] if len(worlds) == 1 else outs, fh, indent=2, default=float)


if __name__ == "__main__":
    main()
