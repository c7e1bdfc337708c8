"""Commands that run and query sweeps: run, status, propose."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional
import typer
from rich.console import Console
from rich.table import Table

from .app import app, fail, print_json

console = Console()


def _load(spec_path: Path):
    from ..planner import check_resources
    from ..spec import SpecError, load_spec

    try:
        spec = load_spec(spec_path)
        check_resources(spec)  # the default CPU device is this machine: checked here, before launch
        return spec
    except SpecError as exc:
        fail(str(exc))


def _sweep_dir(path: Path) -> Path:
    if not (path / "store").is_dir():
        fail(f"{path}: not a sweep directory (no store/ inside)")
    return path


@app.command("validate")
def validate(spec: Path = typer.Argument(..., help="sweep spec (YAML)")) -> None:
    """Check a spec and print the trials it would run; starts nothing."""
    from ..planner import GridPlanner

    s = _load(spec)
    grid = GridPlanner(s).runnable()
    what = ("runs them all, cheapest first" if s.search.strategy == "grid"
            else "is searched law-guided: only the trials that teach most about the target optimum run")
    console.print(f"[bold]{s.name}[/]: {len(grid)} trial(s) in the grid ({sum(t.flops for t in grid):.3g} FLOPs "
                  f"within the budget); the sweep {what}. Sweep dir {s.sweep_dir()}")


@app.command("run")
def run(
    spec: Path = typer.Argument(..., help="sweep spec (YAML)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no live display"),
) -> None:
    """Run a sweep on a local Ray cluster (or the one at RAY_ADDRESS), then fit and propose."""
    _run_and_print(_load(spec), str(spec), no_progress)


def _run_and_print(s, spec_path: Optional[str], no_progress: bool) -> None:
    from ..controller import run_sweep
    from ..store import StoreError

    try:
        outcome = run_sweep(s, spec_path, show_progress=not no_progress)
    except StoreError as exc:  # disk full, permissions: nothing half-written; `resume` continues
        fail(f"{exc}\nfix it, then continue with: scalesweep resume {s.sweep_dir()}", code=1)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(outcome.statuses.items()))
    console.print(f"\n[bold]sweep {s.name} done[/] in {outcome.wall_s:.0f}s: {counts}")
    _print_fit(outcome.fit.to_json())
    console.print(f"\nsweep directory: {outcome.sweep_dir}")
    console.print(f"open the MLflow UI:  mlflow ui --backend-store-uri {s.tracking_uri()}")


@app.command("resume")
def resume(
    sweep_dir: Path = typer.Argument(..., help="sweep directory of an interrupted sweep"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no live display"),
) -> None:
    """Finish an interrupted sweep: trials that finished (or diverged) are not rerun."""
    spec_path = _sweep_dir(sweep_dir) / "spec.yaml"
    if not spec_path.is_file():
        fail(f"{sweep_dir}: no spec.yaml inside; was this sweep started by `scalesweep run`?")
    s = _load(spec_path)
    if s.sweep_dir() != sweep_dir.resolve():
        # the recorded spec points elsewhere (the directory was moved): follow the directory
        s = s.model_copy(update={"output_dir": str(sweep_dir.resolve())})
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

    from ..store import ObservationStore

    if not sweep_dir.exists() and (address or os.environ.get("SCALESWEEP_ADDRESS") or os.environ.get("RAY_ADDRESS")):
        from .job_commands import job_status

        job_status(str(sweep_dir), address, as_json)
        return
    if not sweep_dir.exists():
        fail(f"{sweep_dir}: no such sweep directory (for a submitted sweep's job id, pass --address)")
    store = ObservationStore(_sweep_dir(sweep_dir))
    trials = store.trials()
    spent = {tid: row["flops"] for tid, row in store.last_reports(finite="flops").items()}
    rows = []
    for tid, rec in sorted(trials.items(), key=lambda kv: (kv[1]["config"] or {}).get("flops", 0)):
        cfg = rec["config"] or {}
        rows.append({"trial_id": tid, "status": rec["status"], "N": cfg.get("N"), "D": cfg.get("D"),
                     "lr": cfg.get("lr"), "batch": cfg.get("batch"), "planned_flops": cfg.get("flops"),
                     "flops_spent": spent.get(tid, 0.0), "summary": rec["summary"]})
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    doc = {"sweep_dir": str(sweep_dir.resolve()), "trials": rows, "counts": counts,
           "flops_spent": sum(spent.values())}
    if as_json:
        print_json(doc)
        return
    table = Table(title=f"{sweep_dir}: {', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}")
    for col in ("trial", "status", "N", "D", "lr", "batch", "FLOPs spent / planned", "final loss"):
        table.add_column(col)
    for r in rows:
        loss = (r["summary"] or {}).get("final_eval_loss")
        table.add_row(r["trial_id"], r["status"], f"{r['N']:,}" if r["N"] else "-", f"{r['D']:,}" if r["D"] else "-",
                      f"{r['lr']:.3g}" if r["lr"] else "-", str(r["batch"] or "-"),
                      f"{r['flops_spent']:.3g} / {r['planned_flops'] or 0:.3g}", f"{loss:.4f}" if loss else "-")
    console.print(table)
    console.print(f"compute used: {doc['flops_spent']:.4g} FLOPs")


@app.command("propose")
def propose(
    sweep_dir: Path = typer.Argument(..., help="sweep directory"),
    budget: list[float] = typer.Option(..., "--budget", help="target compute budget C in FLOPs (repeatable)"),
    bootstrap: int = typer.Option(200, help="bootstrap resamples for the intervals (0 = none)"),
    as_json: bool = typer.Option(False, "--json", help="JSON output"),
) -> None:
    """Compute-optimal (N, D, lr, batch) and predicted loss for each budget, from the sweep's trials."""
    from ..proposals import fit_and_propose
    from ..store import ObservationStore, diverged_configs, final_points, final_task_points

    bad = [c for c in budget if not (c > 0 and math.isfinite(c))]
    if bad:
        fail(f"--budget: must be positive and finite, got {bad[0]!r}")
    store = ObservationStore(_sweep_dir(sweep_dir))
    points = final_points(store)
    if not points:
        fail(f"{sweep_dir}: no finished trial yet; nothing to fit", code=1)
    spec_path = sweep_dir / "spec.yaml"
    resources, family = None, "gpt"
    if spec_path.is_file():  # each proposal carries its resource plan on the spec's device
        from ..planner import proposal_resources
        from ..spec import SpecError, load_spec

        try:
            spec = load_spec(spec_path)
            resources, family = proposal_resources(spec), spec.model.family
        except SpecError as exc:
            typer.echo(f"warning: no resource plans: {exc}", err=True)
    fit = fit_and_propose(points, budget, bootstrap=bootstrap, resources=resources, diverged=diverged_configs(store),
                          family=family, task_rows=final_task_points(store, points))
    if fit.fit is None:
        fail("; ".join(fit.warnings), code=1)
    if as_json:
        from ..laws.result import jsonable

        print_json(jsonable(fit.proposals))
        return
    _print_fit(fit.to_json())


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

    console.print(f"\n[bold]fitted L(N, D) = E + A/N^alpha + B/D^beta[/] on {law['n_points']} (N, D) cells "
                  f"(objective {law['objective']:.4g}):")
    for name in ("E", "A", "B", "alpha", "beta"):
        console.print(f"  {name:>5} = {p[name]:.4g}{band(name)}")
    for w in law.get("warnings", []):
        console.print(f"  [yellow]warning[/]: {w}")
    if not doc.get("proposals"):
        return
    table = Table(title="compute-optimal proposals (90% intervals)")
    for col in ("budget C", "N*", "D*", "tokens/param", "lr", "batch", "shape (d, L, h)", "predicted loss"):
        table.add_column(col, justify="right")
    for pr in doc["proposals"]:
        ivs = pr.get("intervals", {})

        def fmt(key: str, val: float) -> str:
            i = ivs.get(key) or {}
            return f"{val:.3g}" + (f" [{i['low']:.3g}, {i['high']:.3g}]" if i.get("low") is not None else "")

        sh = pr["shape"] or {"d_model": "-", "n_layers": "-", "n_heads": "-"}
        table.add_row(f"{pr['budget']:.3g}", fmt("N_opt", pr["N"]), fmt("D_opt", pr["D"]),
                      f"{pr['tokens_per_param']:.1f}", fmt("lr", pr["lr"]), fmt("batch", pr["batch"]),
                      f"{sh['d_model']}, {sh['n_layers']}, {sh['n_heads']}", fmt("loss_opt", pr["predicted_loss"]))
    console.print(table)
    _print_resource_plans(doc["proposals"])
    _print_task_metrics(doc["proposals"])


