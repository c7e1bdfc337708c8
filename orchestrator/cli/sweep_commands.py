"""Commands that run and query sweeps: run, status, propose."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional
import typer
from rich.table import Table

from .app import app, fail, print_json
from .output import LazyConsole, flops, integer, interval, si

console = LazyConsole()  # the terminal's width, or never cut when piped (orchestrator/cli/output.py)

LOSS_UNIT = "nats/token"


def _load(spec_path: Path, sweep_dir: Optional[Path] = None):
    """The validated spec (written to `sweep_dir` when given: a moved sweep follows its directory),
    checked against this machine; any problem exits 2 before anything starts."""
    import os

    from ..controller import check_capacity, local_capacity
    from ..planner import check_resources
    from ..spec import SpecError, check_data, check_paths, load_spec

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


def _sweep_dir(path: Path) -> Path:
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
    from ..planner import GridPlanner
    from ..spec import SpecError, check_sweep_dir

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
    from ..spec import SpecError, check_sweep_dir

    s = _load(spec)
    try:
        if check_sweep_dir(s):
            console.print(f"continuing the sweep in {s.sweep_dir()} (same spec); finished trials are not rerun")
    except SpecError as exc:
        fail(f"{spec}: {exc}")
    _run_and_print(s, str(spec), no_progress)


def _run_and_print(s, spec_path: Optional[str], no_progress: bool) -> None:
    from ..controller import SweepFailed, SweepInterrupted, TrainerContractError, run_sweep
    from ..spec import SpecError
    from ..store import StoreError

    try:
        outcome = run_sweep(s, spec_path, show_progress=not no_progress)
    except SweepInterrupted as exc:  # Ctrl-C / SIGTERM / `scalesweep stop`: trials recorded, parent KILLED, no fit
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

        from ..controller import one_line

        if os.environ.get("SCALESWEEP_TRACEBACK"):
            traceback.print_exc()
        fail(f"sweep {s.name} could not start: {one_line(exc)} (nothing was run; set SCALESWEEP_TRACEBACK=1 "
             "for the traceback)", code=1)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(outcome.statuses.items()))
    console.print(f"\n[bold]sweep {s.name} done[/] in {outcome.wall_s:.0f}s: {counts}")
    _print_fit(outcome.fit.to_json())
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
    spec_path = _sweep_dir(sweep_dir) / "spec.yaml"
    if not spec_path.is_file():
        fail(f"{sweep_dir}: no spec.yaml inside; was this sweep started by `scalesweep run`?")
    s = _load(spec_path, sweep_dir)  # the recorded spec may point elsewhere (a moved directory): follow it
    _run_and_print(s, None, no_progress)


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

    from ..query import status as sweep_status, status_line

    if not sweep_dir.exists() and (address or os.environ.get("SCALESWEEP_ADDRESS") or os.environ.get("RAY_ADDRESS")):
        from .job_commands import job_status

        job_status(str(sweep_dir), address, as_json)
        return
    if not sweep_dir.exists():
        fail(f"{sweep_dir}: no such sweep directory (for a submitted sweep's job id, pass --address)")
    doc = sweep_status(_sweep_dir(sweep_dir), _recorded_spec(sweep_dir))
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


def _recorded_spec(sweep_dir: Path):
    """The sweep's recorded spec.yaml, or None (missing or no longer valid: a warning, the data still read)."""
    spec_path = sweep_dir / "spec.yaml"
    if not spec_path.is_file():
        return None
    from ..spec import SpecError, load_spec

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
    from ..store import ObservationStore

    store = ObservationStore(_sweep_dir(sweep_dir))
    spec = _recorded_spec(sweep_dir)  # its fit settings and device: the same answer as the API and fit.json
    try:
        fit = query.propose(query.SweepData.read(store), spec, budget, bootstrap)
    except query.NotFitted as exc:
        fail(f"{sweep_dir}: {exc}", code=1)
    except query.BadBudget as exc:
        fail(str(exc))
    if as_json:
        from ..laws.result import jsonable

        print_json(jsonable(fit.proposals))
        return
    _print_fit(fit.to_json())


