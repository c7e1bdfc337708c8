"""`scalesweep fit`: fit a loss law L(N, D) to a table of runs and print it (or its JSON)."""
from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from ..laws.result import FitResult
from ..laws.table import TableError, read_table, require_columns
from .app import app, fail, print_json

# Parameters of each law: a table needs more rows than this.
N_PARAMS = {"chinchilla": 5, "kaplan": 4, "data-constrained": 2, "isoflop": 4}


class Law(str, Enum):
    chinchilla = "chinchilla"
    kaplan = "kaplan"
    data_constrained = "data-constrained"
    isoflop = "isoflop"


class Loss(str, Enum):
    huber = "huber"
    asymmetric = "asymmetric"


@app.command("fit")
def fit_command(
    table: Path = typer.Argument(..., help="CSV or Parquet with columns N, D, loss (+ U unique tokens, C FLOPs)."),
    law: Law = typer.Option(Law.chinchilla, "--law", help="Law family to fit."),
    loss: Loss = typer.Option(Loss.huber, "--loss", help="Robust loss on log residuals (asymmetric = frontier fit)."),
    bootstrap: int = typer.Option(0, "--bootstrap", help="Bootstrap resamples for intervals; 0 = none."),
    cluster: bool = typer.Option(False, "--cluster", help="Resample whole model sizes instead of rows (chinchilla)."),
    budget: Optional[list[float]] = typer.Option(None, "--budget", help="Compute budget C (FLOPs) for the frontier; repeatable."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    isoflop_noise: float = typer.Option(0.002, "--isoflop-noise",
                                        help="isoflop: seed-noise std (nats) of Porian et al.'s bootstrap."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Fit Chinchilla, Kaplan, data-constrained or isoFLOP laws by summed robust loss, with intervals."""
    budgets = [float(c) for c in (budget or [])]
    if bootstrap < 0:
        fail(f"--bootstrap must be >= 0, got {bootstrap}")
    bad = [c for c in budgets if not (math.isfinite(c) and c > 0)]
    if bad:
        fail(f"--budget must be positive FLOPs, got {bad[0]}")
    if law is not Law.chinchilla and cluster:
        fail("--cluster is only implemented for --law chinchilla")
    if law is Law.isoflop and loss is not Loss.huber:
        fail("--loss does not apply to --law isoflop (parabola fits)")
    if not (math.isfinite(isoflop_noise) and isoflop_noise > 0):
        fail(f"--isoflop-noise must be positive, got {isoflop_noise}")
    try:
        result = _fit(table, law.value, loss.value, bootstrap, cluster, seed, budgets, isoflop_noise)
    except (TableError, ValueError) as exc:
        fail(f"{table}: {exc}")
    if as_json:
        print_json(result.to_json())
    else:
        _print_text(result)


def _fit(table: Path, law: str, loss_fn: str, bootstrap: int, cluster: bool, seed: int,
         budgets: list[float], isoflop_noise: float = 0.002) -> FitResult:
    raw = read_table(table)
    required = ["N", "D", "loss"] + (["U"] if law == "data-constrained" else [])
    cols = require_columns(raw, required, positive=required, min_rows=N_PARAMS[law] + 1)
    N, D, L = cols["N"], cols["D"], cols["loss"]
    if law == "chinchilla":
        from ..laws.chinchilla import fit_chinchilla

        return fit_chinchilla(N, D, L, loss_fn=loss_fn, bootstrap=bootstrap, cluster=cluster, seed=seed,
                              budgets=budgets).result
    if law == "kaplan":
        from ..laws.kaplan import fit_kaplan

        return fit_kaplan(N, D, L, loss_fn=loss_fn, bootstrap=bootstrap, seed=seed, budgets=budgets)
    if law == "data-constrained":
        from ..laws.data_constrained import fit_data_constrained

        return fit_data_constrained(N, D, cols["U"], L, loss_fn=loss_fn, bootstrap=bootstrap, seed=seed,
                                    budgets=budgets)
    from ..laws.isoflop import fit_isoflop

    C = require_columns(raw, ["C"], positive=["C"])["C"] if "C" in raw else None
    return fit_isoflop(N, D, L, C, bootstrap=bootstrap, seed=seed, budgets=budgets, noise=isoflop_noise)


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (float, np.floating)):
        return f"{x:.6g}"
    return str(x)


def _print_text(result: FitResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
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
