"""A sweep's figures from its store rows and its fit: what the controller logs to the parent run at the
end of a sweep and what `scalesweep report` embeds. Each figure is built on its own: one that cannot be
drawn is left out with a log line, never failing the sweep's summary."""
from __future__ import annotations

import logging
import math
from statistics import NormalDist
from typing import Any, Callable, Optional

import numpy as np
from matplotlib.figure import Figure

from .backtest import predicted_vs_observed
from .bowls import hparam_bowls
from .branches import wsd_branches
from .isoflop import group_by_compute, isoflop_curves
from .loss_vs_compute import loss_vs_compute
from .pruning import pruner_decisions

log = logging.getLogger(__name__)

BACKTEST_NAMES = {"largest_size": "largest size held out", "largest_compute_decade": "largest compute decade held out"}


def sweep_figures(spec: Any, store: Any, fit: Any, points: Optional[list[dict[str, Any]]] = None) -> dict[str, Figure]:
    """{name: Figure} for a sweep: loss_vs_compute, isoflop, backtest, lr_bowls, batch_bowls, pruner and
    wsd_branches, each where the sweep has what it shows. `fit`: the sweep's `SweepFit`."""
    from ...io.store import final_points

    points = final_points(store) if points is None else points
    trials = store.trials()
    builders: dict[str, Callable[[], Optional[Figure]]] = {
        "loss_vs_compute": lambda: loss_vs_compute_figure(fit, spec, points) if points else None,
        "isoflop": lambda: isoflop_figure(fit, spec, points, store, trials),
        "backtest": lambda: backtest_figure(fit, spec.fit.level),
        "lr_bowls": lambda: bowls_figure(trials, store, "lr"),
        "batch_bowls": lambda: bowls_figure(trials, store, "batch"),
        "pruner": lambda: pruner_figure(spec, store, trials),
        "wsd_branches": lambda: branches_figure(store, trials),
    }
    out = {}
    for name, build in builders.items():
        try:
            figure = build()
        except Exception as exc:  # noqa: BLE001 -- a figure is not worth failing a finished sweep's summary
            log.warning("plot %s: not drawn (%s: %s)", name, type(exc).__name__, exc)
            continue
        if figure is not None:
            out[name] = figure
    return out


def loss_vs_compute_figure(fit: Any, spec: Any, points: list[dict[str, Any]]) -> Figure:
    """Loss vs compute with the evidence: every run (those in the fit filled), each size's fitted curve,
    the frontier with its band, the leave-the-largest-size-out backtest, the proposals."""
    from ...core.laws.selection import frontier_band

    used = {(c["N"], c["D"], c["lr"], c["batch"]) for c in fit.cells}
    runs = [{"N": p["N"], "D": p["D"], "C": 6.0 * p["N"] * p["D"], "loss": p["loss"],
             "used": (p["N"], p["D"], p["lr"], p["batch"]) in used} for p in points]
    frontier, curves, heldout = None, None, None
    if fit.fit is not None and runs:
        cs = [r["C"] for r in runs] + list(spec.budget.targets)
        grid = np.geomspace(min(cs) / 2, max(cs) * 2, 40)
        frontier = frontier_band(fit.fit, grid, spec.fit.level)
        curves = {}
        for n in sorted({r["N"] for r in runs}):
            ds = [r["D"] for r in runs if r["N"] == n]
            d = np.geomspace(min(ds) / 1.5, max(ds) * 1.5, 30)
            curves[n] = {"C": 6.0 * n * d, "loss": fit.fit.law.predict(np.full_like(d, n), d)}
        heldout = heldout_rows(fit, spec.fit.level, "largest_size")
    proposals = [{"C": p["budget"], "predicted_loss": p["predicted_loss"],
                  "low": p["intervals"].get("loss_opt", {}).get("low"),
                  "high": p["intervals"].get("loss_opt", {}).get("high")} for p in fit.proposals]
    title = f"Loss vs compute: {fit.fit.form} law" if fit.fit is not None else "Loss vs compute"
    return loss_vs_compute(runs, frontier=frontier, proposals=proposals, curves=curves, heldout=heldout,
                           level=spec.fit.level, title=title)


