"""Sweep efficiency on a simulated world: compute spent vs regret at a target budget, per strategy.

All strategies run the same grid of (N, D, lr, batch), laid from a *prior* a user would have
and the target budget C (see `prior_for` and `benchmark_spec`), never from the world's truth,
and end with the same offline fit, the product's query of a sweep (`orchestrator.app.query.sweep_fit` on
the completed trials, with the spec's fit settings, as `scalesweep propose` and the API fit).
The world only simulates the trials and scores: regret is exact, `world.regret(proposal, C)` =
true loss of the proposed config / true optimum − 1.

    python -m benchmarks.efficiency --world tiny --seeds 3 --json results/efficiency-tiny.json
    python -m benchmarks.efficiency --world my_world.yaml --target-budget 1e17 --seeds 3 --json out.json
    python -m benchmarks.efficiency --world all --seeds 5 --json results/efficiency-all.json  # every bundled world
    python -m benchmarks.efficiency --world bent --prior tiny --json out.json   # another prior
    python -m benchmarks.efficiency --quick --json /tmp/eff.json          # seconds (smoke test)
    python -m benchmarks.efficiency --strategies full_grid,scalesweep --scalesweep-set search.strategy=law \
        --scalesweep-alt-set schedule.branch=false    # two scalesweep arms side by side (scalesweep_alt)

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

from orchestrator.app.query import SweepData, sweep_fit
from orchestrator.config.spec import parse_spec
from trainers.worlds import World, bundled_worlds, load_world, world_from_dict

from . import strategies as S

STRATEGIES = ("full_grid", "asha", "optuna", "random", "random_at_asha", "scalesweep")
# The tiny world is the chinchilla world with N, D / 1e4 (C / 1e8). Chinchilla's target is 1e22, not
# 1e24: the fit (orchestrator.core.proposals.fit_and_propose) sizes its proposal with trainers.model.shape_for, whose largest member is
# 1.3e10 parameters (N* at 1e24 is 1.7e11).
# The issue-13 worlds: bent and repeated at CPU scale, kaplan and crossing at the published scale.
DEFAULT_TARGETS = {"tiny": 1e17, "chinchilla": 1e22, "bent": 1e17, "repeated": 1e17, "kaplan": 1e22,
                   "crossing": 1e22}
SEQ_LEN = 128
# The default prior: the published laws the bundled chinchilla world encodes (Epoch's Chinchilla
# L(N, D), Step Law's lr*(N, D) and batch*(D)), and the compute range the loss fit was measured on.
DEFAULT_PRIOR = "chinchilla"
PUBLISHED_C_RANGE = (1e18, 1e25)
# A rule file (--prior FILE) may give only these world sections; the rest come from the default prior.
RULE_SECTIONS = ("lr", "batch", "loss", "reference_schedule")


def prior_for(prior_ref: Optional[str], target: float) -> tuple[World, dict[str, Any]]:
    """The prior a user would lay the grid from, at the target budget: (prior world, what it is).

    Only what a user knows goes in: the target budget and published laws (or a file). Default:
    the chinchilla world's laws. Its lr*(N, D) and batch*(D) (Step Law) are formulas in N and D,
    applied as stated at the user's sizes. Its loss surface (used only for the prior's
    tokens per parameter) holds on C 1e18–1e25; a target outside that range is mapped to the
    range's nearest edge by the scaling tiny.yaml documents (N, D × k, C × k²: A·k^−α, B·k^−β),
    so the prior has the published frontier's ratio, not an 8-decade extrapolation of its losses.
    `prior_ref`: a bundled world name or world file (used as is), or a rule file with some of
    `lr`, `batch`, `loss`, `reference_schedule` in world format (the rest from the default).

    >>> w, info = prior_for(None, 1e17)   # below the published range: mapped to 1e18
    >>> round(info["rescale_k"] ** 2, 6), round(w.optimum(1e17)["D"] / w.optimum(1e17)["N"], 1)
    (10.0, 25.7)
    """
    base = load_world(DEFAULT_PRIOR)
    info: dict[str, Any] = {"ref": prior_ref or f"default ({DEFAULT_PRIOR} world's published laws)"}
    if prior_ref is None:
        doc = base.document()
        info["kind"] = "published"
    else:
        p = Path(prior_ref)
        raw = yaml.safe_load(p.read_text()) if p.suffix and p.exists() else None
        if isinstance(raw, dict) and set(raw) - {"name", "description"} <= set(RULE_SECTIONS):
            doc = base.document()
            doc.update({k: raw[k] for k in RULE_SECTIONS if k in raw})
            doc["name"] = raw.get("name", f"rule:{p.stem}")
            info["kind"] = "rule file"
            info["sections"] = [k for k in RULE_SECTIONS if k in raw]
            if "loss" in raw:  # the user's own surface: used as given
                return world_from_dict(doc, source=str(p)), {**info, "rescale_k": 1.0}
        else:
            w = load_world(prior_ref)
            return w, {**info, "kind": "world", "name": w.name, "rescale_k": 1.0}
    lo, hi = PUBLISHED_C_RANGE
    k = math.sqrt(min(max(target, lo), hi) / target)  # 1 inside the range
    if k != 1.0:
        loss = dict(doc["loss"])
        loss["A"] = loss["A"] * k ** (-loss["alpha"])
        loss["B"] = loss["B"] * k ** (-loss["beta"])
        doc["loss"] = loss
    prior = world_from_dict({**doc, "name": doc.get("name", DEFAULT_PRIOR) if prior_ref else "published-prior"})
    return prior, {**info, "name": prior.name, "rescale_k": k}


def prior_distance(prior: World, world: World, target: float) -> dict[str, float]:
    """How far the prior was from the truth at the target (scoring only; never shapes a grid).

    Ratios prior / truth: lr* and batch* at the true optimum (N*, D*), tokens per parameter and N*
    of the two optima at the target.
    """
    t, p = world.optimum(target), prior.optimum(target)
    return {
        "lr_star_ratio": float(prior.lr_star(t["N"], t["D"])) / t["lr"],
        "batch_star_ratio": float(prior.batch_star(t["D"])) / t["batch"],
        "tokens_per_param_prior": p["D"] / p["N"],
        "tokens_per_param_true": t["D"] / t["N"],
        "tokens_per_param_ratio": (p["D"] / p["N"]) / (t["D"] / t["N"]),
        "N_star_ratio": p["N"] / t["N"],
    }


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


SCALESWEEP_STRATEGY = "transfer"  # `--scalesweep-set search.strategy=grid|law` measures the others


def scalesweep_spec(data: dict[str, Any], overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """The scalesweep arm's spec: the benchmark's grid with the whole product on — the transfer search,
    the pruner (`pruning`, defaults) and, under a WSD schedule, branching (which needs checkpoints) —
    then `overrides` (FIELD=VALUE, e.g. `pruning.enabled=false`, `schedule.branch=false`).

    >>> d = scalesweep_spec({"schedule": {"kind": "wsd"}}, ("pruning.enabled=false",))
    >>> d["search"], d["pruning"], d["schedule"]["branch"], d["checkpoints"]
    ({'strategy': 'transfer'}, {'enabled': False}, True, {'enabled': True})
    """
    ss = json.loads(json.dumps(data))
    ss["search"] = {"strategy": SCALESWEEP_STRATEGY}  # scalesweep's search for far targets
    ss["pruning"] = {"enabled": True}
    if ss.get("schedule", {}).get("kind") == "wsd":
        ss["schedule"]["branch"] = True
        ss["checkpoints"] = {"enabled": True}  # branches restore their trunk's checkpoints
    for item in overrides:
        key, _, val = item.partition("=")
        _set(ss, key, _parse_value(val))
    return ss


def benchmark_spec(prior: World, world_ref: str, target: float, seed: int, *, quick: bool = False,
                   sizes: int = 5, ratios: tuple[float, ...] = (5, 10, 20, 40, 80), n_lr: int = 6,
                   n_batch: int = 2, eval_tokens: Optional[int] = None, factor: float = 100.0) -> dict[str, Any]:
    """The benchmark's sweep spec: a grid whose largest trial costs target/factor FLOPs.

    Laid from `prior` (what the user believes) and the user's choices only; `world_ref` merely
    names the simulated trainer's world (the truth), which nothing here reads.
    N: `sizes` values log-spaced over 2 decades, the largest chosen so that its longest run
    (max ratio tokens per parameter) costs exactly target/factor; lr: `n_lr` values log-spaced
    from half the smallest to twice the largest prior lr*(N, D) over the grid's cells;
    batch: `n_batch` values at evenly spaced log positions inside the range of the prior's
    batch*(D); schedule: the prior's reference schedule. Reports: at most 100 per trial (ASHA's
    default max_t), eval on `eval_tokens` tokens (default the prior's noise.ref_tokens).
    """
    world = prior  # every law below is the prior's
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
        "name": "efficiency",
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
    """Fit on the run's completed trials, propose for the target, score the proposal exactly.

    The fit is the product's query (`orchestrator.app.query.sweep_fit`) with the grid's spec: its fit
    settings (`fit.bootstrap: 0`, the seed `seed`) and its model family."""
    points = S.completed_points(run.records)
    try:
        fit = sweep_fit(SweepData(points, [], []), grid.spec, [target])
    except ValueError as exc:  # e.g. a proposal beyond the model family (trainers.model.shape_for)
        fit = sweep_fit(SweepData([], [], []), grid.spec, [target])
        fit.warnings.append(f"the fit failed: {exc}")
    out: dict[str, Any] = {
        "compute": run.compute,
        "trials": {k: sum(r.status == k for r in run.records) for k in ("finished", "stopped", "diverged")},
        "warnings": list(fit.warnings),
    }
    out["trials"]["started"] = len(run.records)
    if run.saved is not None:
        out["saved"] = {**run.saved, "spent_flops": run.compute}
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

    `orchestrator.core.laws.hparams.fit_hparams` (bowl per cell, Step-Law protocol if a bowl cannot be
    fitted) on the finished and diverged trials; NaN when neither method can fit.
    """
    from orchestrator.core.laws.hparams import HparamError, fit_hparams

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
                  grid_shape: Optional[dict[str, Any]] = None, scalesweep_pruner: bool = False,
                  prior_ref: Optional[str] = None, alt_set: Optional[tuple[str, ...]] = None) -> dict[str, Any]:
    """Run every strategy for every seed; return the JSON document.

    The grid comes from `prior_for(prior_ref, target)`; the world (truth) simulates and scores.
    `alt_set`: a second scalesweep arm, `scalesweep_alt`, its spec scalesweep's with these overrides too.
    """
    if alt_set is not None and "scalesweep_alt" not in strategies:
        strategies = strategies + ("scalesweep_alt",)
    world = load_world(world_ref)
    ref = world_ref if not Path(world_ref).exists() else str(Path(world_ref).resolve())
    if target is None:
        if world.name not in DEFAULT_TARGETS:
            raise SystemExit(f"--target-budget is required for world {world.name!r}")
        target = DEFAULT_TARGETS[world.name]
    prior, prior_info = prior_for(prior_ref, target)
    per: dict[str, list[dict[str, Any]]] = {s: [] for s in strategies}
    notes: dict[str, list[str]] = {s: [] for s in strategies}
    modes: dict[str, str] = {}
    wall: dict[str, float] = {s: 0.0 for s in strategies}
    parts: dict[str, Any] = {}
    grid_info: dict[str, Any] = {}
    for seed in range(first_seed, first_seed + seeds):
        data = benchmark_spec(prior, ref, target, seed, quick=quick, eval_tokens=eval_tokens, **(grid_shape or {}))
        ss_data = scalesweep_spec(data, scalesweep_set)
        alt_data = scalesweep_spec(data, scalesweep_set + tuple(alt_set or ()))
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

        order = [s for s in ("full_grid", "scalesweep", "scalesweep_alt", "asha", "optuna", "random", "random_at_asha") if s in strategies]
        for name in order:
            if name == "full_grid":
                timed(name, lambda: S.run_full_grid(grid, concurrency))
            elif name == "scalesweep":
                timed(name, lambda: S.run_scalesweep(grid, ss_data, concurrency, scalesweep_mode, scalesweep_pruner))
            elif name == "scalesweep_alt":
                timed(name, lambda: S.run_scalesweep(grid, alt_data, concurrency, scalesweep_mode, scalesweep_pruner))
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
                parts[name] = run.active_parts
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
        "prior": {**prior_info, "fingerprint": prior.fingerprint(),
                  "distance_at_target": prior_distance(prior, world, target)},
        "target_budget": target,
        "true_optimum": {k: opt[k] for k in ("N", "D", "lr", "batch", "loss")},
        "seeds": list(range(first_seed, first_seed + seeds)),
        "concurrency": concurrency,
        "grid": grid_info,
        "fit": "orchestrator.app.query.sweep_fit(SweepData(points), spec, [C]) with the spec's fit settings "
               "(bootstrap 0): L(N, D) on the best cell per (N, D); lr, batch from the nearest observed cell",
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
        if name in ("scalesweep", "scalesweep_alt"):
            entry["active_parts"] = parts.get(name)
            if name == "scalesweep_alt":
                entry["overrides"] = list(alt_set or ())
            entry["saved"] = [r.get("saved") for r in rows]  # per seed: what the pruner and branching saved
        doc["strategies"][name] = entry
    return doc


