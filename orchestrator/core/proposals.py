"""From finished trials to a fitted L(N, D) and compute-optimal proposals per target budget.

Pure: the runs come in as plain dicts (N, D, lr, batch, loss), the fit settings as keywords
(`orchestrator.config.fitting.fit_settings` reads them from the spec).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .cells import assign_cells, best_per_cell
from .family import family_sizes, shape_for
from .laws.chinchilla import budget_key
from .laws.selection import AutoFit, fit_auto, forms_of
from .laws.table import TableError


@dataclass
class SweepFit:
    """The law fitted to a sweep's finished trials and the proposals it gives."""

    fit: Optional[AutoFit]
    cells: list[dict[str, Any]]  # one per (N, D): the best loss over lr, batch (mean over seeds)
    proposals: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON document of the fit, the cells and the proposals."""
        return {
            "law": self.fit.to_json() if self.fit is not None else None,
            "cells": self.cells,
            "proposals": self.proposals,
            "warnings": self.warnings,
        }


def best_cells(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per nominal (N, D) cell, its best tuned run (`orchestrator.core.cells.best_per_cell`):
    L(N, D) describes tuned runs, one point per cell whatever batch rounding did to D.

    >>> runs = [{"N": 1e6, "D": 2e7, "lr": 1e-3, "batch": 256, "loss": 3.2},
    ...         {"N": 1e6, "D": 2e7, "lr": 2e-3, "batch": 256, "loss": 3.1}]
    >>> [(c["lr"], c["loss"]) for c in best_cells(runs)]
    [(0.002, 3.1)]
    """
    return best_per_cell(points)


def _nearest_cell(cells: list[dict[str, Any]], n: float, d: float) -> dict[str, Any]:
    return min(cells, key=lambda c: (math.log(c["N"] / n)) ** 2 + (math.log(c["D"] / d)) ** 2)


HparamRule = Callable[[float, float], tuple[Optional[float], Optional[float]]]


def learned_hparams(runs: Sequence[dict[str, Any]]) -> Optional[HparamRule]:
    """lr*(N, D) and batch*(D) laws fitted on a sweep's runs, as a proposal rule (None if none fits).

    `runs`: finished trials with their final `loss` and diverged ones (loss NaN; they bound lr from
    above). One bowl in (log lr, log batch) shared by every cell, its centre on the laws
    (`orchestrator.core.laws.hparam_surface`); else a bowl per (N, D) cell, else the Step-Law protocol
    (`orchestrator.core.laws.hparams.fit_hparams`). Runs are grouped by their nominal cell
    (`orchestrator.core.cells`), whatever whole-batch rounding did to their D.

    A planted bowl around lr* = 2 N^-0.3 and batch* = 512, 10x below the size it is asked about:

    >>> import math
    >>> runs = [{"N": n, "D": r * n, "lr": s * 2 / n**0.3, "batch": b,
    ...          "loss": 1.7 + 400 / n**0.34 + 410 / (r * n)**0.28 + 0.05 * math.log(s)**2 + 0.02 * math.log(b / 512)**2}
    ...         for n in (1e6, 3e6, 1e7) for r in (10, 40) for s in (0.25, 0.5, 1, 2, 4) for b in (256, 512, 1024)]
    >>> lr, batch = learned_hparams(runs)(1e8, 2e9)
    >>> round(lr / (2 / 1e8**0.3), 3), round(batch)
    (1.0, 512)
    >>> learned_hparams([]) is None
    True
    """
    return learned_hparams_or_why(runs)[0]


def learned_hparams_or_why(runs: Sequence[dict[str, Any]]) -> tuple[Optional["LearnedLaws"], Optional[str]]:
    """`learned_hparams(runs)` and, when it is None, why no estimator fitted (each one's reason).

    >>> learned_hparams_or_why([])
    (None, 'no finished or diverged run')
    """
    from .laws.hparam_surface import fit_surface
    from .laws.hparams import HparamError, fit_hparams

    if not runs:
        return None, "no finished or diverged run"
    cells = assign_cells(runs)
    cols = ([float(r["N"]) for r in runs], [c.D for c in cells],
            [float(r["lr"]) for r in runs], [float(r["batch"]) for r in runs],
            [float(r.get("loss", math.nan)) for r in runs])
    why = []
    for method in ("surface", "bowl", "steplaw"):
        try:
            hp = fit_surface(*cols) if method == "surface" else fit_hparams(*cols, method=method, bootstrap=0)
        except (HparamError, ValueError, np.linalg.LinAlgError) as exc:
            why.append(f"{method}: {exc}")
            continue
        return LearnedLaws(hp, hp.intervals if method == "surface" else None), None
    return None, "; ".join(why)