def isoflop_figure(fit: Any, spec: Any, points: list[dict[str, Any]], store: Any = None,
                   trials: Optional[dict[str, dict[str, Any]]] = None) -> Optional[Figure]:
    """IsoFLOP view: where >= 3 sizes share a compute level at two levels or more (an isoFLOP design),
    the fit's cells grouped by level with a parabola each; otherwise (a per-param grid puts each size at
    its own C) isoFLOP slices read off each size's loss-vs-compute curve (every evaluation of its
    finished and stopped runs, or its cells' final losses without a store). Beside them the fitted law
    along each level and N_opt(C) from the minima beside the law's N*(C)."""
    from .isoflop_slices import isoflop_slices

    if fit.fit is None or not fit.cells:
        return None
    N, D, L = (np.array([c[k] for c in fit.cells], dtype=np.float64) for k in ("N", "D", "loss"))
    C = 6.0 * N * D
    tol = 0.3  # a grid's cells rarely share a budget exactly: within 30 % counts as one isoFLOP level
    labels = group_by_compute(C, tol)
    levels = [g for g in np.unique(labels) if len(np.unique(N[labels == g])) >= 2]
    shared = sum(len(np.unique(N[labels == g])) >= 3 for g in levels)
    keep = np.isin(labels, levels)
    read_off = None
    if shared < 2:
        rows = curve_points(store, trials) if store is not None else {"N": N, "C": C, "loss": L}
        cut = isoflop_slices(rows["N"], rows["C"], rows["loss"])
        if cut:
            read_off = rows
            cs = [s["C"] for s in cut]
    if read_off is None:
        cs = sorted(float(np.exp(np.mean(np.log(C[labels == g])))) for g in levels) or list(np.geomspace(C.min(), C.max(), 4))
    n_lo, n_hi = N.min() / 3, N.max() * 3
    slices = {}
    for c in cs:
        n = np.geomspace(n_lo, n_hi, 60)
        slices[c] = {"N": n, "loss": fit.fit.law.predict(n, c / (6.0 * n))}
    fc = np.geomspace(min(cs + list(spec.budget.targets)) / 2, max(cs + list(spec.budget.targets)) * 2, 30)
    frontier = {"C": fc, "N": fit.fit.law.frontier(list(fc), "6ND")["N_opt"]}
    proposals = [{"C": p["budget"], "N": p["N"], "N_low": p["intervals"].get("N_opt", {}).get("low"),
                  "N_high": p["intervals"].get("N_opt", {}).get("high")} for p in fit.proposals]
    common = dict(slices=slices, frontier=frontier, proposals=proposals, level=spec.fit.level)
    if read_off is not None:
        r = read_off
        return isoflop_curves(r["N"], r["C"] / (6.0 * r["N"]), r["loss"], r["C"], read_off=True, levels=cs, **common)
    return isoflop_curves(N[keep], D[keep], L[keep], C[keep], fits=True, rel_tol=tol, **common)


def curve_points(store: Any, trials: Optional[dict[str, dict[str, Any]]] = None) -> dict[str, np.ndarray]:
    """Columns N, C (6·N·tokens), loss: every finite evaluation of the finished and stopped trials (the
    loss each size reached at each compute; diverged trials are left out)."""
    trials = store.trials() if trials is None else trials
    size = {tid: float(rec["config"]["N"]) for tid, rec in trials.items()
            if rec["status"] in ("finished", "stopped") and rec["config"]}
    cols: dict[str, list[float]] = {"N": [], "C": [], "loss": []}
    for tid, curve in _curves(store).items():
        if tid not in size:
            continue
        for t, y in zip(curve["tokens"], curve["loss"]):
            if t and math.isfinite(y):
                cols["N"].append(size[tid]), cols["C"].append(6.0 * size[tid] * t), cols["loss"].append(y)
    return {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}


def heldout_rows(fit: Any, level: float, backtest: str = "largest_size") -> list[dict[str, float]]:
    """The chosen form's `backtest` (see `BACKTEST_NAMES`) as rows N, D, C, loss (observed), predicted (by
    the fit that did not see them) and low, high: that fit's interval at `level` (its noise and parameter
    uncertainty, on the log scale); [] when the fit has no such backtest."""
    from ...core.laws.selection import heldout_predictions

    if fit.fit is None or not fit.cells:
        return []
    chosen = next((f for f in fit.fit.fits if f.name == fit.fit.form), None)
    calib = ((chosen.backtests if chosen is not None else {}).get(backtest) or {}).get("_calib")
    rows = heldout_predictions(fit.fit, *([c[k] for c in fit.cells] for k in ("N", "D", "loss")), backtest=backtest)
    if not rows or calib is None:
        return []
    z = NormalDist().inv_cdf((1 + level) / 2)
    sd = np.sqrt(calib["sigma"] ** 2 + np.asarray(calib["v"]))  # log scale, row order of heldout_predictions
    return [{**r, "low": r["predicted"] * math.exp(-z * s), "high": r["predicted"] * math.exp(z * s)}
            for r, s in zip(rows, sd)]


def backtest_figure(fit: Any, level: float) -> Optional[Figure]:
    """The chosen form's backtests: each held-out cell's observed loss vs the loss a fit without it
    predicted, with that fit's interval (its noise and parameter uncertainty) at `level`."""
    if fit.fit is None or not fit.cells:
        return None
    obs, pred, low, high, groups = [], [], [], [], []
    for key, name in BACKTEST_NAMES.items():
        for r in heldout_rows(fit, level, key):
            obs.append(r["loss"]), pred.append(r["predicted"]), groups.append(name)
            low.append(r["low"]), high.append(r["high"])
    if not obs:
        return None
    return predicted_vs_observed(obs, pred, low=low, high=high, level=level, groups=groups,
                                 title=f"Backtests of the {fit.fit.form} law: held-out cells")


