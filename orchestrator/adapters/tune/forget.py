"""A Ray Tune `Callback` that lets the driver forget trials once they ended.

Ray Tune keeps every `Trial` of an experiment for its whole life, each with a running analysis
of every numeric key it ever reported (max, min, mean, last-5 and last-10 means, two deques per
key: ≈30 KB a trial here), its last result with a copy of its config, and the copies of its
config the search generator made. A sweep of 10,000 trials kept ≈70–115 KB per trial in the driver;
with this callback, 7.7 KB (`python -m benchmarks.overhead --memory`, docs/benchmarks.md). Nothing
of it decides anything once a trial ended: the store and MLflow hold its reports, our scheduler
and planner their own summaries; and a sweep resumes from the store, never from Tune's experiment
state.

So when a trial ends this callback empties its metric analysis, drops the config from its last
result and shrinks its config to the trial id (Tune's experiment-state snapshot then records a
small JSON of it); once its actor is stopped (status TERMINATED or ERROR) it removes it from the
controller's trial list (which Tune also scans at every step of its loop: `is_finished`), from
its sets of stopped and failed trials, from its experiment-state cache (the JSON of every trial
it rewrites into each snapshot) and from Tune's own callbacks (its progress printer keeps every
trial it printed). What Tune returns from `Tuner.fit()` and what its experiment
state lists are then the trials still live; sweeps read the store instead. Nothing in Tune holds
a finished trial past that (a failed one stays reachable from its failed actor task in Ray's actor
manager), so the driver keeps nothing of it (`tests/unit/adapters/test_bounded_state.py`,
`tests/integration/test_forget_tune.py`).

The controller's sets and cache are reached through the controller that calls this callback's
`on_step_end` (Ray 2.6x internals: `TuneController._stopped_trials`, `_failed_trials`,
`_trial_metadata`, `_trials_to_cache`); should a Ray version lack them, the trials are still
slimmed and taken out of its list, as before.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Optional

from ray.tune import Callback
from ray.tune.experiment import Trial

from .envelope import trial_id_of

log = logging.getLogger(__name__)

ENDED = (Trial.TERMINATED, Trial.ERROR)
# where Ray 2.6x's TuneController keeps an ended trial besides its trial list (status sets, the cache
# of JSON states written into every experiment-state snapshot, the trials to re-serialise next)
_CONTROLLER_SETS = ("_stopped_trials", "_failed_trials", "_live_trials", "_trials_to_cache")
_CONTROLLER_BY_ID = ("_trial_metadata", "_cached_trial_decisions", "_queued_trial_decisions")


def slim_trial(trial: Any) -> None:
    """Drop what Tune keeps of an ended trial beyond what its experiment state needs to say it ended.

    Its config shrinks to the contract's trial id (what our scheduler and callback look a trial up
    by), which also shrinks the JSON that Tune's experiment-state snapshot caches for every trial.
    """
    meta = trial.run_metadata
    meta.metric_analysis = {}  # also invalidates its cached JSON
    meta.metric_n_steps = {}
    if isinstance(meta.last_result, dict) and "config" in meta.last_result:
        meta.last_result = {k: v for k, v in meta.last_result.items() if k != "config"}
    tid = trial_id_of(trial.config)
    if tid is not None:  # (the envelope reads this back as "no envelope", the id alone: envelope_of, trial_id_of)
        trial.config = {"trial": {"trial_id": tid}}
        trial._Trial__unresolved_config = trial.config  # Trial keeps a copy of the config as given
        trial.evaluated_params = {}
    trial.invalidate_json_state()


class ForgetEndedTrials(Callback):
    """Slims each ended trial and takes it out of Tune's trial list once its actor is stopped."""

    def __init__(self) -> None:
        self.ended: list[Any] = []  # trials that ended, until Tune marks them TERMINATED / ERROR
        self.forgotten = 0
        self._controller: Optional[Any] = None  # the Tune controller whose callback this is (`controller_of`)
        self._warned = False

    # Slimmed at once (Tune has already handed the trial's last result to the scheduler and the
    # searcher, and the callbacks before this one have recorded it): Tune caches the JSON of a trial
    # when it next snapshots its experiment state, so it then caches the small one.
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        slim_trial(trial)
        self.ended.append(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        slim_trial(trial)
        self.ended.append(trial)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if not self.ended:
            return
        done = {id(t): t for t in self.ended if t.status in ENDED}
        if not done:
            return
        # `trials` is the controller's own list (Tune passes it, not a copy): edit it in place
        trials[:] = [t for t in trials if id(t) not in done]
        self.ended = [t for t in self.ended if id(t) not in done]
        self.forgotten += len(done)
        controller = self._controller_of(trials)
        if controller is not None:
            drop_from_controller(controller, done.values())

    def _controller_of(self, trials: list) -> Optional[Any]:
        """The Tune controller whose trial list `trials` is (found once, from the caller's frames)."""
        if self._controller is None or vars(self._controller).get("_trials") is not trials:
            self._controller = controller_of(trials, sys._getframe(2))
            if self._controller is None and not self._warned:
                self._warned = True
                log.warning("tune.forget: Ray Tune's controller not found (a Ray version this was not written "
                            "for): ended trials are slimmed but Tune keeps a few KB of each")
        return self._controller

    def on_experiment_end(self, trials: list, **info) -> None:
        self._controller = None  # (the controller ends with the experiment)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state: not the trials or the controller
        return {"ended": [], "forgotten": self.forgotten, "_controller": None, "_warned": self._warned}


def controller_of(trials: list, frame: Any) -> Optional[Any]:
    """The object, among the `self`s of `frame` and its callers, whose `_trials` is the list `trials`:
    the Tune controller calling a callback with its own trial list; None when there is none."""
    while frame is not None:
        owner = frame.f_locals.get("self")
        # (its own attribute, looked up without `__getattr__`: some Tune wrappers warn on any lookup)
        if getattr(owner, "__dict__", {}).get("_trials") is trials:
            return owner
        frame = frame.f_back
    return None


def drop_from_controller(controller: Any, ended: Any) -> None:
    """Take ended (TERMINATED / ERROR) trials out of what the Tune controller keeps of them besides its
    trial list: its status sets and its experiment-state cache. Tune reads none of these for a trial
    that has ended (it only moves a trial between the sets when its status changes), and the sweep
    resumes from the store, never from Tune's experiment state."""
    ended = list(ended)
    for name in _CONTROLLER_SETS:
        kept = getattr(controller, name, None)
        if isinstance(kept, set):
            kept.difference_update(ended)
    for name in _CONTROLLER_BY_ID:
        kept = getattr(controller, name, None)
        if isinstance(kept, dict):
            for t in ended:
                kept.pop(t.trial_id, None)
    # Tune's own callbacks keyed by trial: the legacy output engine's TrialProgressCallback (run_sweep's
    # tune_env selects that engine) keeps every trial's last print time, iteration and completion
    for callback in getattr(getattr(controller, "_callbacks", None), "_callbacks", ()):
        if type(callback).__module__.startswith("ray.tune."):
            _drop_trials(callback, ended)


def _drop_trials(obj: Any, ended: list) -> None:
    """Remove the `ended` trials from every dict (as keys) and set held by `obj`'s attributes."""
    for kept in vars(obj).values():
        if isinstance(kept, dict):
            for t in ended:
                kept.pop(t, None)
        elif isinstance(kept, set):
            kept.difference_update(ended)
