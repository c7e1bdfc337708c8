"""Commands that run sweeps: validate, run, resume (reading a sweep: `query_commands`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .app import app, fail
from .fit_output import console, print_fit
from .output import flops, integer


def _load(spec_path: Path, sweep_dir: Optional[Path] = None):
    """The validated spec (written to `sweep_dir` when given: a moved sweep follows its directory),
    checked against this machine; any problem exits 2 before anything starts."""
    import os

    from ..capacity import check_capacity, local_capacity
    from ...config.trials import check_resources
    from ...config.spec import SpecError, check_data, check_paths, load_spec

    try:
        spec = load_spec(spec_path)
        if sweep_dir is not None and spec.sweep_dir() != sweep_dir.resolve():
            spec = spec.model_copy(update={"output_dir": str(sweep_dir.resolve())})
        check_resources(spec)  # the default CPU device is this machine: checked here, before launch
        check_paths(spec)
        check_data(spec)  # reads the data once: a bad token file fails here, not in every trial
        if not os.environ.get("RAY_ADDRESS"):  # a local cluster: this machine's CPUs and GPUs
            check_capacity(spec, *local_capacity(gpus=spec.resources.use_gpu))
        return spec
    except SpecError as exc:
        fail(str(exc) if str(exc).startswith(str(spec_path)) else f"{spec_path}: {exc}")


def sweep_dir_of(path: Path) -> Path:
    """`path` if it holds a sweep (a store/ inside); else exit 2 naming it."""
    if not (path / "store").is_dir():
        fail(f"{path}: not a sweep directory (no store/ inside)")
    return path


@app.command("validate")
def validate(
    spec: Path = typer.Argument(..., help="sweep spec (YAML)"),
    every_trial: bool = typer.Option(False, "--trials", help="list every trial, not one row per model size"),
) -> None:
    """Check a spec and print the trials it would run (a table per model size; --trials: each trial);
    starts nothing."""
    from ...config.planners import GridPlanner
    from ...config.spec import SpecError, check_sweep_dir

    s = _load(spec)
    try:
        continues = check_sweep_dir(s)  # `run` would refuse a directory holding another sweep
    except SpecError as exc:
        fail(f"{spec}: {exc}")
    grid = GridPlanner(s).runnable()
    what = ("runs them all, cheapest first" if s.search.strategy == "grid"
            else "is searched law-guided: only the trials that teach most about the target optimum run")
    console.print(f"[bold]{s.name}[/]: {len(grid)} trial(s) in the grid ({sum(t.flops for t in grid):.3g} FLOPs "
                  f"within the budget); the sweep {what}. Sweep dir {s.sweep_dir()}"
                  + (" (holds this sweep already: `run` continues it)" if continues else ""))
    console.print(_trials_table(grid) if every_trial else _sizes_table(grid))


def _span(values, fmt) -> str:
    """One value, or `low – high (k values)`."""
    vals = sorted(set(values))
    return fmt(vals[0]) if len(vals) == 1 else f"{fmt(vals[0])} – {fmt(vals[-1])} ({len(vals)} values)"


def _sizes_table(grid) -> Table:
    """The grid per model size: its shape, how many trials, which D, lr, batch and seeds, FLOPs, workers."""
    by_size: dict[int, list] = {}
    for t in grid:
        by_size.setdefault(t.N, []).append(t)
    table = Table(title="trials per model size")
    for col in ("N (params)", "d_model, layers, heads", "trials", "D (tokens)", "lr", "batch (tokens)", "seeds",
                "WSD branches", "FLOPs", "workers x ZeRO"):
        table.add_column(col, justify="left" if col.startswith("d_model") else "right")
    for n, ts in sorted(by_size.items()):
        sh = ts[0].shape
        table.add_row(integer(n), f"{sh.get('d_model')}, {sh.get('n_layers')}, {sh.get('n_heads')}", str(len(ts)),
                      _span([t.D for t in ts], integer), _span([t.lr for t in ts], lambda v: f"{v:.3g}"),
                      _span([t.batch for t in ts], integer), _span([t.seed for t in ts], str),
                      str(sum(1 for t in ts if t.branch_of)), flops(sum(t.flops for t in ts)),
                      _span([f"{t.workers} x {t.zero_stage}" for t in ts], str))
    return table


def _trials_table(grid) -> Table:
    """Every trial of the grid, in the order the sweep hands them out."""
    table = Table(title=f"{len(grid)} trial(s)")
    for col in ("trial", "N (params)", "D (tokens)", "lr", "batch (tokens)", "seed", "FLOPs", "branch of"):
        table.add_column(col, justify="left" if col in ("trial", "branch of") else "right")
    for t in grid:
        table.add_row(t.trial_id, integer(t.N), integer(t.D), f"{t.lr:.3g}", integer(t.batch), str(t.seed),
                      flops(t.flops), t.branch_of or "-")
    return table


@app.command("run")
def run(
    spec: Path = typer.Argument(..., help="sweep spec (YAML)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no live display"),
) -> None:
    """Run a sweep on a local Ray cluster (or the one at RAY_ADDRESS), then fit and propose."""
    from ...config.spec import SpecError, check_sweep_dir

    s = _load(spec)
    try:
        if check_sweep_dir(s):
            console.print(f"continuing the sweep in {s.sweep_dir()} (same spec); finished trials are not rerun")
        else:
            console.print(f"starting the sweep in {s.sweep_dir()}")
    except SpecError as exc:
        fail(f"{spec}: {exc}")
    _run_and_print(s, str(spec), no_progress)


def _run_and_print(s, spec_path: Optional[str], no_progress: bool) -> None:
    from ..session import SweepFailed, run_sweep
    from ..stopping import SweepInterrupted
    from ..tune_run import TrainerContractError
    from ...config.spec import SpecError
    from ...io.store import StoreError

    try:
        outcome = run_sweep(s, spec_path, show_progress=not no_progress)
    except SweepInterrupted as exc:  # Ctrl-C / SIGTERM / `scalesweep stop`: trials recorded, parent KILLED, no fit
        from ..stopping import ignore_further_signals

        ignore_further_signals()  # what is left is Ray's shutdown at exit (seconds): a late signal waits for it
        typer.echo(str(exc), err=True)
        raise typer.Exit(exc.exit_code)
    except KeyboardInterrupt:  # before the sweep started (Ray starting): nothing was run
        typer.echo(f"interrupted before sweep {s.name} started; nothing was run", err=True)
        raise typer.Exit(130)
    except SpecError as exc:  # the cluster cannot hold a trial: nothing was written
        fail(f"{spec_path or s.sweep_dir()}: {exc}")
    except TrainerContractError as exc:  # a user's trainer that breaks the contract: bad input
        fail(str(exc))
    except StoreError as exc:  # disk full, permissions: nothing half-written; `resume` continues
        fail(f"{exc}\nfix it, then continue with: scalesweep resume {s.sweep_dir()}", code=1)
    except SweepFailed as exc:  # the parent run is FAILED, the store flushed: one line, the rest in the log
        where = f"traceback in {exc.log_path}; " if exc.log_path else ""
        fail(f"sweep {s.name} failed: {exc.line} ({where}continue with `scalesweep resume {s.sweep_dir()}`)",
             code=1)
    except Exception as exc:  # noqa: BLE001 -- before the sweep started (Ray would not start, ...)
        import os
        import traceback

        from ..session import one_line

        if os.environ.get("SCALESWEEP_TRACEBACK"):
            traceback.print_exc()
        fail(f"sweep {s.name} could not start: {one_line(exc)} (nothing was run; set SCALESWEEP_TRACEBACK=1 "
             "for the traceback)", code=1)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(outcome.statuses.items()))
    from ..query import never_started, status_line
    from ...io.store import ObservationStore

    # every state named, as `status` says it: a grid's trials that never started too (a diverged trunk's branches)
    try:
        never = never_started(s, ObservationStore(outcome.sweep_dir, location=s.store).trials())
    except Exception:  # noqa: BLE001 -- only a count in a message: the sweep itself is done
        never = None
    console.print(f"\n[bold]sweep {s.name} done[/] in {outcome.wall_s:.0f}s: {status_line(outcome.statuses, never)}")
    print_fit(outcome.fit.to_json())
    console.print(f"\nsweep directory: {outcome.sweep_dir}")
    console.print(f"open the MLflow UI:  mlflow ui --backend-store-uri {s.tracking_uri()}")
    if not outcome.statuses.get("finished"):
        # every trial ran and none finished (all diverged, say): no law, no proposals
        fail(f"sweep {s.name}: no trial finished ({counts or 'no trials'}); nothing to fit. Lower the "
             "learning rates or check the data and resources, then run again", code=1)


@app.command("resume")
def resume(
    sweep_dir: Path = typer.Argument(..., help="sweep directory of an interrupted sweep"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no live display"),
) -> None:
    """Finish an interrupted sweep: trials that finished (or diverged) are not rerun."""
    spec_path = sweep_dir_of(sweep_dir) / "spec.yaml"
    if not spec_path.is_file():
        fail(f"{sweep_dir}: no spec.yaml inside; was this sweep started by `scalesweep run`?")
    s = _load(spec_path, sweep_dir)  # the recorded spec may point elsewhere (a moved directory): follow it
    _run_and_print(s, None, no_progress)
