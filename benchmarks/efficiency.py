"""Sweep efficiency on a simulated world: compute spent vs regret at a target budget, per strategy.

All strategies run the same grid of (N, D, lr, batch) derived from the world and the target
budget C (see `benchmark_spec`), and end with the same offline fit
(`orchestrator.proposals.fit_and_propose(points, [C])`, lr/batch from the nearest observed cell).
Regret is exact: `world.regret(proposal, C)` = true loss of the proposed config / true optimum − 1.

    python -m benchmarks.efficiency --world tiny --seeds 3 --json results/efficiency-tiny.json
    python -m benchmarks.efficiency --world my_world.yaml --target-budget 1e17 --seeds 3 --json out.json
    python -m benchmarks.efficiency --quick --json /tmp/eff.json          # seconds (smoke test)

Strategies (see benchmarks/strategies.py for how each runs): full_grid, asha, optuna,
random (same compute as scalesweep), random_at_asha (same compute as ASHA), scalesweep.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from orchestrator.proposals import fit_and_propose
from orchestrator.spec import parse_spec
from trainers.worlds import World, load_world

from . import strategies as S

STRATEGIES = ("full_grid", "asha", "optuna", "random", "random_at_asha", "scalesweep")
# The tiny world is the chinchilla world with N, D / 1e4 (C / 1e8). Chinchilla's target is 1e22, not
# 1e24: fit_and_propose sizes its proposal with trainers.model.shape_for, whose largest member is
# 1.3e10 parameters (N* at 1e24 is 1.7e11).
DEFAULT_TARGETS = {"tiny": 1e17, "chinchilla": 1e22}
SEQ_LEN = 128


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


SCALESWEEP_STRATEGY = "transfer"  # `--scalesweep-set search.strategy=grid|law` measures the others


def benchmark_spec(world: World, world_ref: str, target: float, seed: int, *, quick: bool = False,
                   sizes: int = 5, ratios: tuple[float, ...] = (5, 10, 20, 40, 80), n_lr: int = 6,
                   n_batch: int = 2, eval_tokens: Optional[int] = None, factor: float = 100.0) -> dict[str, Any]:
    """The benchmark's sweep spec: a grid whose largest trial costs target/factor FLOPs.

    N: `sizes` values log-spaced over 2 decades, the largest chosen so that its longest run
    (max ratio tokens per parameter) costs exactly target/factor; lr: `n_lr` values log-spaced
    from half the smallest to twice the largest lr*(N, D) over the grid's cells (the world's lr
    law); batch: `n_batch` values at evenly spaced log positions inside the range of batch*(D).
    Reports: at most 100 per trial (ASHA's default max_t), eval on `eval_tokens` tokens.
    """
    if quick:
        sizes, ratios, n_lr, n_batch = 4, (5, 20, 80), 3, 1
    r_max = max(ratios)
    n_max = math.sqrt(target / factor / (6.0 * r_max))
    Ns = np.geomspace(n_max / 100.0, n_max, sizes)
    cells = [(n, r * n) for n in Ns for r in ratios]
    lr_star = [float(world.lr_star(n, d)) for n, d in cells]
    lrs = np.geomspace(min(lr_star) / 2.0, max(lr_star) * 2.0, n_lr) if n_lr > 1 else [float(np.median(lr_star))]
    b_lo, b_hi = (float(world.batch_star(d)) for d in (min(d for _, d in cells), max(d for _, d in cells)))
    pos = [(i + 1) / (n_batch + 1) for i in range(n_batch)]
    batches = sorted({max(SEQ_LEN, int(b_lo * (b_hi / b_lo) ** p) // SEQ_LEN * SEQ_LEN) for p in pos})
    d_min = min(ratios) * Ns[0]
    batches = [b for b in batches if b <= d_min] or [SEQ_LEN]
    t_max = math.ceil(max(d for _, d in cells) * 1.02 / min(batches))
    return {
        "name": f"efficiency-{world.name}",
        "model": {"n_params": [int(round(n)) for n in Ns], "seq_len": SEQ_LEN},
        "tokens": {"per_param": list(ratios)},
        "learning_rates": [float(f"{x:.4g}") for x in lrs],
        "batch_sizes": batches,
        "schedule": world.reference_schedule.model_dump(),
        "eval": {"every": max(1, math.ceil(t_max / 100)), "tokens": int(eval_tokens or world.noise.ref_tokens)},
        "seeds": [seed],
        "seed": seed,
        "budget": {"targets": [float(target)]},
        "fit": {"bootstrap": 0},
        "checkpoints": False,
        "trainer": {"backend": "simulated", "world": world_ref},
    }


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        data = data.setdefault(k, {})
    data[keys[-1]] = value


def evaluate(run: S.StrategyRun, grid: S.Grid, world: World, target: float, seed: int) -> dict[str, Any]:
    """Fit on the run's completed trials, propose for the target, score the proposal exactly."""
    points = S.completed_points(run.records)
    try:
        fit = fit_and_propose(points, [target], bootstrap=0, seed=seed)
    except ValueError as exc:  # e.g. a proposal beyond the model family (trainers.model.shape_for)
        fit = fit_and_propose([], [target])
        fit.warnings.append(f"fit_and_propose failed: {exc}")
    out: dict[str, Any] = {
        "compute": run.compute,
        "trials": {k: sum(r.status == k for r in run.records) for k in ("finished", "stopped", "diverged")},
        "warnings": list(fit.warnings),
    }
    out["trials"]["started"] = len(run.records)
    if not fit.proposals:
        out.update(regret=math.nan, regret_nd=math.nan, regret_hparam_laws=math.nan, proposal=None)
        return out
    p = fit.proposals[0]
    if run.product_proposal is not None:  # scalesweep through run_sweep: score the product's own proposal
        p = run.product_proposal
    prop = {"N": p["N"], "D": p["D"], "lr": p["lr"], "batch": p["batch"], "predicted_loss": p["predicted_loss"],
            "hparams_from": p.get("hparams_from")}
    out["proposal"] = prop
    out["regret"] = world.regret(prop, target)
    # The same (N, D) at the true lr*, batch*: the part of the regret due to the L(N, D) fit alone.
    out["regret_nd"] = world.regret({"N": p["N"], "D": p["D"], "lr": float(world.lr_star(p["N"], p["D"])),
                                     "batch": float(world.batch_star(p["D"]))}, target)
    out["fit_params"] = dict(fit.fit.params) if fit.fit is not None else None
    out["regret_hparam_laws"] = _regret_with_hparam_laws(run, grid, world, target, p["N"], p["D"])
    return out


def _regret_with_hparam_laws(run: S.StrategyRun, grid: S.Grid, world: World, target: float, N: float, D: float) -> float:
    """Diagnostic, not today's proposal rule: the fit's (N, D) with lr, batch from laws fitted to the runs.

    `orchestrator.laws.hparams.fit_hparams` (bowl per cell, Step-Law protocol if a bowl cannot be
    fitted) on the finished and diverged trials; NaN when neither method can fit.
    """
    from orchestrator.laws.hparams import HparamError, fit_hparams

    recs = [r for r in run.records if r.status in ("finished", "diverged")]
    cols = [[getattr(r, k) for r in recs] for k in ("N", "D", "lr", "batch", "final_loss")]
    cols[1] = [grid.nominal_D(r.trial_id) for r in recs]  # one cell per (N, D) across batches
    for method in ("bowl", "steplaw"):
        try:
            hp = fit_hparams(*cols, method=method, bootstrap=0)
        except (HparamError, ValueError, np.linalg.LinAlgError):
            continue
        lr, batch = hp.predict(N, D)
        if math.isfinite(lr) and math.isfinite(batch) and lr > 0 and batch > 0:
            return world.regret({"N": N, "D": D, "lr": lr, "batch": batch}, target)
    return math.nan


def _stats(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    # A seed without a finite figure: inf = the proposed config diverges in the world; NaN = no fit.
    return {
        "diverged_seeds": sum(1 for v in values if v is not None and math.isinf(v)),
        "mean": statistics.fmean(finite) if finite else None,
        "std": statistics.stdev(finite) if len(finite) > 1 else 0.0 if finite else None,
        "min": min(finite) if finite else None,
        "max": max(finite) if finite else None,
        "per_seed": [v if (v is not None and math.isfinite(v)) else None for v in values],
        "failed_seeds": len(values) - len(finite),
    }


def run_benchmark(world_ref: str, target: Optional[float], seeds: int, strategies: tuple[str, ...], *,
                  quick: bool = False, concurrency: int = 8, asha_mode: str = "replay",
                  scalesweep_mode: str = "auto", scalesweep_set: tuple[str, ...] = (),
                  eval_tokens: Optional[int] = None, first_seed: int = 0,
                  grid_shape: Optional[dict[str, Any]] = None, scalesweep_pruner: bool = False) -> dict[str, Any]:
    """Run every strategy for every seed; return the JSON document."""
    world = load_world(world_ref)
    ref = world_ref if not Path(world_ref).exists() else str(Path(world_ref).resolve())
    if target is None:
        if world.name not in DEFAULT_TARGETS:
            raise SystemExit(f"--target-budget is required for world {world.name!r}")
        target = DEFAULT_TARGETS[world.name]
    per: dict[str, list[dict[str, Any]]] = {s: [] for s in strategies}
    notes: dict[str, list[str]] = {s: [] for s in strategies}
    modes: dict[str, str] = {}
    wall: dict[str, float] = {s: 0.0 for s in strategies}
    parts = None
    grid_info: dict[str, Any] = {}
    for seed in range(first_seed, first_seed + seeds):
        data = benchmark_spec(world, ref, target, seed, quick=quick, eval_tokens=eval_tokens, **(grid_shape or {}))
        ss_data = json.loads(json.dumps(data))
        ss_data["search"] = {"strategy": SCALESWEEP_STRATEGY}  # scalesweep's search for far targets
        for item in scalesweep_set:
            key, _, val = item.partition("=")
            _set(ss_data, key, _parse_value(val))
        spec = parse_spec(data)
        grid = S.Grid(spec, world)
        grid_info = {"spec": {k: data[k] for k in ("model", "tokens", "learning_rates", "batch_sizes", "eval")},
                     "trials": len(grid.trials), "full_grid_flops": grid.flops,
                     "largest_trial_flops": max(t.flops for t in grid.trials),
                     "target_over_largest": target / max(t.flops for t in grid.trials)}
        runs: dict[str, S.StrategyRun] = {}

        def timed(name: str, fn):
            t0 = time.perf_counter()
            runs[name] = fn()
            wall[name] += time.perf_counter() - t0

        order = [s for s in ("full_grid", "scalesweep", "asha", "optuna", "random", "random_at_asha") if s in strategies]
        for name in order:
            if name == "full_grid":
                timed(name, lambda: S.run_full_grid(grid, concurrency))
            elif name == "scalesweep":
                timed(name, lambda: S.run_scalesweep(grid, ss_data, concurrency, scalesweep_mode, scalesweep_pruner))
            elif name == "asha":
                timed(name, lambda: S.run_asha(grid, seed, concurrency, asha_mode, ref))
            elif name == "optuna":
                timed(name, lambda: S.run_optuna(grid, seed, concurrency))
            elif name == "random":
                ref_run = runs.get("scalesweep") or S.run_scalesweep(grid, ss_data, concurrency, scalesweep_mode,
                                                                     scalesweep_pruner)
                # Equal committed compute: scalesweep's planner commits a trial's planned FLOPs when it
                # hands it out, so random gets the same planned budget (= the full grid today).
                timed(name, lambda: S.run_random(grid, ref_run.committed, seed + 1000, concurrency))
            elif name == "random_at_asha":
                ref_run = runs.get("asha") or S.run_asha(grid, seed, concurrency, asha_mode, ref)
                timed(name, lambda: S.run_random(grid, ref_run.compute, seed + 2000, concurrency))
        for name in order:
            run = runs[name]
            modes[name] = run.mode
            if run.active_parts is not None:
                parts = run.active_parts
            for n in run.notes:
                if n not in notes[name]:
                    notes[name].append(n)
            per[name].append(evaluate(run, grid, world, target, seed))

    opt = world.optimum(target)
    full = statistics.fmean(r["compute"] for r in per["full_grid"]) if "full_grid" in per else None
    doc: dict[str, Any] = {
        "benchmark": "efficiency",
        "command": "python -m benchmarks.efficiency " + " ".join(sys.argv[1:]),
        "world": {"name": world.name, "ref": world_ref, "fingerprint": world.fingerprint()},
        "target_budget": target,
        "true_optimum": {k: opt[k] for k in ("N", "D", "lr", "batch", "loss")},
        "seeds": list(range(first_seed, first_seed + seeds)),
        "concurrency": concurrency,
        "grid": grid_info,
        "fit": "orchestrator.proposals.fit_and_propose(points, [C], bootstrap=0): Chinchilla L(N, D) on the "
               "best cell per (N, D); lr, batch from the nearest observed cell",
        "strategies": {},
    }
    for name in strategies:
        rows = per[name]
        entry = {
            "mode": modes.get(name),
            "compute": _stats([r["compute"] for r in rows]),
            "compute_vs_full_grid": (statistics.fmean(r["compute"] for r in rows) / full) if full else None,
            "regret": _stats([r["regret"] for r in rows]),
            "regret_nd": _stats([r["regret_nd"] for r in rows]),
            "regret_hparam_laws": _stats([r["regret_hparam_laws"] for r in rows]),
            "proposal": [r["proposal"] for r in rows],
            "trials": [r["trials"] for r in rows],
            "fit_params": [r.get("fit_params") for r in rows],
            "warnings": sorted({w for r in rows for w in r["warnings"]}),
            "true_optimum": doc["true_optimum"],
            "wall_s": wall[name],
            "notes": notes[name],
        }
        if name == "scalesweep":
            entry["active_parts"] = parts
        doc["strategies"][name] = entry
    return doc


def print_table(doc: dict[str, Any]) -> None:
    """The side-by-side table (rich)."""
    from rich.console import Console
    from rich.table import Table

    opt = doc["true_optimum"]
    g = doc["grid"]
    title = (f"{doc['world']['name']} world, target C = {doc['target_budget']:.3g} FLOPs "
             f"({g['target_over_largest']:.0f}× the largest trial), {len(doc['seeds'])} seed(s), grid of {g['trials']} trials")
    t = Table(title=title)
    for col in ("strategy", "compute (FLOPs)", "vs full grid", "regret % mean ± sd", "regret % range",
                "N,D-only regret %", "regret % w/ hparam laws", "trials started/finished/stopped/diverged", "mode"):
        t.add_column(col, justify="right" if col not in ("strategy", "mode") else "left")

    def pct(x):
        return "—" if x is None else f"{100 * x:.3f}"

    for name, e in doc["strategies"].items():
        tr = e["trials"]
        counts = "/".join(f"{statistics.fmean(x[k] for x in tr):.0f}" for k in ("started", "finished", "stopped", "diverged"))
        r = e["regret"]
        fail = ""
        if r["failed_seeds"]:
            fail = f" over finite seeds; {r['diverged_seeds']}/{len(r['per_seed'])} propose a diverging lr"
            if r["failed_seeds"] > r["diverged_seeds"]:
                fail += f", {r['failed_seeds'] - r['diverged_seeds']} no fit"
        t.add_row(name, f"{e['compute']['mean']:.3g}", f"{e['compute_vs_full_grid']:.3f}" if e["compute_vs_full_grid"] else "—",
                  f"{pct(r['mean'])} ± {pct(r['std'])}{fail}", f"{pct(r['min'])} … {pct(r['max'])}",
                  pct(e["regret_nd"]["mean"]), pct(e["regret_hparam_laws"]["mean"]), counts, e["mode"] or "")
    Console().print(t)
    Console().print(f"true optimum: N={opt['N']:.4g} D={opt['D']:.4g} lr={opt['lr']:.3g} batch={opt['batch']:.4g} "
                    f"loss={opt['loss']:.5f}")
    ss = doc["strategies"].get("scalesweep")
    if ss and ss.get("active_parts"):
        Console().print(f"scalesweep active parts: {ss['active_parts']}")


def plot(doc: dict[str, Any], path: Path) -> None:
    """Compute (log) vs regret (%) per strategy: seeds as dots, the mean with its spread as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, e) in enumerate(doc["strategies"].items()):
        c = f"C{i}"
        xs, ys = e["compute"]["per_seed"], e["regret"]["per_seed"]
        pts = [(x, 100 * y) for x, y in zip(xs, ys) if x is not None and y is not None]
        if pts:
            ax.scatter(*zip(*pts), color=c, alpha=0.35, s=14)
        if e["regret"]["mean"] is not None:
            ax.errorbar(e["compute"]["mean"], 100 * e["regret"]["mean"], yerr=100 * (e["regret"]["std"] or 0),
                        xerr=e["compute"]["std"] or 0, fmt="o", color=c, label=name, capsize=3)
    ax.axhline(0.5, color="grey", ls=":", lw=1, label="0.5 % target")
    ax.set_xscale("log")
    ax.set_xlabel("compute spent (FLOPs)")
    ax.set_ylabel("regret at target budget (%)")
    ax.set_title(f"{doc['world']['name']}: C = {doc['target_budget']:.3g}, {len(doc['seeds'])} seed(s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="tiny", help="bundled world name (tiny, chinchilla) or a world YAML file")
    ap.add_argument("--target-budget", type=float, default=None,
                    help="target C in FLOPs (default: tiny 1e17, chinchilla 1e22); the grid's largest trial is C/100")
    ap.add_argument("--seeds", type=int, default=3, help="seeds (trial noise, orders, samplers)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write every figure here (and the plot next to it)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma list of {', '.join(STRATEGIES)}")
    ap.add_argument("--quick", action="store_true", help="a 36-trial grid (smoke test)")
    ap.add_argument("--concurrency", type=int, default=8, help="trials running at once (simulated accelerators)")
    ap.add_argument("--asha-mode", choices=("replay", "tuner"), default="replay",
                    help="replay: the real ASHAScheduler in simulated time; tuner: a real ray.tune.Tuner")
    ap.add_argument("--scalesweep-mode", choices=("auto", "replay", "tuner"), default="auto",
                    help="replay: the planner in simulated time; tuner: the real run_sweep; auto: tuner once "
                         "pruning or WSD branching is enabled")
    ap.add_argument("--scalesweep-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="set a spec field for scalesweep only, e.g. pruning.enabled=true (repeatable)")
    ap.add_argument("--scalesweep-pruner", action="store_true",
                    help="scalesweep with our PrunerScheduler (orchestrator/tune/scheduler.py, defaults) in replay")
    ap.add_argument("--sizes", type=int, default=5, help="model sizes N (log-spaced over 2 decades)")
    ap.add_argument("--ratios", default="5,10,20,40,80", help="tokens per parameter, comma list")
    ap.add_argument("--lrs", type=int, default=6, help="learning rates around the world's lr* law")
    ap.add_argument("--batches", type=int, default=2,
                    help="batch sizes inside the range of batch*(D) (3+ lets the hparam-law diagnostic fit)")
    ap.add_argument("--eval-tokens", type=int, default=None, help="validation tokens per evaluation (default: the world's noise.ref_tokens)")
    args = ap.parse_args(argv)
    names = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    bad = [s for s in names if s not in STRATEGIES]
    if bad:
        ap.error(f"unknown strategy {bad[0]!r}; choose from {', '.join(STRATEGIES)}")
    doc = run_benchmark(args.world, args.target_budget, args.seeds, names, quick=args.quick,
                        concurrency=args.concurrency, asha_mode=args.asha_mode, scalesweep_mode=args.scalesweep_mode,
                        scalesweep_set=tuple(args.scalesweep_set), eval_tokens=args.eval_tokens,
                        first_seed=args.first_seed,
                        grid_shape={"sizes": args.sizes, "ratios": tuple(float(x) for x in args.ratios.split(",")),
                                    "n_lr": args.lrs, "n_batch": args.batches},
                        scalesweep_pruner=args.scalesweep_pruner)
    print_table(doc)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        png = args.json.with_suffix(".png")
        plot(doc, png)
        doc["plot"] = str(png)
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=False))
        print(f"wrote {args.json} and {png}")


if __name__ == "__main__":
    main()
