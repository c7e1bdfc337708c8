"""A real Ray Tune run: with `ForgetEndedTrials`, Tune's controller keeps no ended trial (issue 16).

The same Tuner twice on one Ray instance, 8 short simulated trials through `run_trial` (three of
them failing: a trial contract of another version), reused actors as run_sweep: a probe callback
holds weak references to every trial that ended and, when the experiment ends (the controller still
alive), counts those still alive after a garbage collection. Without the callback Tune keeps every
one of them; with it, no finished one, and its controller's sets, experiment-state cache and last
snapshot list no ended trial. (A failed trial stays reachable from the closures of its failed
actor task, in Ray's actor manager: a few KB per failed trial, out of this callback's reach.)
Counts, not RSS or time.
"""
from __future__ import annotations

import gc
import json
import sys
import weakref
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from orchestrator.adapters.tune.forget import ForgetEndedTrials, controller_of  # noqa: E402
from orchestrator.config.spec import parse_spec  # noqa: E402
from orchestrator.app.tune_run import tune_env  # noqa: E402
from orchestrator.adapters.tune.trainable import run_trial  # noqa: E402
from trainers.contract import TrialConfig  # noqa: E402

TRIALS = 8  # as telling as 16 (every count below is all or none of them) at half the trial starts
FAILING = (2, 5, 7)  # a trial contract of another version: the trial process raises, the trial ends in ERROR


def _trial(i: int) -> dict:
    trial = TrialConfig(f"t{i}", n_params=10_000 * (1 + i % 3), tokens=3 * 1024, lr=0.01, batch_tokens=1024,
                        eval_every=1).to_dict()
    return {**trial, "contract_version": 999} if i in FAILING else trial


def tune_env_of_a_sweep() -> dict:
    """run_sweep's Tune settings (controller.tune_env) but its result buffering for simulated trials."""
    spec = parse_spec({"name": "forget", "model": {"n_params": [10000]}, "tokens": {"per_param": [5]},
                       "learning_rates": [0.01], "batch_sizes": [1024], "trainer": {"backend": "simulated"}})
    return {k: v for k, v in tune_env(spec).items() if not k.startswith("TUNE_RESULT_BUFFER")}


class _Probe(tune.Callback):
    """Weak references to every ended trial; at the experiment's end, what Tune still holds."""

    def __init__(self):
        self.ended: list[weakref.ref] = []
        self.seen: dict = {}

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended.append(weakref.ref(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended.append(weakref.ref(trial))

    def on_experiment_end(self, trials, **info):
        controller = controller_of(trials, sys._getframe(1))
        gc.collect()
        alive = [r() for r in self.ended if r() is not None]
        self.seen = {
            "ended": len(self.ended),
            "alive": len(alive),
            "alive_finished": sum(t.status != "ERROR" for t in alive),
            "controller": controller is not None,
            "cached_json": len(controller._trial_metadata) if controller is not None else None,
            "stopped_or_failed": (len(controller._stopped_trials) + len(controller._failed_trials)
                                  if controller is not None else None),
        }

    def __getstate__(self):
        return {"ended": [], "seen": {}}


def _fit(tmp_path: Path, name: str, forget: bool) -> dict:
    probe = _Probe()
    callbacks = [probe] + ([ForgetEndedTrials()] if forget else [])
    tuner = tune.Tuner(
        tune.with_resources(run_trial, {"CPU": 0.5}),
        param_space={"trial": tune.grid_search([_trial(i) for i in range(TRIALS)]), "backend": "simulated",
                     "world": "tiny"},
        tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name=name, verbose=0, callbacks=callbacks),
    )
    grid = tuner.fit()
    state = max((tmp_path / name).glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    probe.seen["snapshot_trials"] = len(json.loads(state.read_text())["trial_data"])
    probe.seen["errors"] = len(grid.errors)
    return probe.seen


def test_tune_keeps_no_ended_trial_once_forgotten(tmp_path, monkeypatch, local_ray):
    local_ray(2)  # the session's 2-CPU local Ray instance (conftest.py), as run_sweep joins it
    for key, value in tune_env_of_a_sweep().items():  # as run_sweep: the legacy output engine, no auto loggers
        monkeypatch.setenv(key, value)  # (the driver's, after Ray started: as run_sweep sets them)
    kept = _fit(tmp_path, "keep", forget=False)
    forgot = _fit(tmp_path, "forget", forget=True)
    # Tune alone: every ended trial alive, in its sets, its cache and its last snapshot
    assert kept["ended"] == TRIALS and kept["alive"] == TRIALS and kept["controller"]
    assert kept["cached_json"] == TRIALS and kept["stopped_or_failed"] == TRIALS
    assert kept["snapshot_trials"] == TRIALS and kept["errors"] == len(FAILING)
    # forgotten: none of them left anywhere in the controller
    assert forgot["ended"] == TRIALS and forgot["controller"]
    assert forgot["alive_finished"] == 0 and forgot["alive"] <= len(FAILING)
    assert forgot["cached_json"] == 0 and forgot["stopped_or_failed"] == 0
    assert forgot["snapshot_trials"] == 0
