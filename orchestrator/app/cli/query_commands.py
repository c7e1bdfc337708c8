"""Commands that read a sweep: status, propose (through `orchestrator.app.query`, as the API does)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .app import app, fail, print_json
from .fit_output import LOSS_UNIT, console, print_fit
from .output import flops, integer
from .sweep_commands import sweep_dir_of


@app.command("status")
def status(
    sweep_dir: Path = typer.Argument(..., help="sweep directory, or the job id of a submitted sweep (with --address)",
                                     metavar="SWEEP_DIR|JOB_ID"),
    as_json: bool = typer.Option(False, "--json", help="JSON output"),
    address: Optional[str] = typer.Option(None, "--address",
                                          help="Ray dashboard (http://HEAD:8265) for a job id; default "
                                               "$SCALESWEEP_ADDRESS, then $RAY_ADDRESS"),
) -> None:
    """Trials, their states and the compute used; or a submitted sweep's job status."""
    import os

    from ..query import search_line, status as sweep_status, status_line

    if not sweep_dir.exists() and (address or os.environ.get("SCALESWEEP_ADDRESS") or os.environ.get("RAY_ADDRESS")):
        from .job_commands import job_status

        job_status(str(sweep_dir), address, as_json)
        return
    if not sweep_dir.exists():
        fail(f"{sweep_dir}: no such sweep directory (for a submitted sweep's job id, pass --address)")
    doc = sweep_status(sweep_dir_of(sweep_dir), _recorded_spec(sweep_dir))
    if as_json:
        print_json(doc)
        return
    rows = doc["trials"]
    table = Table(title=f"{sweep_dir}: {status_line(doc['counts'], doc['never_started'])}")
    for col, justify in (("trial", "left"), ("status", "left"), ("N (params)", "right"), ("D (tokens)", "right"),
                         ("lr", "right"), ("batch (tokens)", "right"), ("FLOPs spent / planned", "right"),
                         (f"final eval loss ({LOSS_UNIT})", "right")):
        table.add_column(col, justify=justify)
    for r in rows:
        loss = (r["summary"] or {}).get("final_eval_loss")
        table.add_row(r["trial_id"], r["status"], integer(r["N"]), integer(r["D"]),
                      f"{r['lr']:.3g}" if r["lr"] else "-", integer(r["batch"]),
                      f"{flops(r['flops_spent'])} / {flops(r['planned_flops'])}",
                      f"{loss:.4f}" if loss is not None and math.isfinite(loss) else "-")
    console.print(table)
    console.print(f"trials: {status_line(doc['counts'], doc['never_started'])}")
    branched = "; a WSD branch counts from its branch point" if any(r["branch_of"] for r in rows) else ""
    console.print(f"compute used: {flops(doc['flops_spent'])} FLOPs{branched}")
    if (line := search_line(doc["search"])) is not None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)  # its words as they are, one line


def _recorded_spec(sweep_dir: Path):
    """The sweep's recorded spec.yaml, or None (missing or no longer valid: a warning, the data still read)."""
    spec_path = sweep_dir / "spec.yaml"
    if not spec_path.is_file():
        return None
    from ...config.spec import SpecError, load_spec

    try:
        return load_spec(spec_path)
    except SpecError as exc:
        typer.echo(f"warning: {spec_path} no longer validates ({exc}); fit settings are the defaults", err=True)
        return None


@app.command("propose")
def propose(
    sweep_dir: Path = typer.Argument(..., help="sweep directory"),
    budget: list[float] = typer.Option(..., "--budget", help="target compute budget C in FLOPs (repeatable)"),
    bootstrap: Optional[int] = typer.Option(None, help="bootstrap resamples for the intervals (0 = none; default: the spec's fit.bootstrap)"),
    as_json: bool = typer.Option(False, "--json", help="JSON output"),
) -> None:
    """Compute-optimal (N, D, lr, batch) and predicted loss for each budget, from the sweep's trials."""
    from .. import query
    from ...io.store import ObservationStore

    store = ObservationStore(sweep_dir_of(sweep_dir))
    spec = _recorded_spec(sweep_dir)  # its fit settings and device: the same answer as the API and fit.json
    try:
        fit = query.propose(query.SweepData.read(store), spec, budget, bootstrap)
    except query.NotFitted as exc:
        fail(f"{sweep_dir}: {exc}", code=1)
    except query.BadBudget as exc:
        fail(str(exc))
    if as_json:
        from ...core.laws.result import jsonable

        print_json(jsonable(fit.proposals))
        return
    print_fit(fit.to_json())
