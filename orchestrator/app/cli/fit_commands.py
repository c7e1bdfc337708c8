"""`scalesweep fit`: fit a loss law L(N, D) to a table of runs and print it (or its JSON).

`--law auto` fits every candidate form and weights them by their backtests
(`orchestrator.core.laws.selection`); `--predict OTHER` prints the chosen law's predicted loss and
prediction interval for every row of OTHER (any L(N, D) law).
"""
from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from ...core.laws.result import FitResult
from ...core.laws.table import TableError, read_table, require_columns
from .app import app, fail, print_json

# Parameters of each law: a table needs more rows than this.
N_PARAMS = {"chinchilla": 5, "kaplan": 4, "kaplan-E": 5, "data-constrained": 2, "isoflop": 4, "auto": 4}


class Law(str, Enum):
    auto = "auto"
    chinchilla = "chinchilla"
    kaplan = "kaplan"
    kaplan_E = "kaplan-E"  # Kaplan's form above a floor E: fitted by the selection machinery (one form)
    data_constrained = "data-constrained"
    isoflop = "isoflop"


def default_law() -> Law:
    """The law `fit` uses without --law: the spec's `fit.law` default, so the command and sweeps agree.

    Read from `FitSpec` at call time (not a second literal here); imported lazily because the spec
    (pydantic) would slow every CLI start, and `--help` never needs it.
    """
    from ...config.spec import FitSpec  # deferred: keeps pydantic out of CLI start-up

    return Law(FitSpec().law)


class Loss(str, Enum):
    huber = "huber"
    asymmetric = "asymmetric"


