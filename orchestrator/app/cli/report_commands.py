"""`scalesweep report`: a sweep's one-page HTML report, written beside the sweep and logged to its parent run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, fail


@app.command("report")
def report(
    sweep_dir: Path = typer.Argument(..., help="sweep directory"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for index.html and plots/ (default SWEEP_DIR/report)"),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="log the report to the sweep's MLflow parent run"),
    bootstrap: Optional[int] = typer.Option(None, help="bootstrap resamples of the figures' refit (default: the spec's fit.bootstrap)"),
) -> None:
    """Write a one-page HTML summary: the spec, what ran, what was stopped and why, the laws with intervals
    and backtests, the proposals, the figures, the warnings."""
    from ..report import build_report
    from ...config.spec import SpecError

    if not (sweep_dir / "store").is_dir() or not (sweep_dir / "spec.yaml").is_file():
        fail(f"{sweep_dir}: not a sweep directory (needs store/ and spec.yaml inside)")
    if bootstrap is not None and bootstrap < 0:
        fail(f"--bootstrap must be >= 0, got {bootstrap}")
    try:
        r = build_report(sweep_dir, out, log_to_mlflow=mlflow, bootstrap=bootstrap)
    except SpecError as exc:
        fail(f"{sweep_dir / 'spec.yaml'}: {exc}")
    typer.echo(f"report: {r.html_path}")
    for name, path in r.figures.items():
        typer.echo(f"  figure {name}: {path}")
    if r.mlflow_run:
        typer.echo(f"logged to MLflow run {r.mlflow_run} (artifacts report/)")
    elif mlflow:
        typer.echo(f"warning: not logged to MLflow: {r.mlflow_error}", err=True)
