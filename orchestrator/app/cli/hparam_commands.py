"""`scalesweep fit-hparams`: lr*(N, D) and batch*(D) laws from a table of runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from ...core.laws.table import TableError, read_table, require_columns
from .app import app, fail, print_json

REQUIRED = ("N", "D", "lr", "batch")


@app.command("fit-hparams")
def fit_hparams_command(
    table: Path = typer.Argument(..., help="CSV/Parquet with columns N, D, lr, batch (tokens), loss [, diverged]."),
    method: str = typer.Option("steplaw", help="Cell optimum: steplaw (runs within 0.25 % of best) or bowl; or "
                                                 "surface: one bowl shared by every cell, its centre on the laws."),
    bootstrap: int = typer.Option(200, help="Bootstrap resamples (cells) for the intervals; 0 = none."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    level: float = typer.Option(0.9, help="Interval level."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Fit lr* = coef·N^N_exp·D^D_exp and batch* = coef·D^D_exp with bootstrap intervals."""
    # the laws (scipy.optimize) load here, not when the app is built: other commands do not pay for them
    from ...core.laws.hparam_surface import fit_surface_hparams
    from ...core.laws.hparams import METHODS, HparamError, fit_hparams

    if method not in METHODS + ("surface",):
        fail(f"--method must be one of {', '.join(METHODS + ('surface',))}, got {method!r}")
    if bootstrap < 0:
        fail(f"--bootstrap must be >= 0, got {bootstrap}")
    if not 0 < level < 1:
        fail(f"--level must be in (0, 1), got {level}")
    try:
        raw = read_table(table)
        cols = require_columns(raw, REQUIRED, positive=REQUIRED, min_rows=1)
        if "loss" not in raw:
            raise TableError(f"missing column(s) loss; table has {', '.join(raw)}")
        loss = _numeric(raw["loss"], "loss")  # NaN/inf loss is allowed: it marks a diverged run
        diverged = _flags(raw["diverged"]) if "diverged" in raw else None
        if method == "surface":
            if diverged is not None:
                loss = np.where(diverged, np.nan, loss)  # censored: no loss value
            fit = fit_surface_hparams(cols["N"], cols["D"], cols["lr"], cols["batch"], loss,
                                      bootstrap=bootstrap, seed=seed, level=level)
        else:
            fit = fit_hparams(
                cols["N"], cols["D"], cols["lr"], cols["batch"], loss,
                diverged=diverged, method=method, bootstrap=bootstrap, seed=seed, level=level,
            )
    except (TableError, HparamError) as exc:
        fail(f"{table}: {exc}")
    if as_json:
        print_json(fit.to_json())
        return
    _print_text(fit)


def _numeric(col: np.ndarray, name: str) -> np.ndarray:
    try:
        return np.asarray(col, dtype=np.float64)
    except (TypeError, ValueError):
        raise TableError(f"column {name}: not numeric") from None


def _flags(col: np.ndarray) -> np.ndarray:
    """A `diverged` column as booleans (bool, 0/1, or true/false strings)."""
    if col.dtype.kind == "b":
        return col.astype(bool)
    if col.dtype.kind in "iuf":
        if not np.isin(col, (0, 1)).all():
            raise TableError("column diverged: values must be 0/1 or true/false")
        return col.astype(bool)
    text = np.char.lower(np.asarray(col, dtype=str))
    ok = np.isin(text, ("true", "false", "1", "0", "yes", "no"))
    if not ok.all():
        raise TableError(f"column diverged: unreadable value {col[int(np.argmin(ok))]!r} (use true/false)")
    return np.isin(text, ("true", "1", "yes"))


def _print_text(fit) -> None:
    iv = fit.intervals
    pct = f"{fit.level:.0%}"
    lr, b = fit.lr_law, fit.batch_law
    typer.echo(f"method {fit.method}: {len(fit.cells)} cells, {fit.n_runs} runs ({fit.n_diverged} diverged)")
    typer.echo(f"lr*    = {lr.coef:.4g} · N^{lr.N_exp:.4f} · D^{lr.D_exp:.4f}")
    typer.echo(f"batch* = {b.coef:.4g} · D^{b.D_exp:.4f}  (tokens)")
    typer.echo(f"{pct} bootstrap intervals ({fit.bootstrap} resamples of cells):")
    for group in ("lr", "batch"):
        for name, i in iv[group].items():
            typer.echo(f"  {group:5s} {name:5s} {i.estimate:.4g}  [{i.low:.4g}, {i.high:.4g}]")
    for w in fit.warnings:
        typer.echo(f"warning: {w}")
