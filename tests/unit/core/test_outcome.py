"""A trial's outcome is classified once (`orchestrator.core.outcome`): the three paths that ask how a
trial ended agree on a table of endings.

- the Tune callback: the status it writes to the store (`SweepCallback.on_trial_complete`);
- the law-guided search: the status a cell's point takes (`search.lattice.outcome`, which
  `LawGuidedPlanner.observe` calls with the trial's planned D);
- the pruner: whether the trial becomes a reference when its history is rebuilt from that store
  (`completed_from_store` -> `Pruner.restore`), and, the same, when the live Tune scheduler sees it
  complete (`PrunerScheduler.on_trial_complete`).

Each case is the last Tune result of a trial as both the callback and the searcher receive it (Tune
marks the result it stops a trial on ``done``), with a real store in a temporary directory.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import pytest

from orchestrator.core.outcome import Outcome, outcome_and_loss, outcome_of
from orchestrator.app.progress import SweepProgress
from orchestrator.config.pruning import completed_from_store
from orchestrator.core.pruning.decision import Decision
from orchestrator.core.pruning.meta import TrialMeta
from orchestrator.core.pruning.pruner import Pruner
from orchestrator.core.planning.search.lattice import outcome as search_outcome
from orchestrator.io.store import ObservationStore
from orchestrator.adapters.tune.callback import SweepCallback
from orchestrator.adapters.tune.envelope import TrialEnvelope
from trainers.contract import TrialConfig

D = 1000.0  # planned tokens of every case
NAN, INF = math.nan, math.inf


def _result(tokens: float, train: float, eval_: float, done: float) -> dict[str, Any]:
    """A Tune result carrying a trainer's report (trainers.contract.REPORT_KEYS)."""
    return {"step": tokens / 10, "tokens": tokens, "flops": 6e6 * tokens, "lr": 1e-3, "train_loss": train,
            "eval_loss": eval_, "tokens_per_s": 1.0, "step_time_s": 1.0, "done": done}


# name: (last result or None, the pruner's stop or None) -> (store status, search status, pruning reference)
CASES: dict[str, tuple[Optional[dict], Optional[Decision], tuple[str, str, bool]]] = {
    "finished": (_result(D, 3.0, 3.1, 1.0), None, ("finished", "ok", True)),
    "finished, train loss missing": (_result(D, NAN, 3.1, 1.0), None, ("finished", "ok", True)),
    "stopped, done flag clear": (_result(D / 2, 3.0, 3.1, 0.0), None, ("stopped", "stopped", False)),
    "stopped by a scheduler (Tune sets done)": (_result(D / 2, 3.0, 3.1, 1.0), None, ("stopped", "stopped", False)),
    "stopped by the pruner": (_result(D / 2, 3.0, 3.1, 1.0), Decision("stop", "predicted worse than the best"),
                              ("stopped", "stopped", False)),
    "diverged (nan losses)": (_result(D, NAN, NAN, 1.0), None, ("diverged", "diverged", False)),
    "diverged early (inf train, no eval)": (_result(D / 4, INF, NAN, 0.0), None, ("diverged", "diverged", False)),
    "failed (never reported)": (None, None, ("failed", "failed", False)),
    # it ran to its end but its last report has no evaluation: finished in the store, but its
    # loss is unknown, so neither the search nor the pruner takes it as a loss
    "finished without an eval loss": (_result(D, 3.0, NAN, 1.0), None, ("finished", "failed", False)),
    "finished with a zero loss": (_result(D, 3.0, 0.0, 1.0), None, ("finished", "failed", False)),
}