FORMULAS = {
    "chinchilla": "E + A/N^alpha + B/D^beta",
    "chinchilla-fixed-E": "E + A/N^alpha + B/D^beta, E held",
    "equal-exponent": "E + A/N^alpha + B/D^alpha",
    "equal-exponent-fixed-E": "E + A/N^alpha + B/D^alpha, E held",
    "kaplan": "((Nc/N)^(alphaN/alphaD) + Dc/D)^alphaD",
}


def _print_fit(doc: dict) -> None:
    law = doc.get("law")
    if law is None:
        console.print(f"[yellow]no fit[/]: {'; '.join(doc.get('warnings', []))}")
        return
    p = law["params"]
    iv = law.get("intervals", {})

    def band(name: str) -> str:
        i = iv.get(name) or {}
        if i.get("low") is None:
            return ""
        return f" [{i['low']:.4g}, {i['high']:.4g}]"

    form = law.get("form", law.get("law", "L(N, D)"))
    console.print(f"\n[bold]fitted L(N, D): {form}[/] ({FORMULAS.get(form, '')}) on {law['n_points']} (N, D) "
                  f"cells (objective {law['objective']:.4g}):")
    for name, value in p.items():
        console.print(f"  {name:>6} = {value:.4g}{band(name)}")
    selection = law.get("selection") or {}
    if selection.get("reason"):
        console.print(f"  [dim]chosen by backtest[/]: {selection['reason']}")
    fallback = selection.get("fallback")
    if fallback:  # said plainly: the form the backtests preferred has a parameter the runs do not determine
        to = fallback.get("to")
        console.print(f"  [yellow]not identified[/]: {fallback['from']} has "
                      f"{'; '.join((selection.get('pinned') or {}).get(fallback['from'], []))} -> "
                      + (f"falls back to {to}" if to else "no candidate form is identified: proposals rest on a bound"))
    elif selection.get("identified"):
        console.print(f"  identified: every fitted parameter of {form} lies inside its bounds")
    bts = ((selection.get("candidates") or {}).get(form) or {}).get("backtests") or {}
    for key, what in (("largest_size", "leave the largest model size out"),
                      ("largest_compute_decade", "leave the largest compute decade out")):
        bt = bts.get(key) or {}
        if bt.get("mean_abs_rel_error") is not None:
            console.print(f"  backtest, {what}: mean error {bt['mean_abs_rel_error']:.2%}, worst "
                          f"{bt['max_abs_rel_error']:.2%} on {bt['n_test']} held-out cells "
                          f"({bt['max_distance_decades']:.2f} decades beyond the fitted ones)")
    for w in law.get("warnings", []):
        console.print(f"  [yellow]warning[/]: {w}")
    if not doc.get("proposals"):
        return
    props = doc["proposals"]
    # an interval column only where some proposal has that interval (lr and batch have none
    # unless the spec fits their laws): no empty brackets, no title promising bands that are not there
    ivs = [pr.get("intervals") or {} for pr in props]
    levels = {i["level"] for iv in ivs for i in iv.values() if isinstance(i, dict) and i.get("level")}
    level = f"{max(levels):.0%}" if levels else ""
    cols = [("budget C (FLOPs)", "budget", flops, None), ("N* (params)", "N", integer, "N_opt"),
            ("D* (tokens)", "D", integer, "D_opt"), ("tokens/param", "tokens_per_param", lambda v: f"{v:.1f}",
                                                      "tokens_per_param"),
            ("lr", "lr", lambda v: f"{v:.3g}", "lr"), ("batch (tokens)", "batch", integer, "batch"),
            (f"predicted loss ({LOSS_UNIT})", "predicted_loss", lambda v: f"{v:.4f}", "loss_opt")]
    # In a terminal an interval goes under its value (fewer columns fit 80-120 columns without
    # cutting a number); in a log it has its own column (one line per row, easy to grep).
    stacked = console.is_terminal
    table = Table(title="compute-optimal proposals" + (f" ({level} intervals)" if level else ""),
                  show_edge=not stacked)
    shown = []
    for head, key, fmt, iv_key in cols:
        has_iv = iv_key is not None and any((iv.get(iv_key) or {}).get("low") is not None for iv in ivs)
        if stacked:  # headers wrap at spaces in a narrow terminal: "tokens per param", not "tokens/p…"
            head = head.replace("/", " per ")
        table.add_column(f"{head}\n{level} interval" if has_iv and stacked else head, justify="right")
        if has_iv and not stacked:
            table.add_column(f"{level} interval", justify="right")
        shown.append((key, fmt, iv_key if has_iv else None))
    if not stacked:  # in a terminal the shapes go under the table: 80 columns hold the rest whole
        table.add_column("shape d_model, layers, heads", justify="right")
    shapes = []
    for pr, iv in zip(props, ivs):
        cells = []
        for key, fmt, iv_key in shown:
            cells.append(fmt(pr[key]) if pr.get(key) is not None else "-")
            if iv_key is not None:
                ifmt = (lambda v: f"{v:.4f}") if key == "predicted_loss" else (
                    (lambda v: f"{v:.1f}") if key == "tokens_per_param" else si)
                band = interval(iv.get(iv_key), ifmt) or "-"
                if stacked:
                    cells[-1] += "\n" + band
                else:
                    cells.append(band)
        sh = pr.get("shape")
        shapes.append(f"{sh['d_model']}, {sh['n_layers']}, {sh['n_heads']}" if sh else "-")
        table.add_row(*cells, *([] if stacked else shapes[-1:]))
    if stacked:  # a narrow terminal wraps headers and intervals, never a value (first line of a cell)
        for column in table.columns:
            column.min_width = max((len(c.split("\n")[0]) for c in column._cells), default=1)
    console.print(table)
    if stacked:
        console.print("model shape (d_model, layers, heads): "
                      + "; ".join(f"{flops(pr['budget'])}: {sh}" for pr, sh in zip(props, shapes)))
    _print_resource_plans(doc["proposals"])
    _print_task_metrics(doc["proposals"])


