"""Attach predicted task metrics to proposals: one downstream fit per task, evaluated at each (N, D).

A proposal (``orchestrator.core.proposals.fit_and_propose``) is a dict with at least ``N`` and ``D``;
task rows are the task metrics a sweep measured, one dict per evaluation:
``{"task", "N", "D", "acc"}`` plus optional ``"loss"`` (or ``"task_loss"``: the task's NLL of the
correct continuation; every row of a task must have it for the two-step fit, else the latent fit
is used), ``"chance"`` and ``"acc_stderr"``.

>>> import numpy as np
>>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
>>> acc = 0.25 + 0.75 / (1 + np.exp(3.0 * (1.7 + 400 / N**0.34 + 400 / D**0.28 - 2.6)))
>>> rows = [{"task": "cloze", "N": n, "D": d, "acc": a, "chance": 0.25} for n, d, a in zip(N, D, acc)]
>>> out, warnings = attach_task_predictions([{"N": 1e9, "D": 2e10}], rows, bootstrap=0)
>>> sorted(out[0]["task_metrics"]["cloze"])
['acc', 'interval', 'law', 'loss', 'prediction_interval', 'warnings']
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .downstream import DownstreamFit, fit_downstream
from .result import jsonable

LOSS_KEYS = ("loss", "task_loss")


def fit_tasks(task_rows: Sequence[dict[str, Any]], *, link: str = "sigmoid", bootstrap: int = 200,
              cluster: bool = True, level: float = 0.9, min_D: float | None = None,
              seed: int = 0) -> tuple[dict[str, DownstreamFit], list[str]]:
    """One downstream fit per task of ``task_rows``; tasks that cannot be fitted become warnings.

    ``cluster`` (default True) resamples whole model sizes: a sweep's evaluations of one model at
    several checkpoints are not independent. ``min_D`` keeps rows with fewer tokens (warm-up) out
    of the loss law.

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> acc = 0.25 + 0.75 / (1 + np.exp(3.0 * (1.7 + 400 / N**0.34 + 400 / D**0.28 - 2.6)))
    >>> rows = [{"task": "cloze", "N": n, "D": d, "acc": a, "chance": 0.25} for n, d, a in zip(N, D, acc)]
    >>> fits, warnings = fit_tasks(rows + [{"task": "qa", "N": 1e7, "D": 1e9, "acc": 0.3}], bootstrap=0)
    >>> sorted(fits), fits["cloze"].law, warnings[0].split(":")[0]
    (['cloze'], 'latent-sigmoid', 'task qa')
    """
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in task_rows:
        by_task.setdefault(str(row.get("task", "")), []).append(row)
    fits: dict[str, DownstreamFit] = {}
    warnings: list[str] = []
    for task, rows in by_task.items():
        loss_key = next((k for k in LOSS_KEYS if all(r.get(k) is not None for r in rows)), None)
        chances = {r.get("chance") for r in rows} - {None}
        try:
            if len(chances) > 1:
                raise ValueError(f"chance varies between rows ({', '.join(map(str, sorted(chances)))})")
            N = np.array([r["N"] for r in rows], float)
            D = np.array([r["D"] for r in rows], float)
            stderr = [r.get("acc_stderr") for r in rows]
            fits[task] = fit_downstream(
                N, D, np.array([r["acc"] for r in rows], float),
                loss=None if loss_key is None else np.array([r[loss_key] for r in rows], float),
                chance=chances.pop() if chances else None, link=link,
                loss_rows=None if min_D is None else D >= min_D,
                bootstrap=bootstrap, cluster=cluster, level=level, seed=seed,
                acc_stderr=None if any(s is None for s in stderr) else np.array(stderr, float))
        except (KeyError, TypeError, ValueError) as exc:
            warnings.append(f"task {task}: not fitted: {exc}")
    return fits, warnings


def attach_task_predictions(proposals: Sequence[dict[str, Any]], task_rows: Sequence[dict[str, Any]],
                            **kwargs: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Copies of ``proposals``, each with ``task_metrics``: {task: {acc, interval, prediction_interval,
    loss, law, warnings}} predicted at the proposal's (N, D); plus fit warnings (keyword arguments
    go to :func:`fit_tasks`).

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> acc = 0.25 + 0.75 / (1 + np.exp(3.0 * (1.7 + 400 / N**0.34 + 400 / D**0.28 - 2.6)))
    >>> rows = [{"task": "cloze", "N": n, "D": d, "acc": a, "chance": 0.25} for n, d, a in zip(N, D, acc)]
    >>> out, _ = attach_task_predictions([{"N": 1e9, "D": 2e10, "C": 1.2e20}], rows, bootstrap=0)
    >>> out[0]["C"], sorted(out[0]["task_metrics"]["cloze"])  # the proposal, with each task's prediction
    (1.2e+20, ['acc', 'interval', 'law', 'loss', 'prediction_interval', 'warnings'])
    """
    fits, warnings = fit_tasks(task_rows, **kwargs)
    for task, fit in fits.items():
        warnings.extend(f"task {task}: {w}" for w in fit.warnings)
    out = []
    for prop in proposals:
        metrics: dict[str, Any] = {}
        for task, fit in fits.items():
            pred = fit.predict([prop["N"]], [prop["D"]])
            metrics[task] = jsonable({
                "acc": pred["acc"][0],
                "interval": [pred["low"][0], pred["high"][0]],
                "prediction_interval": [pred["pred_low"][0], pred["pred_high"][0]],
                "loss": pred["loss"][0],
                "law": fit.law,
                "warnings": fit.prediction_warnings(N=[prop["N"]]),
            })
        out.append({**prop, "task_metrics": metrics})
    return out, warnings