@app.command("fit")
def fit_command(
    table: Path = typer.Argument(..., help="CSV or Parquet with columns N, D, loss (+ U unique tokens, C FLOPs)."),
    law: Optional[Law] = typer.Option(
        None, "--law", help="Law family to fit. Default: a spec's `fit.law` default (FitSpec; auto = the form chosen "
        "by backtest)."),
    loss: Loss = typer.Option(Loss.huber, "--loss", help="Robust loss on log residuals (asymmetric = frontier fit)."),
    bootstrap: Optional[int] = typer.Option(
        None, "--bootstrap",
        help="Bootstrap resamples for intervals; 0 = none. Default 0, or 100 with --law auto or --predict."),
    cluster: bool = typer.Option(False, "--cluster",
                                 help="Resample whole model sizes instead of rows (chinchilla, auto)."),
    budget: Optional[list[float]] = typer.Option(None, "--budget", help="Compute budget C (FLOPs) for the frontier; repeatable."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    isoflop_noise: float = typer.Option(0.002, "--isoflop-noise",
                                        help="isoflop: seed-noise std (nats) of Porian et al.'s bootstrap."),
    predict: Optional[Path] = typer.Option(
        None, "--predict", help="CSV/Parquet with columns N, D (+ U): print predicted loss and interval per row."),
    level: float = typer.Option(0.9, "--level", help="Level of the --predict intervals."),
    e_prior: Optional[float] = typer.Option(
        None, "--e-prior", help="--law auto: the value E is held at in the fixed-E forms (default 0: no floor)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Fit Chinchilla, Kaplan, data-constrained or isoFLOP laws by summed robust loss, with intervals;
    `--law auto` picks the form by backtest; `--predict OTHER` predicts OTHER's rows."""
    if law is None:
        law = default_law()
    budgets = [float(c) for c in (budget or [])]
    if bootstrap is None:
        bootstrap = 100 if (law is Law.auto or predict is not None) else 0
    if bootstrap < 0:
        fail(f"--bootstrap must be >= 0, got {bootstrap}")
    bad = [c for c in budgets if not (math.isfinite(c) and c > 0)]
    if bad:
        fail(f"--budget must be positive FLOPs, got {bad[0]}")
    if law not in (Law.chinchilla, Law.auto) and cluster:
        fail("--cluster is only implemented for --law chinchilla and --law auto")
    if law is Law.isoflop and loss is not Loss.huber:
        fail("--loss does not apply to --law isoflop (parabola fits)")
    if not (math.isfinite(isoflop_noise) and isoflop_noise > 0):
        fail(f"--isoflop-noise must be positive, got {isoflop_noise}")
    if law is Law.isoflop and predict is not None:
        fail("--predict needs a law of L(N, D); --law isoflop fits only the compute-optimal N and D")
    if not 0.0 < level < 1.0:
        fail(f"--level must be in (0, 1), got {level}")
    if e_prior is not None and law is not Law.auto:
        fail("--e-prior applies to --law auto only")
    if predict is not None or law in (Law.auto, Law.kaplan_E):
        _fit_auto_command(table, law.value, loss.value, bootstrap, cluster, seed, budgets, predict, level, e_prior,
                          as_json)
        return
    try:
        result = _fit(table, law.value, loss.value, bootstrap, cluster, seed, budgets, isoflop_noise)
    except (TableError, ValueError) as exc:
        fail(f"{table}: {exc}")
    if as_json:
        print_json(result.to_json())
    else:
        _print_text(result)


def _fit_auto_command(table: Path, law: str, loss_fn: str, bootstrap: int, cluster: bool, seed: int,
                      budgets: list[float], predict: Optional[Path], level: float, e_prior: Optional[float],
                      as_json: bool) -> None:
    """--law auto, or any L(N, D) law with --predict: the selection machinery (one form for a named law)."""
    from ...core.laws.selection import extrapolation_warnings, fit_auto, forms_of

    try:
        raw = read_table(table)
        required = ["N", "D", "loss"] + (["U"] if law == "data-constrained" else [])
        cols = require_columns(raw, required, positive=required, min_rows=N_PARAMS[law] + 1)
        U = None
        if "U" in raw and law in ("auto", "data-constrained"):
            U = require_columns(raw, ["U"], positive=["U"])["U"]
    except (TableError, ValueError) as exc:
        fail(f"{table}: {exc}")
    other = None
    if predict is not None:
        try:
            raw_o = read_table(predict)
            need = ["N", "D"] + (["U"] if U is not None else [])
            other = require_columns(raw_o, need, positive=need, min_rows=1)
        except (TableError, ValueError) as exc:
            hint = " (the fit used unique tokens U)" if U is not None and "U" not in raw_o else ""
            fail(f"{predict}: {exc}{hint}")
    try:
        fit = fit_auto(cols["N"], cols["D"], cols["loss"], U, forms=forms_of(law),
                       e_prior=e_prior, loss_fn=loss_fn, bootstrap=bootstrap, cluster=cluster, seed=seed,
                       budgets=budgets, level=level)
    except (TableError, ValueError) as exc:
        fail(f"{table}: {exc}")
    if other is None:
        if as_json:
            print_json(fit.to_json())
        else:
            _print_selection(fit)
            _print_text(fit.result)
        return
    loss_p, lo, hi = fit.predict_interval(other["N"], other["D"], other.get("U"), level=level)
    rows = []
    for i in range(len(loss_p)):
        row = {"N": float(other["N"][i]), "D": float(other["D"][i])}
        if "U" in other:
            row["U"] = float(other["U"][i])
        row.update({"loss": float(loss_p[i]), "interval": [float(lo[i]), float(hi[i])]})
        rows.append(row)
    far = extrapolation_warnings(fit, other["N"], other["D"])
    doc = {"law": fit.form, "weights": fit.weights, "level": level, "reason": fit.selection["reason"],
           "predictions": rows, "warnings": far, "fit": fit.to_json()}
    if as_json:
        print_json(doc)
        return
    from .output import make_console
    from rich.table import Table

    console = make_console()
    _print_selection(fit)
    tab = Table(*(["N", "D"] + (["U"] if "U" in other else []) + ["loss", f"{level:.0%} low", "high"]),
                title=f"predictions of {predict.name}")
    for r in rows:
        tab.add_row(*[_fmt(r[k]) for k in (["N", "D"] + (["U"] if "U" in r else []) + ["loss"])],
                    _fmt(r["interval"][0]), _fmt(r["interval"][1]))
    console.print(tab)
    for w in fit.warnings + far:
        console.print(f"[yellow]warning:[/yellow] {w}")


_SHORT = {"largest_size": "largest N", "largest_compute_decade": "top C decade"}


def _print_selection(fit) -> None:
    from .output import make_console
    from rich.table import Table

    console = make_console()
    console.print(f"[bold]law: {fit.form}[/bold] — {fit.selection['reason']}")
    tab = Table("form", "p", "weight", "held out", "n", "mean", "worst", "RMS log",
                title="candidate forms: backtest errors (|relative error| of held-out runs)")
    tab.columns[0].no_wrap = True
    for name, c in fit.selection["candidates"].items():
        bts = c.get("backtests") or {}
        if not bts:
            tab.add_row(name, str(c["n_params"]), f"{c['weight']:.2f}", c.get("error", "no backtest"), "", "", "", "")
        for i, (bname, bt) in enumerate(bts.items()):
            first = i == 0
            if "error" in bt:
                tab.add_row(name if first else "", str(c["n_params"]) if first else "",
                            f"{c['weight']:.2f}" if first else "", bname, bt["error"], "", "", "")
                continue
            tab.add_row(name if first else "", str(c["n_params"]) if first else "",
                        f"{c['weight']:.2f}" if first else "", _SHORT.get(bname, bname), str(bt["n_test"]),
                        f"{bt['mean_abs_rel_error']:.2%}", f"{bt['max_abs_rel_error']:.2%}", f"{bt['rmse_log']:.2%}")
    console.print(tab)
    for line in distance_lines(fit.selection["candidates"].get(fit.form, {}).get("backtests") or {}):
        console.print(f"{fit.form}, {line}")


def distance_lines(backtests: dict) -> list[str]:
    """One line per backtest: its held-out runs' |relative error| binned by decades beyond the fitted runs.

    >>> distance_lines({"largest_size": {"by_distance": [
    ...     {"decades_low": 0.0, "decades_high": 0.25, "n": 3, "mean_abs_rel_error": 0.004, "max_abs_rel_error": 0.01},
    ...     {"decades_low": 0.25, "decades_high": 0.5, "n": 1, "mean_abs_rel_error": 0.02, "max_abs_rel_error": 0.02}]}})
    ['largest N by extrapolation distance (decades): 0-0.25: 0.40 % (worst 1.00 %, n 3); 0.25-0.5: 2.00 % (worst 2.00 %, n 1)']
    """
    out = []
    for name, bt in backtests.items():
        bins = bt.get("by_distance") or []
        if bins:
            cells = [f"{b['decades_low']:g}-{b['decades_high']:g}: {100 * b['mean_abs_rel_error']:.2f} % "
                     f"(worst {100 * b['max_abs_rel_error']:.2f} %, n {b['n']})" for b in bins]
            out.append(f"{_SHORT.get(name, name)} by extrapolation distance (decades): " + "; ".join(cells))
    return out


def _fit(table: Path, law: str, loss_fn: str, bootstrap: int, cluster: bool, seed: int,
         budgets: list[float], isoflop_noise: float = 0.002) -> FitResult:
    raw = read_table(table)
    required = ["N", "D", "loss"] + (["U"] if law == "data-constrained" else [])
    cols = require_columns(raw, required, positive=required, min_rows=N_PARAMS[law] + 1)
    N, D, L = cols["N"], cols["D"], cols["loss"]
    if law == "chinchilla":
        from ...core.laws.chinchilla import fit_chinchilla

        return fit_chinchilla(N, D, L, loss_fn=loss_fn, bootstrap=bootstrap, cluster=cluster, seed=seed,
                              budgets=budgets).result
    if law == "kaplan":
        from ...core.laws.kaplan import fit_kaplan

        return fit_kaplan(N, D, L, loss_fn=loss_fn, bootstrap=bootstrap, seed=seed, budgets=budgets)
    if law == "data-constrained":
        from ...core.laws.data_constrained import fit_data_constrained

        return fit_data_constrained(N, D, cols["U"], L, loss_fn=loss_fn, bootstrap=bootstrap, seed=seed,
                                    budgets=budgets)
    from ...core.laws.isoflop import fit_isoflop

    C = require_columns(raw, ["C"], positive=["C"])["C"] if "C" in raw else None
    return fit_isoflop(N, D, L, C, bootstrap=bootstrap, seed=seed, budgets=budgets, noise=isoflop_noise)


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (float, np.floating)):
        return f"{x:.6g}"
    return str(x)


def _print_text(result: FitResult) -> None:
    from .output import make_console
    from rich.table import Table

    console = make_console()
    doc = result.to_json()
    console.print(f"[bold]{doc['law']}[/bold] fit: {doc['n_points']} points, summed {doc['loss']} objective "
                  f"{_fmt(doc['objective'])}")
    intervals = doc.get("intervals") or {}
    tab = Table("parameter", "estimate", "low", "high")
    names = list(doc["params"]) + [k for k in intervals if k not in doc["params"] and k != "budgets"
                                   and isinstance(intervals[k], dict) and "estimate" in intervals[k]]
    for name in names:
        iv = intervals.get(name) if isinstance(intervals.get(name), dict) else {}
        est = doc["params"].get(name, iv.get("estimate"))
        tab.add_row(name, _fmt(est), _fmt(iv.get("low")), _fmt(iv.get("high")))
    console.print(tab)
    budgets = intervals.get("budgets") or {}
    if budgets:
        bt = Table("budget C", "quantity", "estimate", "low", "high", title="compute-optimal frontier")
        for c, quantities in budgets.items():
            for i, (q, iv) in enumerate(quantities.items()):
                if isinstance(iv, dict):
                    bt.add_row(c if i == 0 else "", q, _fmt(iv.get("estimate")), _fmt(iv.get("low")),
                               _fmt(iv.get("high")))
                else:
                    bt.add_row(c if i == 0 else "", q, _fmt(iv), "", "")
        console.print(bt)
    methods = (doc.get("extra") or {}).get("methods") or {}
    if methods:  # isoflop: every estimator's exponents side by side
        mt = Table("method", "quantity", "estimate", "low", "high", "budgets", title="isoFLOP estimators")
        for m, md in methods.items():
            for q in ("N_exp", "D_exp"):
                iv = md["intervals"][q]
                mt.add_row(m, q, _fmt(iv["estimate"]), _fmt(iv["low"]), _fmt(iv["high"]), _fmt(md["n_budgets"]))
        console.print(mt)
    for w in doc.get("warnings") or []:
        console.print(f"[yellow]warning:[/yellow] {w}")