def print_table(doc: dict[str, Any]) -> None:
    """The side-by-side table (rich)."""
    from orchestrator.app.cli.output import make_console
    from rich.table import Table

    con = make_console()  # the terminal's width; never cut in a log file
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
    con.print(t)
    con.print(f"true optimum: N={opt['N']:.4g} D={opt['D']:.4g} lr={opt['lr']:.3g} batch={opt['batch']:.4g} "
              f"loss={opt['loss']:.5f}")
    pr = doc.get("prior")
    if pr:
        d = pr["distance_at_target"]
        con.print(f"grid laid from the prior {pr['ref']} (k = {pr['rescale_k']:.3g}); prior / truth at the target: "
                  f"lr* ×{d['lr_star_ratio']:.2f}, batch* ×{d['batch_star_ratio']:.2f}, tokens per parameter "
                  f"{d['tokens_per_param_prior']:.1f} vs {d['tokens_per_param_true']:.1f}, N* ×{d['N_star_ratio']:.2f}")
    for name in ("scalesweep", "scalesweep_alt"):
        ss = doc["strategies"].get(name)
        if not ss or not ss.get("active_parts"):
            continue
        parts = {k: v for k, v in ss["active_parts"].items() if k != "saved"}
        con.print(f"{name} active parts: {parts}" + (f" (overrides {ss['overrides']})" if ss.get("overrides") else ""))
        saved = [x for x in ss.get("saved") or [] if x]
        if saved:
            mean = lambda k: statistics.fmean(x[k] for x in saved)  # noqa: E731
            con.print(f"{name} saved (mean over seeds, × its spent compute): pruner "
                      f"{mean('pruner_flops') / mean('spent_flops'):.3f} ({mean('pruner_stopped'):.1f} trials "
                      f"stopped), WSD branching {mean('branching_flops') / mean('spent_flops'):.3f} "
                      f"({mean('branches'):.1f} runs from a checkpoint)")