class LearnedLaws:
    """A fitted hyperparameter law as a proposal rule: (lr*, batch*) at (N, D), and their intervals
    where the fit has a covariance (the joint surface; per-cell fits here are not bootstrapped)."""

    def __init__(self, fit: Any, interval_rule: Optional["IntervalRule"] = None):
        self.fit = fit
        self.interval_rule = interval_rule  # the joint surface's intervals (None: a per-cell fit has none)

    def __call__(self, n: float, d: float) -> tuple[Optional[float], Optional[float]]:
        lr, batch = self.fit.predict(n, d)
        ok = all(math.isfinite(v) and v > 0 for v in (lr, batch))
        return (lr, batch) if ok else (None, None)

    def intervals(self, n: float, d: float, level: float) -> Optional[dict[str, dict[str, float]]]:
        return self.interval_rule(n, d, level) if self.interval_rule is not None else None


IntervalRule = Callable[[float, float, float], Optional[dict[str, dict[str, float]]]]  # (N, D, level) -> {lr, batch}
LossCorrection = Callable[[dict[str, Any]], float]  # a finished run -> the loss an L(N, D) fit counts for it


def _corrected(points: Sequence[dict[str, Any]], rule: Optional[LossCorrection]) -> tuple[list[dict[str, Any]], list[str]]:
    """The points with `rule`'s loss (the raw one kept as `loss_raw` where it changed), and a note."""
    if rule is None:
        return list(points), []
    out, moved = [], []
    for p in points:
        loss = float(rule(p))
        if loss != p["loss"] and math.isfinite(loss):
            out.append({**p, "loss": loss, "loss_raw": p["loss"]})
            moved.append(p["loss"] / loss - 1.0)
        else:
            out.append(p)
    note = ([f"{len(moved)} WSD branch loss(es) corrected to their cell's law point by the search's fitted bowl "
             f"(up to {max(moved):.3%})"] if moved else [])
    return out, note
ResourceRule = Callable[[float, float, float], dict[str, Any]]  # (N, D, batch) -> resource plan


BACKTEST_WARN = 0.02  # a held-out size predicted worse than this: say so beside the proposals


def _backtest_warnings(fit: AutoFit) -> list[str]:
    """A plain warning when the chosen form misses the runs its backtests held out by more than 2 %."""
    chosen = (fit.selection.get("candidates") or {}).get(fit.form) or {}
    out = []
    for key, what in (("largest_size", "the largest model size"), ("largest_compute_decade", "the largest compute decade")):
        bt = (chosen.get("backtests") or {}).get(key) or {}
        worst = bt.get("max_abs_rel_error")
        if worst is not None and worst > BACKTEST_WARN:
            out.append(f"fitted without {what}, the {fit.form} law misses it by up to {worst:.1%} "
                       f"({bt.get('max_distance_decades', 0.0):.2f} decades beyond its data): proposals further out "
                       "are at least that uncertain")
    return out


