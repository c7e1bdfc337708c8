"""A sweep's downstream results for MLflow and fit.json: the per-task fits, a backtest by model size,
and the data of the accuracy-vs-compute plot (`orchestrator.app.plots.accuracy_vs_compute`).

Input: the sweep's task rows (`orchestrator.io.store.final_task_points`) and its L(N, D) fit with
proposals (`orchestrator.core.proposals.SweepFit`, whose proposals already carry `task_metrics`).

>>> import numpy as np
>>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 3); D = np.tile([1e9, 3e9, 1e10], 4)
>>> L = 1.7 + 400 / N**0.34 + 400 / D**0.28
>>> acc = 0.25 + 0.75 / (1 + np.exp(3.0 * (L - 2.6)))
>>> rows = [{"task": "cloze", "N": n, "D": d, "acc": a, "task_loss": l, "chance": 0.25}
...         for n, d, a, l in zip(N, D, acc, L)]
>>> doc, plot = summarise_tasks(rows, None, bootstrap=0)
>>> doc["tasks"]["cloze"]["law"], len(plot["cloze"]["heldout"]), plot["cloze"]["chance"]
('two-step-sigmoid', 1, 0.25)
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..core.laws.downstream import backtest_by_size
from ..core.laws.downstream_proposals import LOSS_KEYS, fit_tasks
from ..core.laws.result import jsonable
from ..core.proposals import SweepFit


def summarise_tasks(task_rows: Sequence[dict[str, Any]], sweep_fit: Optional[SweepFit] = None, *, bootstrap: int = 200,
                    level: float = 0.9, seed: int = 0,
                    targets: Sequence[float] = ()) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(JSON document, plot data per task). The document: ``{"tasks": {task: fit document +
    "backtest_by_size" + "rows"}, "warnings", "level"}``; the backtest leaves the largest model size
    out and predicts its final row (or says why it could not)."""
    fits, warnings = fit_tasks(task_rows, bootstrap=bootstrap, level=level, seed=seed)
    doc: dict[str, Any] = {"tasks": {}, "warnings": list(warnings), "level": level}
    plot: dict[str, dict[str, Any]] = {}
    law = sweep_fit.fit.law if sweep_fit is not None and sweep_fit.fit is not None else None
    proposals = list(sweep_fit.proposals) if sweep_fit is not None else []
    for task, fit in fits.items():
        rows = [r for r in task_rows if str(r.get("task", "")) == task]
        N = np.array([r["N"] for r in rows], float)
        D = np.array([r["D"] for r in rows], float)
        acc = np.array([r["acc"] for r in rows], float)
        loss_key = next((k for k in LOSS_KEYS if all(r.get(k) is not None for r in rows)), None)
        loss = None if loss_key is None else np.array([r[loss_key] for r in rows], float)
        chance = rows[0].get("chance")
        try:
            bt = backtest_by_size(N, D, acc, loss=loss, chance=chance, bootstrap=bootstrap, cluster=True,
                                  level=level, seed=seed)
        except (ValueError, ArithmeticError) as exc:  # too few sizes or rows for a fit without the largest
            bt = {"error": str(exc)}
        doc["tasks"][task] = jsonable({**fit.to_json(), "backtest_by_size": bt, "rows": rows})
        C = 6.0 * N * D
        entry: dict[str, Any] = {"runs": {"C": C, "acc": acc, "N": N}, "chance": chance}
        sizes = np.unique(N)
        d_grid = np.geomspace(D.min() / 2, D.max() * 2, 40)
        entry["curves"] = {float(n): {"C": 6.0 * n * d_grid, "acc": fit.predict(np.full_like(d_grid, n), d_grid)["acc"]}
                           for n in sizes}
        if law is not None:
            cs = [*C, *targets]
            grid = np.geomspace(min(cs) / 2, max(cs) * 2, 50)
            try:
                fr = law.frontier(grid)
                pred = fit.predict(fr["N_opt"], fr["D_opt"])
                entry["curve"] = {"C": grid, "acc": pred["acc"], "low": pred["low"], "high": pred["high"]}
            except (AttributeError, KeyError, ValueError):
                pass  # a law without a frontier: the per-size curves and the points still tell the story
        if "points" in bt:
            entry["heldout"] = [{"C": 6.0 * p["N"] * p["D"], "acc": p["observed"], "predicted": p["predicted"],
                                 "low": p["low"], "high": p["high"]} for p in bt["points"]]
        entry["proposals"] = [{"C": p["budget"], "acc": m["acc"], "interval": m["interval"]}
                              for p in proposals if (m := (p.get("task_metrics") or {}).get(task))]
        plot[task] = entry
    return doc, plot


def task_plot(plot: dict[str, dict[str, Any]], level: Optional[float] = None):
    """The accuracy-vs-compute figure of `summarise_tasks`'s plot data (None when no task was fitted)."""
    if not plot:
        return None
    from .plots import accuracy_vs_compute

    return accuracy_vs_compute(plot, level=level)
