"""The end of a sweep: fit the law on the finished trials, write fit.json and the summary to the sweep
directory and MLflow (`summarise`, what `run_sweep` returns); the records a stopped or failed sweep leaves
for its resume (the parent run's id in sweep.json, the cached search)."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..config.spec import SweepSpec
from ..core.laws.result import jsonable
from ..core.planning.protocol import HparamAdvice
from ..core.proposals import SweepFit
from ..io.store import ObservationStore
from .capacity import trial_slots
from .query import SweepData, sweep_fit

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    """What a finished sweep returns."""

    sweep_dir: Path
    statuses: dict[str, int]
    fit: SweepFit
    wall_s: float
    train_s: float  # seconds inside training steps in this run, summed over trials (sweep_summary.train_seconds)
    mlflow_parent_run: Optional[str]
    slots: int = 1  # concurrent trial slots the summary measured useful work against (sweep_summary.useful_work_fraction)


def summarise(spec: SweepSpec, store: ObservationStore, tracker, parent: Optional[str], t0: float,
              decisions: Optional[list[dict[str, Any]]] = None, advice: Optional[HparamAdvice] = None) -> SweepOutcome:
    """Fit the law on the finished trials, write fit + proposals to the sweep dir and MLflow; `advice`:
    the planner's learned lr/batch laws (a law/transfer search's), used as they are."""
    data = SweepData.read(store)  # the query path `scalesweep propose` and the API answer through too
    points, task_rows = data.points, data.task_rows  # task rows: empty unless the spec named eval.tasks
    fit = sweep_fit(data, spec, spec.budget.targets, advice=advice)
    sweep_dir = spec.sweep_dir()
    doc = jsonable(fit.to_json())
    task_doc, task_plot_data = None, {}
    if task_rows:
        from .task_summary import summarise_tasks

        task_doc, task_plot_data = summarise_tasks(task_rows, fit, bootstrap=spec.fit.bootstrap, level=spec.fit.level,
                                                   seed=spec.seed, targets=spec.budget.targets)
        doc["downstream"] = task_doc
    (sweep_dir / "fit.json").write_text(json.dumps(doc, indent=2, allow_nan=False))
    from .sweep_summary import (law_metrics, proposals_table, summary_markdown, train_seconds,
                                useful_work_fraction, warnings)

    trials = store.trials()
    statuses: dict[str, int] = {}
    for rec in trials.values():
        statuses[rec["status"]] = statuses.get(rec["status"], 0) + 1
    wall = time.monotonic() - t0
    # this run's training seconds only: a resumed sweep's earlier runs are not in `wall`
    obs = store.observations().select(["trial_id", "wall_time", "step_time_s"]).to_pylist()
    train_s = train_seconds(obs, since=time.time() - wall, measured=spec.trainer.backend != "simulated")
    slots = trial_slots(spec)
    refit = _refit_step(sweep_dir, doc)
    if tracker is not None:
        fraction = useful_work_fraction(train_s, wall, slots)
        work = {"trials_finished": statuses.get("finished", 0), "wall_s": wall, "train_s": train_s,
                "slots": slots, "useful_work_fraction": fraction}
        hparams = _hparam_laws(data, spec.fit.level)
        metrics = {**{k: v for k, v in work.items() if v is not None}, **law_metrics(doc, hparams)}
        ws = warnings(doc)
        tags = {"scalesweep.law.form": (doc.get("law") or {}).get("form") or "none",
                "scalesweep.law.reason": ((doc.get("law") or {}).get("selection") or {}).get("reason", ""),
                "scalesweep.n_warnings": len(ws), "scalesweep.warnings": "\n".join(ws) or "none"}
        # no trial finished (all diverged, say): nothing to draw; the fit's warnings say why
        from .plots.evidence import sweep_figures

        figures = sweep_figures(spec, store, fit, points) if points else {}
        artifacts = {"fit": doc, "proposals": doc["proposals"], "decisions": jsonable(decisions or [])}
        if task_doc is not None:
            from .task_summary import task_plot

            artifacts["downstream"] = task_doc
            figure = task_plot(task_plot_data, level=spec.fit.level)
            if figure is not None:
                figures["accuracy_vs_compute"] = figure
        tracker.log_sweep_results({}, metrics, artifacts, figures, tables={"proposals": proposals_table(doc)},
                                  texts={"summary.md": summary_markdown(spec.name, doc, statuses, work, hparams)},
                                  tags=tags, step=refit)
    return SweepOutcome(sweep_dir, statuses, fit, wall, train_s, parent, slots)


def _hparam_laws(data: SweepData, level: float) -> Optional[dict[str, Any]]:
    """lr*(N, D) and batch*(D) fitted on the sweep's finished and diverged runs (`query.hparam_laws`, as
    the API's /laws, the report and the bowls figure give them); None when they cannot be fitted."""
    from .query import hparam_laws

    try:
        return hparam_laws([*data.points, *data.diverged], level)[0]
    except Exception:  # noqa: BLE001 -- a side result: it must not lose the sweep's summary
        log.warning("lr*(N, D), batch*(D) not fitted for the sweep's summary", exc_info=True)
        return None


FIT_HISTORY = "fit_history.jsonl"  # one line per refit of this sweep (its MLflow step), across resumes


def _refit_step(sweep_dir: Path, doc: dict[str, Any]) -> int:
    """This refit's number (0, 1, ...), counted over every run of the sweep; records the refit."""
    path = sweep_dir / FIT_HISTORY
    try:
        step = sum(1 for _ in path.open()) if path.exists() else 0
        law = doc.get("law") or {}
        with path.open("a") as fh:
            fh.write(json.dumps({"step": step, "time": time.time(), "form": law.get("form"),
                                 "params": law.get("params"), "n_cells": law.get("n_points")},
                                allow_nan=False, default=str) + "\n")
    except (OSError, ValueError):  # an unwritable history must not lose the fit: count from 0
        return 0
    return step


def cache_search(stash: dict[str, Any]) -> None:
    """A law/transfer sweep that stopped or failed: cache the search a resume rebuilds, so the first query
    does not replay it (`query.cache_search_of_stopped_sweep`; a finished sweep caches its live search)."""
    store = stash.get("store")
    if store is None:
        return
    try:
        from .query import cache_search_of_stopped_sweep

        cache_search_of_stopped_sweep(store)
    except Exception:  # noqa: BLE001 -- only a cache: the first query replays instead
        log.warning("could not cache the sweep's search (the first query replays it)", exc_info=True)


def remember_parent(sweep_dir: Path, tracker) -> Optional[str]:
    """Record the sweep's MLflow parent run in sweep.json, so that `scalesweep resume` reuses it; its id."""
    run_id = tracker.run_id(None)
    state_file = sweep_dir / "sweep.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if run_id and state.get("mlflow_parent_run") != run_id:
        state_file.write_text(json.dumps({**state, "mlflow_parent_run": run_id}))
    return run_id