def _trial(tid: str):
    """A Tune trial as the callback sees it: its id and the envelope's config (planned tokens D)."""
    trial = TrialConfig(tid, n_params=10**6, tokens=int(D), lr=1e-3, batch_tokens=10, seq_len=10)  # 100 steps
    config = TrialEnvelope(trial, backend="simulated").to_config()
    return SimpleNamespace(trial_id=f"tune-{tid}", config=config, local_path=None, error_file=None)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Every case through the callback into one store; the search's status; the pruner's references."""
    store = ObservationStore(tmp_path_factory.mktemp("sweep"), fsync=False)
    ids = {name: f"t{i}" for i, name in enumerate(CASES)}
    records = {tid: {"N": 1e6, "D": D} for tid in ids.values()}
    stops = {ids[n]: stop for n, (_, stop, _) in CASES.items() if stop is not None}
    cb = SweepCallback(store, None, SweepProgress("t", len(ids), 1.0, None, enabled=False), records, stops=stops)
    search = {}
    for name, (last, _, _) in CASES.items():
        trial = _trial(ids[name])
        cb.on_trial_start(0, [], trial)
        if last is not None:
            cb.on_trial_result(0, [], trial, dict(last))
        cb.on_trial_complete(0, [], trial)
        search[name] = search_outcome(last, D)[0]
    store.flush()
    status = {name: store.trials()[tid]["status"] for name, tid in ids.items()}
    meta = TrialMeta(N=1e6, D=D, total_steps=100, lr=np.full(100, 1e-3), flops=6e6 * D)
    pruner = Pruner()
    pruner.restore(completed_from_store(store, {tid: meta for tid in ids.values()}))
    reference = {name: tid in pruner.history.finals for name, tid in ids.items()}
    live = _live_references({ids[n]: last for n, (last, stop, _) in CASES.items() if stop is None})
    return status, search, reference, {name: live[tid] for name, tid in ids.items() if tid in live}


def _live_references(lasts: dict[str, Optional[dict]]) -> dict[str, bool]:
    """Whether each trial (id -> its last result, or None) is a reference once the live scheduler saw it
    complete (Tune hands the last result to on_trial_complete)."""
    from orchestrator.core.pruning.config import PruneConfig
    from orchestrator.adapters.tune.scheduler import PrunerScheduler

    sched = PrunerScheduler(PruneConfig(), background=False, process=False)
    for tid, last in lasts.items():
        trial = _trial(tid)
        sched.on_trial_add(None, trial)
        sched.on_trial_complete(None, trial, dict(last) if last is not None else {})
    return {tid: tid in sched.pruner.history.finals for tid in lasts}


@pytest.mark.parametrize("name", list(CASES))
def test_three_paths_agree(paths, name):
    status, search, reference, live = paths
    assert (status[name], search[name], reference[name]) == CASES[name][2]
    assert live.get(name, False) == reference[name]


@pytest.mark.parametrize("name", list(CASES))
def test_paths_follow_the_core(paths, name):
    """The store's status is `outcome_of` (a pruner's stop aside); the search's and the pruner's reading is
    `outcome_and_loss`: a final loss only from a finished trial with a realised loss."""
    status, search, reference, _ = paths
    last, stop, _ = CASES[name]
    core, loss = outcome_and_loss(last, D)
    if stop is None:
        assert status[name] == outcome_of(last, D).value
    assert search[name] == ("ok" if core is Outcome.FINISHED else core.value)
    assert reference[name] == (core is Outcome.FINISHED)
    assert math.isfinite(loss) == (core in (Outcome.FINISHED, Outcome.STOPPED))


def test_the_scheduler_judges_finished_by_the_planned_tokens_as_the_store_does(tmp_path):
    """A user's trainer that counts its steps its own way: its last report says the planned steps but
    not the planned tokens. The store calls it stopped, so the live pruner does not take it as a reference."""
    short = {**_result(D * 0.9, 3.0, 3.1, 1.0), "step": 100.0}
    assert outcome_of(short, D) is Outcome.STOPPED
    assert _live_references({"short": short, "full": _result(D, 3.0, 3.1, 1.0)}) == {"short": False, "full": True}


def test_without_planned_tokens_the_done_flag_decides():
    last = _result(D / 2, 3.0, 3.1, 1.0)
    assert outcome_of(last).value == "finished" and outcome_of(last, D).value == "stopped"
    assert search_outcome(last) == ("ok", 3.1)


def test_the_search_takes_a_trial_tune_stopped_as_stopped_not_as_a_final_loss():
    """LawGuidedPlanner.observe weighs the trial's planned D: Tune's `done` on a stopped trial's last
    result does not make its partial loss a point of the cell."""
    from orchestrator.config.planners import LawGuidedPlanner
    from orchestrator.config.spec import parse_spec

    spec = parse_spec({"name": "outcome-test", "model": {"n_params": {"min": 1e4, "max": 1e5, "count": 2}, "seq_len": 128},
                       "tokens": {"per_param": [5, 20]}, "learning_rates": {"min": 0.003, "max": 0.3, "count": 5},
                       "batch_sizes": [256, 1024, 4096], "trainer": {"backend": "simulated", "world": "tiny"},
                       "budget": {"targets": [1e16]}})
    pl = LawGuidedPlanner(spec, seed=0)
    stopped, finished = pl.next_trial(), pl.next_trial()
    pl.observe(stopped.trial_id, {"eval_loss": 3.0, "train_loss": 3.0, "done": 1.0, "tokens": stopped.D / 2})
    pl.observe(finished.trial_id, {"eval_loss": 3.2, "train_loss": 3.2, "done": 1.0, "tokens": finished.D})
    cell, p = pl.book.where[stopped.trial_id]
    assert cell.bad[p] == "stopped" and p not in cell.loss
    cell, q = pl.book.where[finished.trial_id]
    assert cell.loss[q] == 3.2
