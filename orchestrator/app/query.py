"""One query path over a sweep: its status, its fit, its proposals and its laws.

The controller's summary (fit.json), `scalesweep status|propose` and the HTTP API all answer
through these functions, with the spec's fit settings (`config.fitting.fit_settings`), so the same
store and spec give the same answer on every surface. Adapters only map the errors below onto
their own channel (an exit code, an HTTP status).

    >>> from orchestrator.app.query import SweepData, propose
    >>> propose(SweepData([], [], []), None, [1e15])
    Traceback (most recent call last):
    ...
    orchestrator.app.query.NotFitted: no finished trial yet; nothing to fit
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..core.planning.branching import spent_flops
from ..config.fitting import fit_settings
from ..core.planning.protocol import HparamAdvice
from ..core.proposals import SweepFit, fit_and_propose

log = logging.getLogger(__name__)

class QueryError(ValueError):
    """A question about a sweep that has no answer (the message says why, in the user's words)."""

class NotFitted(QueryError):
    """The sweep's data cannot give a law yet (no finished trial, too few cells): 409 / exit 1."""

class BadBudget(QueryError):
    """A budget outside what the model family can run, or not a budget at all: 422 / exit 2."""

@dataclass(frozen=True)
class SweepData:
    """What a fit reads from the store: finished points, diverged configs and task rows."""

    points: list[dict[str, Any]]
    diverged: list[dict[str, Any]]
    task_rows: list[dict[str, Any]]
    store: Any = field(default=None, compare=False, repr=False)  # where they were read (a search's replay)
    replays: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # search_replay's, per spec

    @classmethod
    def read(cls, store: Any) -> "SweepData":
        """The fit's inputs from an `ObservationStore`."""
        from ..io.store import diverged_configs, final_points, final_task_points

        points = final_points(store)
        return cls(points, diverged_configs(store), final_task_points(store, points), store)


@dataclass(frozen=True)
class SearchReplay:
    """A law-guided sweep's search rebuilt from its store as `scalesweep resume` rebuilds it: every
    ended trial replayed, then the search asked for its next trials until it must wait or is done."""

    advice: Any  # core.planning.HparamAdvice: the search's lr/batch laws (what the controller's fit.json uses)
    # trials the search would start now that are not planned or running: new ones, and ones a resume
    # reruns (stopped by the user, failed), which the store has a record of
    next_trials: list[str]
    done: Optional[str]  # why the search is over (None: it is not, a resume goes on)


def search_replay(data: SweepData, spec: Any) -> Optional[SearchReplay]:
    """The search of a `law` or `transfer` sweep replayed from `data.store` (None for a grid, without a
    spec or a store). The controller proposes with the search's own lr*/batch* laws (hedged), not a
    refit of the store's cells: replaying the search gives `propose` and the API the same laws."""
    if spec is None or data.store is None or spec.search.strategy == "grid":
        return None
    key = spec.model_dump_json()
    if key not in data.replays:
        data.replays[key] = _replay_search(data.store, spec, key)
    return data.replays[key]

def _replay_search(store: Any, spec: Any, spec_json: str) -> SearchReplay:
    """Replay the search from `store`, or read its answers from the cache the live sweep or a previous
    replay of the same store, spec and code left beside fit.json (`replay_cache`)."""
    from . import replay_cache
    from ..config.planners import make_planner
    from ..io.store import interrupted_trials

    where, cache_key, ended, started = _cache_key(store, spec_json)
    hit = replay_cache.load(where, cache_key, spec)
    if hit is not None:
        return SearchReplay(*hit)
    log.info("replaying the %s search of %s from its store (no current %s)", spec.search.strategy,
             where or "the store", replay_cache.CACHE_FILE)
    planner = make_planner(spec)
    planner.resume(ended, interrupted_trials(store))  # what the controller hands a resumed planner
    new, done = _next_steps(planner, started)
    replay_cache.save(where, cache_key, spec, planner, new, done, source="replay")
    return SearchReplay(planner.hparam_advice(), new, done)

def _cache_key(store: Any, spec_json: str) -> tuple[Optional[Path], str, dict[str, Any], set[str]]:
    """Where a search's cache lives (the sweep directory of a local store, else None), its key for the
    store as it is now, the ended trials with their last reports and the trials started and not ended."""
    from . import replay_cache
    from ..io.store import STOPPED_BY_USER, ended_trials

    ended = ended_trials(store)
    trials = store.trials()
    started = {tid for tid, rec in trials.items() if rec["status"] in ("planned", "running")}
    # the replay continues a stopped trial too (`interrupted_trials`): started and not ended, in the key
    cut = {tid for tid, rec in trials.items() if rec["status"] == STOPPED_BY_USER}
    where = store.root.parent if isinstance(store.root, Path) else None
    return where, replay_cache.replay_key(spec_json, ended, started | cut), ended, started

def _next_steps(planner: Any, started: set[str]) -> tuple[list[str], Optional[str]]:
    """The trials `planner` would start next that are not `started` already, and why it is done (None:
    it must wait for them). A search that has ended answers its own reason without planning more."""
    from ..core.planning import Done
    from ..config.trials import PlannedTrial

    new, step = [], None
    for _ in range(planner.trial_cap + 1):
        step = planner.next_trial()
        if not isinstance(step, PlannedTrial):
            break
        if step.trial_id not in started:
            new.append(step.trial_id)
    return new, step.why if isinstance(step, Done) else None

def save_live_search(store: Any, spec: Any, planner: Any) -> bool:
    """At the end of a law/transfer sweep, cache its live search's answers (`replay_cache`) under the key
    a query of the store now computes, so the first `propose`, `status` or API question reads them
    without replaying, with the live laws fit.json used and the live run's end reason (a replay hands
    the trials over in another order and may end for another reason). False: nothing cached (a grid, a
    store off the local disk, a recorded spec that no longer loads, advice that is not data)."""
    from . import replay_cache

    if spec.search.strategy == "grid" or (recorded := _recorded_spec(store)) is None:
        return False
    where, cache_key, _, started = _cache_key(store, recorded.model_dump_json())
    new, done = _next_steps(planner, started)
    return replay_cache.save(where, cache_key, recorded, planner, new, done, source="live")

def cache_search_of_stopped_sweep(store: Any) -> bool:
    """After a law/transfer sweep was stopped or failed: cache the search a resume rebuilds (a replay of the
    store, `replay_cache` source "replay"), so the first `propose`, `status` or API question reads it. Not
    the live planner (`save_live_search`): the trials it handed out and never ended are, for a resume (and
    a replay), trials to start next, and a resume continues from the replayed search, not the live one.
    False: nothing cached (a grid, a store off the local disk, a recorded spec that does not load)."""
    recorded = _recorded_spec(store)
    return recorded is not None and search_replay(SweepData([], [], [], store), recorded) is not None

def _recorded_spec(store: Any) -> Any:
    """The spec every query of a local store loads (its JSON is part of a cache's key); None for a store
    off the local disk or a recorded spec that does not load (then nothing is cached)."""
    from ..config.spec import SpecError, load_spec

    if not isinstance(store.root, Path):
        return None
    try:
        return load_spec(store.root.parent / "spec.yaml")
    except (OSError, SpecError) as exc:
        log.info("search not cached: the recorded spec does not load (%s)", exc)
        return None

def family_of(spec: Any) -> str:
    """The spec's model family ("gpt" without a spec: a broken spec must not block reading data)."""
    return spec.model.family if spec is not None else "gpt"

def sweep_fit(data: SweepData, spec: Any, targets: Sequence[float], *, bootstrap: Optional[int] = None,
              advice: Optional[HparamAdvice] = None) -> SweepFit:
    """L(N, D) and proposals for `targets` with the spec's fit settings (`bootstrap` overrides the spec's);
    each proposal carries its resource plan on the spec's device when there is a spec. `advice`: a
    planner's lr/batch laws and loss correction (default: a law/transfer sweep's replayed search's)."""
    resources = None
    if spec is not None:
        from ..config.trials import proposal_resources

        resources = proposal_resources(spec)
    if advice is None and (replay := search_replay(data, spec)) is not None:
        advice = replay.advice
    return fit_and_propose(data.points, list(targets), **fit_settings(spec, bootstrap),
                           hparams=advice.predict if advice else None, resources=resources, diverged=data.diverged,
                           family=family_of(spec), hparam_intervals=advice.intervals if advice else None,
                           task_rows=data.task_rows, corrected_loss=advice.corrected_loss if advice else None)

def check_budgets(budgets: Sequence[float]) -> list[float]:
    """Budgets as floats, or BadBudget naming the first that is not a positive finite FLOP count.

    >>> check_budgets([1e15, 2e15])
    [1000000000000000.0, 2000000000000000.0]
    >>> check_budgets([0])
    Traceback (most recent call last):
    ...
    orchestrator.app.query.BadBudget: budget: must be positive and finite FLOPs, got 0
    """
    if not budgets:
        raise BadBudget("budget: give at least one compute budget C in FLOPs")
    for c in budgets:
        if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
            raise BadBudget(f"budget: must be positive and finite FLOPs, got {c!r}")
    return [float(c) for c in budgets]

def budget_problem(proposals: Sequence[dict[str, Any]], smallest: float) -> Optional[str]:
    """Why a proposal is not a config anyone can run (None when every one is): its N* beyond the
    family's largest member (no shape), or below its smallest, or a budget so small that even the
    smallest member would see fewer tokens than parameters (C < 6·N_min²: arithmetic, not a proposal).

    >>> budget_problem([{"budget": 1e9, "N": 11.0, "D": 1.5e7, "shape": {}}], smallest=3312)
    "budget: 1e+09 FLOPs puts N* = 11 below the model family's smallest member (N=3312); propose for a larger budget"
    """
    for p in proposals:
        c, n = p["budget"], p["N"]
        if p.get("shape") is None:
            return f"budget: {c:.3g} FLOPs puts N* = {n:.3g} beyond the model family's largest member"
        if n < smallest / 1.1:
            return (f"budget: {c:.3g} FLOPs puts N* = {n:.3g} below the model family's smallest member "
                    f"(N={smallest:g}); propose for a larger budget")
        if p["D"] < n and c < 6.0 * smallest**2:
            return (f"budget: {c:.3g} FLOPs is below what the model family's smallest member (N={smallest:g}) "
                    f"can use: at least {6.0 * smallest**2:.3g} FLOPs")
    return None


def propose(data: SweepData, spec: Any, budgets: Sequence[float], bootstrap: Optional[int] = None) -> SweepFit:
    """Compute-optimal proposals for `budgets`; NotFitted or BadBudget when there is no answer."""
    from ..core.family import family_sizes  # not trainers.model's re-export: that one imports torch (~2 s)
    from ..core.laws.table import TableError

    budgets = check_budgets(budgets)
    if not data.points:
        raise NotFitted("no finished trial yet; nothing to fit")
    try:
        fit = sweep_fit(data, spec, budgets, bootstrap=bootstrap)
    except (ValueError, TableError, ArithmeticError) as exc:
        # e.g. a budget whose optimal N lies beyond the model family: the input's fault
        raise BadBudget(f"budget: cannot propose for {budgets}: {exc}") from exc
    if fit.fit is None:
        raise NotFitted(f"L(N, D) not fitted: {'; '.join(fit.warnings)}")
    problem = budget_problem(fit.proposals, family_sizes(family_of(spec))[0])
    if problem:
        raise BadBudget(problem)
    return fit

def laws(data: SweepData, spec: Any, bootstrap: Optional[int] = None) -> dict[str, Any]:
    """The fitted L(N, D) with its cells and warnings, and lr*(N, D), batch*(D) when the runs allow
    (`hparam_laws`: the laws the proposals use; `bootstrap` is L(N, D)'s)."""
    from ..core.laws.result import jsonable

    if not data.points:
        raise NotFitted("no finished trial yet; nothing to fit")
    settings = fit_settings(spec, bootstrap)
    # a search's WSD branches count as its own fit counted them (as in `propose` and fit.json)
    replay = search_replay(data, spec)
    advice = replay.advice if replay is not None else None
    fit = fit_and_propose(data.points, [], **settings, family=family_of(spec),
                          corrected_loss=advice.corrected_loss if advice is not None else None)
    hp, reason = hparam_laws([*data.points, *data.diverged], settings["level"])
    return jsonable({"law": fit.fit.to_json() if fit.fit is not None else None, "cells": fit.cells,
                     "warnings": fit.warnings, "hparams": hp, "hparams_reason": reason, "n_trials": len(data.points)})

def hparam_laws(runs: Sequence[dict[str, Any]], level: float) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """lr*(N, D) and batch*(D) fitted on a sweep's finished runs (with their `loss`) and diverged ones
    (loss NaN: they bound lr from above), as `sweep_summary.hparam_doc` with intervals at `level` and the
    counts of runs it was given (`n_runs` finished, `n_diverged`), or (None, why not). The one definition of a sweep's hyperparameter laws: the proposals' own
    (`core.proposals.learned_hparams`: the joint surface, else per-cell bowls, else Step-Law), served
    alike by the API's /laws, the sweep's summary and MLflow metrics, the report and the bowls figure.

    >>> hparam_laws([], 0.9)
    (None, 'lr*(N, D), batch*(D) not fitted: no finished or diverged run')
    """
    from ..core.outcome import is_loss
    from ..core.proposals import learned_hparams_or_why
    from .sweep_summary import hparam_doc

    learned, why = learned_hparams_or_why(runs)
    if learned is None:
        return None, f"lr*(N, D), batch*(D) not fitted: {why}"
    n_diverged = sum(1 for r in runs if not is_loss(r.get("loss", math.nan)))
    return {**hparam_doc(learned.fit, level), "n_runs": len(runs) - n_diverged, "n_diverged": n_diverged}, None

# ------------------------------------------------------------------------------------- status

PRUNED = "stopped"  # the store's name for a trial a pruning rule or scheduler stopped
STATE_WORDS = {"planned": "pending", "running": "running", "finished": "finished", PRUNED: "pruned",
               "diverged": "diverged", "failed": "failed", "stopped-by-user": "stopped by the user"}

def trial_counts(trials: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Trials per store state.

    >>> trial_counts({"a": {"status": "finished"}, "b": {"status": "finished"}, "c": {"status": "stopped"}})
    {'finished': 2, 'stopped': 1}
    """
    counts: dict[str, int] = {}
    for rec in trials.values():
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
    return counts

def flops_spent(trials: dict[str, dict[str, Any]], last: dict[str, dict[str, Any]]) -> dict[str, float]:
    """FLOPs each trial itself spent, as the store accounts them: a WSD branch from its branch
    point (its reports count its trunk's share too, `branching.spent_flops`).

    >>> flops_spent({"t": {"config": {}}, "b": {"config": {"branch_flops": 4.0}}},
    ...             {"t": {"flops": 4.0}, "b": {"flops": 5.0}})
    {'t': 4.0, 'b': 1.0}
    """
    return {tid: spent_flops(row["flops"], (trials.get(tid) or {}).get("config") or {}) for tid, row in last.items()}

def never_started(spec: Any, trials: dict[str, dict[str, Any]]) -> Optional[int]:
    """Grid trials the store has no record of (None without a spec, or when the search, not the
    grid, decides which trials run: a law-guided search's are those `search_replay` would start now)."""
    if spec is None or spec.search.strategy != "grid":
        return None
    from ..config.planners import GridPlanner

    return sum(1 for t in GridPlanner(spec).runnable() if t.trial_id not in trials)

def status(sweep_dir: str | Path, spec: Any = None) -> dict[str, Any]:
    """Every trial (state, config, FLOPs spent), counts per state, FLOPs spent in all (branches
    from their branch point) and, with a spec, how many of its trials never started: a grid's missing
    trials, a law-guided search's next trials the store has no record of (`search_replay`; its state under
    `search`: done, why and every trial a resume starts next)."""
    from ..io.store import ObservationStore

    store = ObservationStore(sweep_dir)
    trials = store.trials()
    spent = flops_spent(trials, store.last_reports(finite="flops"))
    rows = []
    for tid, rec in sorted(trials.items(), key=lambda kv: (kv[1]["config"] or {}).get("flops", 0)):
        cfg = rec["config"] or {}
        rows.append({"trial_id": tid, "status": rec["status"], "N": cfg.get("N"), "D": cfg.get("D"),
                     "lr": cfg.get("lr"), "batch": cfg.get("batch"), "planned_flops": cfg.get("flops"),
                     "branch_of": cfg.get("branch_of"), "flops_spent": spent.get(tid, 0.0),
                     "summary": rec["summary"]})
    replay = search_replay(SweepData([], [], [], store), spec)
    search = None if replay is None else {"strategy": spec.search.strategy, "done": replay.done,
                                          "next_trials": replay.next_trials}
    # a trial a resume reruns (stopped by the user, failed) is counted in its state, not as never started too
    never = never_started(spec, trials) if replay is None else sum(1 for t in replay.next_trials if t not in trials)
    return {"sweep_dir": str(Path(sweep_dir).resolve()), "trials": rows, "counts": trial_counts(trials),
            "never_started": never, "search": search, "flops_spent": float(sum(spent.values()))}

def status_line(counts: dict[str, int], never: Optional[int]) -> str:
    """The states of a sweep's trials in words, every state named (zeros too, so nothing is hidden).

    >>> status_line({"finished": 81, "stopped": 3}, 119)
    '0 pending, 0 running, 81 finished, 3 pruned, 0 diverged, 0 failed, 0 stopped by the user, 119 never started'
    """
    parts = [f"{counts.get(state, 0)} {word}" for state, word in STATE_WORDS.items()]
    parts += [f"{n} {state}" for state, n in sorted(counts.items()) if state not in STATE_WORDS]
    if never is not None:
        parts.append(f"{never} never started")
    return ", ".join(parts)

def search_line(search: Optional[dict[str, Any]]) -> Optional[str]:
    """A law-guided sweep's search in words (`status`'s `search`): why it ended, or that it has not and
    what a resume starts next; None for a grid (nothing to say beyond the trial counts).

    >>> search_line({"strategy": "transfer", "done": "compute budget spent", "next_trials": []})
    'search (transfer): ended: compute budget spent'
    >>> search_line({"strategy": "law", "done": None, "next_trials": ["a", "b", "c", "d"]})
    'search (law): not ended; a resume starts 4 trial(s) next (a, b, c, ...)'
    """
    if search is None:
        return None
    head = f"search ({search['strategy']})"
    if search.get("done"):
        return f"{head}: ended: {search['done']}"
    nxt = search.get("next_trials") or []
    more = f" ({', '.join(nxt[:3])}{', ...' if len(nxt) > 3 else ''})" if nxt else ""
    return f"{head}: not ended; a resume starts {len(nxt)} trial(s) next{more}"
