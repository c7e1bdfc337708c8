"""How the CLI prints a fitted law and its proposals (`scalesweep run|resume|propose`): the law with its
intervals and backtests, the proposals table, and the resource plans and task accuracy per proposal."""
from __future__ import annotations

from rich.table import Table

from .output import LazyConsole, flops, integer, interval, si

console = LazyConsole()  # the terminal's width, or never cut when piped (orchestrator/app/cli/output.py)

LOSS_UNIT = "nats/token"

FORMULAS = {
    "chinchilla": "E + A/N^alpha + B/D^beta",
    "chinchilla-fixed-E": "E + A/N^alpha + B/D^beta, E held",
    "equal-exponent": "E + A/N^alpha + B/D^alpha",
    "equal-exponent-fixed-E": "E + A/N^alpha + B/D^alpha, E held",
    "kaplan": "((Nc/N)^(alphaN/alphaD) + Dc/D)^alphaD",
    "kaplan-E": "E + ((Nc/N)^(alphaN/alphaD) + Dc/D)^alphaD",
}


def print_fit(doc: dict) -> None:
    """Print a fit document (`SweepFit.to_json()`): the law, its backtests and warnings, the proposals."""
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