def summary_rows(docs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (world, strategy): compute vs full grid, regret mean/worst, diverged seeds, prior distance."""
    rows = []
    for wname, doc in docs.items():
        d = doc["prior"]["distance_at_target"]
        for name, e in doc["strategies"].items():
            r = e["regret"]
            per = r["per_seed"]
            worst = None if r["diverged_seeds"] else r["max"]  # a proposal that diverges: worst is ∞
            rows.append({"world": wname, "strategy": name, "seeds": len(per),
                         "compute_vs_full_grid": e["compute_vs_full_grid"],
                         "regret_mean": r["mean"], "regret_worst": worst, "diverged_seeds": r["diverged_seeds"],
                         "failed_seeds": r["failed_seeds"],
                         "prior_lr_ratio": d["lr_star_ratio"], "prior_batch_ratio": d["batch_star_ratio"],
                         "prior_tpp": d["tokens_per_param_prior"], "true_tpp": d["tokens_per_param_true"]})
    return rows


def print_summary(docs: dict[str, dict[str, Any]]) -> None:
    """Every world side by side: compute vs full grid, regret mean / worst, diverged seeds."""
    from orchestrator.app.cli.output import make_console
    from rich.table import Table

    con = make_console()
    t = Table(title="efficiency on every world, grids from the prior (regret % at the target)")
    for col in ("world", "prior/truth lr*, batch*, tok/param", "strategy", "compute vs grid", "regret % mean",
                "regret % worst", "diverged seeds"):
        t.add_column(col, justify="left" if col in ("world", "strategy") else "right")
    last = None
    for r in summary_rows(docs):
        head = r["world"] != last
        last = r["world"]
        pct = lambda x: "—" if x is None else f"{100 * x:.3f}"
        t.add_row(r["world"] if head else "",
                  f"×{r['prior_lr_ratio']:.2f}, ×{r['prior_batch_ratio']:.2f}, {r['prior_tpp']:.0f} vs {r['true_tpp']:.0f}"
                  if head else "", r["strategy"],
                  f"{r['compute_vs_full_grid']:.3f}" if r["compute_vs_full_grid"] else "—",
                  pct(r["regret_mean"]), "∞" if r["diverged_seeds"] else pct(r["regret_worst"]),
                  f"{r['diverged_seeds']}/{r['seeds']}")
    con.print(t)


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
    ap.add_argument("--world", default="tiny",
                    help="bundled world name, a world YAML file, a comma list of them, or 'all' (every bundled world)")
    ap.add_argument("--prior", default=None,
                    help="what the grid is laid from: a world name or file, or a rule file (lr/batch/loss sections); "
                         "default: the chinchilla world's published laws, rescaled to the target (prior_for)")
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
    ap.add_argument("--scalesweep-alt-set", action="append", default=None, metavar="FIELD=VALUE",
                    help="add a second scalesweep arm, scalesweep_alt: scalesweep's spec with this field set too, "
                         "side by side, e.g. schedule.branch=false (repeatable)")
    ap.add_argument("--scalesweep-pruner", action="store_true",
                    help="scalesweep with our PrunerScheduler (orchestrator/adapters/tune/scheduler.py, defaults) in replay")
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
    worlds = bundled_worlds() if args.world == "all" else [w.strip() for w in args.world.split(",") if w.strip()]
    docs: dict[str, dict[str, Any]] = {}
    for world_ref in worlds:
        doc = run_benchmark(world_ref, args.target_budget, args.seeds, names, quick=args.quick,
                            concurrency=args.concurrency, asha_mode=args.asha_mode,
                            scalesweep_mode=args.scalesweep_mode,
                            scalesweep_set=tuple(args.scalesweep_set), eval_tokens=args.eval_tokens,
                            first_seed=args.first_seed,
                            grid_shape={"sizes": args.sizes, "ratios": tuple(float(x) for x in args.ratios.split(",")),
                                        "n_lr": args.lrs, "n_batch": args.batches},
                            scalesweep_pruner=args.scalesweep_pruner, prior_ref=args.prior,
                            alt_set=tuple(args.scalesweep_alt_set) if args.scalesweep_alt_set else None)
        print_table(doc)
        docs[doc["world"]["name"]] = doc
        if args.json:
            out = args.json if len(worlds) == 1 else args.json.with_name(f"{args.json.stem}-{doc['world']['name']}.json")
            _write(doc, out)  # each world as soon as it is done (a long multi-world run keeps what it finished)
    if len(worlds) > 1:
        print_summary(docs)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"benchmark": "efficiency", "command": "python -m benchmarks.efficiency "
                                             + " ".join(sys.argv[1:]), "summary": summary_rows(docs), "worlds": docs},
                                            indent=2, allow_nan=False))
            from .efficiency_plot import plot_compute_vs_regret

            png = plot_compute_vs_regret(json.loads(args.json.read_text()),
                                         args.json.with_name(f"{args.json.stem}-compute-vs-regret.png"))
            print(f"wrote {args.json} and {png}")


def _write(doc: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    plot(doc, png)
    doc["plot"] = str(png)
    out.write_text(json.dumps(doc, indent=2, allow_nan=False))
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