def _print_task_metrics(proposals: list) -> None:
    rows = [(pr["budget"], task, m) for pr in proposals for task, m in (pr.get("task_metrics") or {}).items()]
    if not rows:
        return
    table = Table(title="predicted task accuracy per proposal (90% interval of the mean; of one evaluation)")
    for col in ("budget C", "task", "accuracy", "interval", "prediction interval", "task loss"):
        table.add_column(col, justify="right")

    def pair(iv) -> str:
        return "-" if not iv or iv[0] is None else f"[{iv[0]:.3f}, {iv[1]:.3f}]"

    for c, task, m in rows:
        loss = m.get("loss")
        table.add_row(f"{c:.3g}", task, f"{m['acc']:.3f}", pair(m.get("interval")), pair(m.get("prediction_interval")),
                      "-" if loss is None else f"{loss:.3f}")
    console.print(table)
    for c, task, m in rows:
        for w in m.get("warnings") or []:
            console.print(f"  [yellow]task {task} at {c:.3g}[/]: {w}")


def _print_resource_plans(proposals: list) -> None:
    plans = [(pr["budget"], pr["resources"]) for pr in proposals if pr.get("resources")]
    if not plans:
        return
    table = Table(title=f"resource plan per proposal (device {plans[0][1].get('device')})")
    for col in ("budget C", "workers", "ZeRO", "micro-batch", "grad accum", "act. ckpt", "memory/device GiB",
                "device-hours"):
        table.add_column(col, justify="right")
    errors = []
    for c, r in plans:
        if r.get("error"):
            table.add_row(f"{c:.3g}", *["-"] * 7)
            errors.append(f"{c:.3g}: {r['error']}")
            continue
        hours = r.get("device_hours")
        table.add_row(f"{c:.3g}", str(r["workers"]), str(r["zero_stage"]), str(r["micro_batch"]), str(r["grad_accum"]),
                      "yes" if r["activation_checkpointing"] else "no",
                      f"{r['memory_gib']:.1f} / {r['memory']['capacity'] / 2**30:.1f}",
                      "-" if hours is None else f"{hours:.3g}")
    console.print(table)
    for e in errors:
        console.print(f"  [yellow]does not fit[/] {e}")