def _print_task_metrics(proposals: list) -> None:
    rows = [(pr["budget"], task, m) for pr in proposals for task, m in (pr.get("task_metrics") or {}).items()]
    if not rows:
        return
    table = Table(title="predicted task accuracy per proposal (90% interval of the mean; of one evaluation)")
    for col in ("budget C (FLOPs)", "task", "accuracy", "interval", "prediction interval", f"task loss ({LOSS_UNIT})"):
        table.add_column(col, justify="right")

    def pair(iv) -> str:
        return "-" if not iv or iv[0] is None else f"[{iv[0]:.3f}, {iv[1]:.3f}]"

    for c, task, m in rows:
        loss = m.get("loss")
        table.add_row(flops(c), task, f"{m['acc']:.3f}", pair(m.get("interval")), pair(m.get("prediction_interval")),
                      "-" if loss is None else f"{loss:.3f}")
    console.print(table)
    for c, task, m in rows:
        for w in m.get("warnings") or []:
            console.print(f"  [yellow]task {task} at {flops(c)}[/]: {w}")


def _print_resource_plans(proposals: list) -> None:
    plans = [(pr["budget"], pr["resources"]) for pr in proposals if pr.get("resources")]
    if not plans:
        return
    table = Table(title=f"resource plan per proposal (device {plans[0][1].get('device')})")
    for col in ("budget C (FLOPs)", "workers", "ZeRO stage", "micro-batch (sequences)", "grad accum (steps)",
                "act. ckpt", "memory / device (GiB)", "device-hours"):
        table.add_column(col, justify="right")
    errors = []
    for c, r in plans:
        if r.get("error"):
            table.add_row(flops(c), *["-"] * 7)
            errors.append(f"{flops(c)}: {r['error']}")
            continue
        hours = r.get("device_hours")
        table.add_row(flops(c), str(r["workers"]), str(r["zero_stage"]), str(r["micro_batch"]), str(r["grad_accum"]),
                      "yes" if r["activation_checkpointing"] else "no",
                      f"{r['memory_gib']:.1f} / {r['memory']['capacity'] / 2**30:.1f}",
                      "-" if hours is None else f"{hours:.3g}")
    console.print(table)
    for e in errors:
        console.print(f"  [yellow]does not fit[/] {e}")