def fit_and_propose(points: Sequence[dict[str, Any]], targets: Sequence[float], *, law: str = "auto",
                    loss: str = "huber", bootstrap: int = 200, level: float = 0.9, seed: int = 0,
                    hparams: Optional[HparamRule] = None, resources: Optional[ResourceRule] = None,
                    diverged: Sequence[dict[str, Any]] = (), family: str = "gpt",
                    hparam_intervals: Optional[IntervalRule] = None,
                    task_rows: Optional[Sequence[dict[str, Any]]] = None,
                    corrected_loss: Optional[LossCorrection] = None) -> SweepFit:
    """Fit L(N, D) to the best cell runs and propose (N*, D*, lr, batch) for each target C.

    `law`: "auto" picks the form by how well it extrapolates (`orchestrator.core.laws.selection.fit_auto`:
    backtests by model size and compute, intervals that include the form's uncertainty); a form's
    name (`orchestrator.core.laws.candidates.FORMS`) fits that form alone, with the same backtests.

    lr and batch come from `hparams(N*, D*)` when given (the law-guided search's learned laws),
    else from lr*(N, D), batch*(D) laws fitted on the finished and `diverged` runs
    (`learned_hparams`) when the grid allows it, else from the observed cell nearest to
    (N*, D*) in log space (which, extrapolated far, can propose an lr that diverges).
    Their intervals (`intervals.lr`, `intervals.batch`: the laws' own uncertainty at (N*, D*))
    come from `hparam_intervals`, or from the learned laws' when they have one.
    With `task_rows` (a sweep's task metrics, `orchestrator.io.store.final_task_points`) each proposal
    also carries `task_metrics`: the accuracy predicted at its (N, D) per task, with intervals.

    `corrected_loss(point) -> loss`: the loss the fit counts for a finished run (the law-guided search's
    `HparamAdvice.corrected_loss`: its correction of its WSD branches, run off their cell's law point), so
    the final fit sees the points the search fitted; None: every run's own loss.

    Points planted on L = 1.7 + 400/N^0.34 + 410/D^0.28 (one lr and batch, so no law of them: the
    nearest cell's); the true optimum at C = 1e19 is N* = 2.23e8, L* = 2.9853:

    >>> pts = [{"N": n, "D": r * n, "lr": 1e-3, "batch": 256, "loss": 1.7 + 400 / n**0.34 + 410 / (r * n)**0.28}
    ...        for n in (1e6, 3e6, 1e7, 3e7) for r in (5, 10, 20, 40, 80)]
    >>> p = fit_and_propose(pts, [1e19], law="chinchilla", bootstrap=0).proposals[0]
    >>> f"{p['N']:.3g}", round(p["predicted_loss"], 4), p["hparams_from"]
    ('2.23e+08', 2.9853, 'nearest observed cell N=30000000.0, D=2400000000.0')
    """
    warnings: list[str] = []
    points, note = _corrected(points, corrected_loss)
    warnings.extend(note)
    cells = best_cells(points)
    if not cells:
        return SweepFit(None, [], [], ["no finished trial: nothing to fit"])
    N = np.array([c["N"] for c in cells], float)
    D = np.array([c["D"] for c in cells], float)
    L = np.array([c["loss"] for c in cells], float)
    try:
        fit = fit_auto(N, D, L, forms=forms_of(law), loss_fn=loss, bootstrap=bootstrap, seed=seed,
                       budgets=list(targets), level=level, n_min=float(family_sizes(family)[0]))
    except (TableError, ValueError) as exc:  # too few cells (trials diverged, a small grid): the sweep still ends
        return SweepFit(None, cells, [], [f"L(N, D) not fitted: {exc}"])
    warnings.extend(fit.warnings)
    warnings.extend(_backtest_warnings(fit))
    if hparams is None:  # only once there is a frontier to propose on
        learned = learned_hparams([*points, *diverged])
        hparams = learned
        if hparam_intervals is None and learned is not None:
            hparam_intervals = learned.intervals
    proposals = []
    budgets = fit.intervals.get("budgets", {})
    for c in targets:
        fr = fit.law.frontier([c])
        n_opt, d_opt, l_opt = (float(fr[k][0]) for k in ("N_opt", "D_opt", "loss_opt"))
        near = _nearest_cell(cells, n_opt, d_opt)
        lr, batch = hparams(n_opt, d_opt) if hparams is not None else (None, None)
        if lr is None or batch is None:
            lr, batch = near["lr"], near["batch"]
            source = f"nearest observed cell N={near['N']}, D={near['D']}"
        else:
            source = "learned laws lr*(N, D), batch*(D)"
        try:
            shape = shape_for(max(1, int(round(n_opt))), family).to_dict()
        except ValueError:  # beyond the model family's largest member
            shape = None
        iv = dict(budgets.get(budget_key(c), {}))
        if source.startswith("learned") and hparam_intervals is not None:
            iv.update(hparam_intervals(n_opt, d_opt, level) or {})
        proposals.append({
            "budget": float(c),
            "N": n_opt,
            "D": d_opt,
            "lr": lr,
            "batch": batch,
            "predicted_loss": l_opt,
            "tokens_per_param": d_opt / n_opt,
            "shape": shape,
            "hparams_from": source,
            "extrapolation_decades": math.log10(c / max(cell["C"] for cell in cells)),
            "intervals": {key: iv[key] for key in ("N_opt", "D_opt", "loss_opt", "tokens_per_param", "lr", "batch")
                          if key in iv},
            **({"resources": resources(n_opt, d_opt, batch)} if resources is not None else {}),
        })
    if task_rows:
        from .laws.downstream_proposals import attach_task_predictions

        proposals, task_warnings = attach_task_predictions(proposals, task_rows, bootstrap=bootstrap, level=level,
                                                           seed=seed)
        warnings.extend(task_warnings)
    return SweepFit(fit, cells, proposals, warnings)