def hparam_runs(trials: dict[str, dict[str, Any]], store: Any) -> list[dict[str, Any]]:
    """Finished and diverged trials as rows N, D (the cell's nominal D), lr, batch, loss (NaN: diverged)."""
    from ...core.cells import assign_cells

    last = store.last_reports(finite="eval_loss")
    runs = []
    for tid, rec in trials.items():
        c = rec["config"]
        if c is None or rec["status"] not in ("finished", "diverged"):
            continue
        loss = last[tid]["eval_loss"] if rec["status"] == "finished" and tid in last else math.nan
        runs.append({**c, "loss": loss})
    return [{"N": float(r["N"]), "D": float(cell.D), "lr": float(r["lr"]), "batch": float(r["batch"]),
             "loss": float(r["loss"])} for r, cell in zip(runs, assign_cells(runs))]


def bowls_figure(trials: dict[str, dict[str, Any]], store: Any, axis: str) -> Optional[Figure]:
    """lr (or batch) bowls per cell with the lr*(N, D) and batch*(D) laws fitted on the sweep's runs;
    None when no cell tried two values of `axis`."""
    from ...core.proposals import learned_hparams

    runs = hparam_runs(trials, store)
    by_cell: dict[tuple[float, float], set[float]] = {}
    for r in runs:
        by_cell.setdefault((r["N"], r["D"]), set()).add(r[axis])
    if not any(len(v) >= 2 for v in by_cell.values()):
        return None
    return hparam_bowls(runs, learned_hparams(runs), axis=axis)


def pruner_figure(spec: Any, store: Any, trials: dict[str, dict[str, Any]]) -> Optional[Figure]:
    """The pruner's stops and the divergences on the trials' curves; a simulated world's true final loss
    scores each stop (it is the world's, never seen by the pruner). None when nothing was stopped."""
    ended = {tid for tid, rec in trials.items() if rec["status"] in ("stopped", "diverged")}
    if not ended:
        return None
    curves = _curves(store)
    last = {tid: r["eval_loss"] for tid, r in store.last_reports(finite="eval_loss").items()}
    rows = []
    for tid, rec in trials.items():
        c, s = rec["config"] or {}, rec["summary"] or {}
        row = {"trial_id": tid, "status": rec["status"], "D": c.get("D")}
        if rec["status"] == "stopped":
            row.update(_prediction(s, last))
            row["truth"] = _simulated_final(spec, c)
        rows.append(row)
    return pruner_decisions(curves, rows, level=spec.pruning.level)


def _prediction(summary: dict[str, Any], last: dict[str, float]) -> dict[str, Optional[float]]:
    """A stopped trial's predicted final loss: the curve law's, or the paired rule's ratio times its reference's."""
    if summary.get("pred_estimate") is not None:
        return {"predicted": summary["pred_estimate"], "low": summary.get("pred_low"), "high": summary.get("pred_high")}
    ref = last.get(summary.get("pred_reference_trial") or "")
    if ref is not None and summary.get("pred_ratio") is not None:
        low = summary.get("pred_ratio_low")
        return {"predicted": ref * summary["pred_ratio"], "low": None if low is None else ref * low, "high": None}
    return {}


def _simulated_final(spec: Any, config: dict[str, Any]) -> Optional[float]:
    """The final loss a simulated trial would have reached had it run to its planned tokens (None otherwise)."""
    if spec.trainer.backend != "simulated" or not config:
        return None
    from dataclasses import fields

    from trainers.simulated import final_loss

    from ...core.planning.trial import PlannedTrial
    from ...config.trials import trial_config

    known = {f.name for f in fields(PlannedTrial)}
    trial = PlannedTrial(**{k: (tuple(v) if k == "checkpoint_steps" else v) for k, v in config.items() if k in known})
    value = final_loss(trial_config(spec, trial, None, None), spec.trainer.world)
    return value if math.isfinite(value) else None


def branches_figure(store: Any, trials: dict[str, dict[str, Any]]) -> Optional[Figure]:
    """Trunks and their cooldown branches; None in a sweep without WSD branching."""
    if not any((rec["config"] or {}).get("branch_of") for rec in trials.values()):
        return None
    last = {tid: r["eval_loss"] for tid, r in store.last_reports(finite="eval_loss").items()}
    rows = []
    for tid, rec in trials.items():
        c = rec["config"] or {}
        rows.append({"trial_id": tid, "N": c.get("N"), "lr": c.get("lr"), "batch": c.get("batch"),
                     "branch_of": c.get("branch_of"), "branch_tokens": (c.get("branch_step") or 0) * (c.get("batch") or 0),
                     "loss": last.get(tid) if rec["status"] == "finished" else None})
    return wsd_branches(_curves(store), rows)


def _curves(store: Any) -> dict[str, dict[str, list[float]]]:
    """{trial_id: {tokens, loss}} every trial's eval-loss reports."""
    out: dict[str, dict[str, list[float]]] = {}
    table = store.observations().select(["trial_id", "tokens", "eval_loss"]).to_pydict()
    for tid, t, y in zip(table["trial_id"], table["tokens"], table["eval_loss"]):
        c = out.setdefault(tid, {"tokens": [], "loss": []})
        c["tokens"].append(t)
        c["loss"].append(math.nan if y is None else y)
    return out
