"""`scalesweep fit-downstream`: fit how a task's accuracy follows scale (through a loss) and predict it."""
from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from ...core.laws.table import TableError, read_table
from .app import app, fail, print_json

LOSS_COLUMNS = ("loss", "task_loss")


class LinkName(str, Enum):
    sigmoid = "sigmoid"
    exponential = "exponential"


class CheckpointWeights(str, Enum):
    auto = "auto"
    uniform = "uniform"
    tokens = "tokens"


@app.command("fit-downstream")
def fit_downstream_command(
    table: Path = typer.Argument(..., help="CSV/Parquet: N, D (or C), acc; optional loss or task_loss, chance, task, acc_stderr."),
    predict: Optional[Path] = typer.Option(None, "--predict", help="Table of N, D (or C) [+ task, loss] to predict."),
    link: LinkName = typer.Option(LinkName.sigmoid, "--link", help="Accuracy as a function of loss: sigmoid (Bhagia et al.) or exponential (Gadre et al.)."),
    chance: Optional[float] = typer.Option(None, "--chance", help="Chance accuracy (overrides the chance column); fitted when neither is given."),
    ceiling: float = typer.Option(1.0, "--ceiling", help="Highest reachable accuracy of the sigmoid."),
    fit_ceiling: bool = typer.Option(False, "--fit-ceiling", help="Fit the sigmoid's ceiling instead of fixing it."),
    min_tokens: float = typer.Option(0.0, "--min-D", help="Rows with D below this (e.g. warm-up checkpoints) stay out of the loss law; "
                                     "with a loss column they still feed the accuracy step, without one they are dropped."),
    checkpoint_weights: CheckpointWeights = typer.Option(
        CheckpointWeights.auto, "--checkpoint-weights",
        help="Row weights of the accuracy fit: tokens (D / the largest D of the row's model size: final "
             "checkpoints count most), uniform, or auto (tokens for a latent fit in N, D; else uniform)."),
    saturation_sigma: float = typer.Option(
        3.0, "--saturation-sigma",
        help="Latent fit in N, D: leave out rows this many standard errors below an earlier accuracy of their "
             "model size (small models saturating late in training); 0 = off."),
    bootstrap: int = typer.Option(200, "--bootstrap", help="Bootstrap resamples for intervals; 0 = none."),
    cluster: bool = typer.Option(False, "--cluster", help="Model sizes as the unit (checkpoints of one model are correlated): "
                                 "prediction intervals from the CR2 cluster-robust variance of the linearised fit "
                                 "(exact small-sample t), the parameters' from a bootstrap of whole sizes."),
    level: float = typer.Option(0.9, "--level", help="Level of the central intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Fit the two-step downstream law (loss from N, D or C; accuracy from loss) and predict with intervals.

    Without a loss column the loss is latent: accuracy is fitted as the link of an L(N, D)-shaped latent loss.
    With --predict, predictions come in OTHER's row order.
    """
    if bootstrap < 0:
        fail(f"--bootstrap must be >= 0, got {bootstrap}")
    if not (0.0 < level < 1.0):
        fail(f"--level must be in (0, 1), got {level}")
    if chance is not None and not (0.0 <= chance <= 1.0):
        fail(f"--chance must be in [0, 1], got {chance}")
    if not (saturation_sigma >= 0.0 and math.isfinite(saturation_sigma)):
        fail(f"--saturation-sigma must be >= 0 (0 = off), got {saturation_sigma}")
    try:
        doc = run(table, predict, link=link.value, chance=chance, ceiling=None if fit_ceiling else ceiling,
                  min_tokens=min_tokens, bootstrap=bootstrap, cluster=cluster, level=level, seed=seed,
                  checkpoint_weights=checkpoint_weights.value, saturation_sigma=saturation_sigma)
    except (TableError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        print_json(doc)
    else:
        _print_text(doc)


def _numeric(raw: dict[str, np.ndarray], name: str, where: str) -> np.ndarray:
    col = raw[name]
    try:
        col = np.asarray(col, dtype=np.float64)
    except (TypeError, ValueError):
        raise TableError(f"{where}: column {name}: not numeric") from None
    bad = ~np.isfinite(col)
    if bad.any():
        raise TableError(f"{where}: column {name}: {int(bad.sum())} NaN/inf or empty value(s) (first at row {int(np.argmax(bad))})")
    return col


def _scale_columns(raw: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray | None]:
    if "N" in raw and "D" in raw:
        return {"N": _numeric(raw, "N", where), "D": _numeric(raw, "D", where), "C": None}
    if "C" in raw:
        return {"N": None, "D": None, "C": _numeric(raw, "C", where)}
    raise TableError(f"{where}: needs columns N and D, or C; table has {', '.join(raw) or 'no columns'}")


def _loss_column(raw: dict[str, np.ndarray]) -> str | None:
    found = [c for c in LOSS_COLUMNS if c in raw]
    if len(found) > 1:
        raise TableError(f"both {' and '.join(found)} columns: keep one")
    return found[0] if found else None


def run(table: Path, predict: Path | None, *, link: str = "sigmoid", chance: float | None = None,
        ceiling: float | None = 1.0, min_tokens: float = 0.0, bootstrap: int = 200, cluster: bool = False,
        level: float = 0.9, seed: int = 0, checkpoint_weights: str = "auto",
        saturation_sigma: float | None = None) -> dict[str, Any]:
    """The command's JSON document (fits per task, predictions in OTHER's row order)."""
    from ...core.laws.downstream import fit_downstream, predictions_json
    from ...core.laws.result import jsonable

    where = str(table)
    raw = read_table(table)
    if "acc" not in raw:
        raise TableError(f"{where}: missing column acc; table has {', '.join(raw) or 'no columns'}")
    scale = _scale_columns(raw, where)
    acc = _numeric(raw, "acc", where)
    loss_name = _loss_column(raw)
    loss = _numeric(raw, loss_name, where) if loss_name else None
    stderr = _numeric(raw, "acc_stderr", where) if "acc_stderr" in raw else None
    chance_col = _numeric(raw, "chance", where) if ("chance" in raw and chance is None) else None
    tasks = np.asarray(raw["task"]).astype(str) if "task" in raw else np.full(len(acc), "")
    notes: list[str] = []
    untrained = (scale["D"] == 0) if scale["D"] is not None else np.zeros(len(acc), bool)
    if untrained.any():
        # A checkpoint that has seen no tokens lies on no L(N, D) law (the loss is infinite there).
        notes.append(f"{int(untrained.sum())} row(s) with D = 0 (untrained checkpoints) left out")
        keep = ~untrained
        scale = {k: (None if v is None else v[keep]) for k, v in scale.items()}
        acc, tasks = acc[keep], tasks[keep]
        loss = None if loss is None else loss[keep]
        stderr = None if stderr is None else stderr[keep]
        chance_col = None if chance_col is None else chance_col[keep]
    fits: dict[str, Any] = {}
    for task in dict.fromkeys(tasks.tolist()):
        m = tasks == task
        label = f"{where}" + (f" (task {task})" if task else "")
        task_chance = chance
        if chance_col is not None:
            ch = chance_col[m]
            if np.ptp(ch) > 1e-9:
                raise TableError(f"{label}: column chance varies within the task ({ch.min():g} .. {ch.max():g})")
            task_chance = float(ch[0])
        sub = {k: (None if v is None else v[m]) for k, v in scale.items()}
        rows = None
        if min_tokens > 0:
            if sub["D"] is None:
                raise TableError(f"{label}: --min-D needs a D column")
            rows = sub["D"] >= min_tokens
        try:
            fits[task] = fit_downstream(sub["N"], sub["D"], acc[m], C=sub["C"], loss=None if loss is None else loss[m],
                                        chance=task_chance, ceiling=ceiling, link=link, loss_rows=rows,
                                        bootstrap=bootstrap, cluster=cluster, seed=seed, level=level,
                                        acc_stderr=None if stderr is None else stderr[m],
                                        checkpoint_weights=checkpoint_weights, saturation_sigma=saturation_sigma)
        except ValueError as exc:
            raise TableError(f"{label}: {exc}") from None

    predictions: list[dict[str, Any]] = []
    if predict is not None:
        pwhere = str(predict)
        other = read_table(predict)
        pscale = _scale_columns(other, pwhere)
        first = next(iter(fits.values()))
        if first.scale == "N,D" and pscale["N"] is None:
            raise TableError(f"{pwhere}: the fit is in N and D; this table has only C")
        if first.scale == "C" and pscale["C"] is None:
            raise TableError(f"{pwhere}: the fit is in compute C; this table has no C column")
        if first.scale == "N,D":
            pscale["C"] = None
        for name in ("N", "D", "C"):
            col = pscale[name]
            if col is not None and np.any(col <= 0):
                raise TableError(f"{pwhere}: column {name}: non-positive value at row {int(np.argmax(col <= 0))}")
        ploss_name = _loss_column(other)
        ploss = _numeric(other, ploss_name, pwhere) if ploss_name else None
        n = len(next(v for v in pscale.values() if v is not None))
        if "task" in other:
            ptasks = np.asarray(other["task"]).astype(str)
        elif len(fits) == 1:
            ptasks = np.full(n, next(iter(fits)))
        else:
            raise TableError(f"{pwhere}: {where} has several tasks ({', '.join(fits)}): add a task column")
        unknown = sorted(set(ptasks.tolist()) - set(fits))
        if unknown:
            raise TableError(f"{pwhere}: task(s) {', '.join(unknown)} not in {where} (has {', '.join(fits) or 'none'})")
        predictions = [None] * n
        for task, fit in fits.items():
            idx = np.flatnonzero(ptasks == task)
            if not len(idx):
                continue
            use_loss = ploss[idx] if (ploss is not None and fit.mode == "two-step") else None
            rows = predictions_json(fit, *(None if pscale[k] is None else pscale[k][idx] for k in ("N", "D")),
                                    C=None if pscale["C"] is None else pscale["C"][idx], loss=use_loss)
            for i, row in zip(idx, rows):
                if task:
                    row["task"] = task
                row["loss_source"] = "given" if use_loss is not None else ("loss law" if fit.mode == "two-step" else "latent")
                predictions[int(i)] = row
            Ns = None if pscale["N"] is None else pscale["N"][idx]
            fit.result.warnings.extend(fit.prediction_warnings(N=Ns))

    docs = {task: fit.to_json() for task, fit in fits.items()}
    if list(docs) == [""]:
        doc = docs[""]
    else:
        laws = {d["law"] for d in docs.values()}
        doc = {"law": laws.pop() if len(laws) == 1 else sorted(laws), "tasks": docs,
               "warnings": [f"{t}: {w}" for t, d in docs.items() for w in d["warnings"]]}
    doc["warnings"] = notes + list(doc.get("warnings") or [])
    doc["predictions"] = predictions
    return jsonable(doc)


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if pct:
        return f"{100 * x:.1f}"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _print_text(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    docs = doc.get("tasks") or {"": doc}
    for task, d in docs.items():
        extra = d.get("extra", {})
        console.print(f"[bold]{d['law']}[/bold]{' — ' + task if task else ''}: {d['n_points']} points, "
                      f"rmse {_fmt(100 * extra.get('rmse_acc', math.nan))} accuracy points")
        tab = Table("parameter", "estimate", "low", "high")
        for name, est in d["params"].items():
            iv = d.get("intervals", {}).get(name, {})
            tab.add_row(name, _fmt(est), _fmt(iv.get("low")), _fmt(iv.get("high")))
        console.print(tab)
    if doc.get("predictions"):
        pt = Table("task", "N", "D", "C", "loss", "acc %", "low %", "high %", title="predictions")
        for p in doc["predictions"]:
            pt.add_row(p.get("task", ""), _fmt(p.get("N")), _fmt(p.get("D")), _fmt(p.get("C")), _fmt(p.get("loss")),
                       _fmt(p["acc"], True), _fmt(p["interval"][0], True), _fmt(p["interval"][1], True))
        console.print(pt)
    for w in doc.get("warnings") or []:
        console.print(f"[yellow]warning:[/yellow] {w}")
