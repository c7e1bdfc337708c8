"""A Ray Tune `Callback` that lets the driver forget trials once they ended.

Ray Tune keeps every `Trial` of an experiment for its whole life, each with a running analysis
of every numeric key it ever reported (max, min, mean, last-5 and last-10 means, two deques per
key: ≈30 KB a trial here), its last result with a copy of its config, and the copies of its
config the search generator made. A sweep of 10,000 trials kept ≈90 KB per trial in the driver
(`python -m benchmarks.overhead`). Nothing of it decides anything once a trial ended: the store
and MLflow hold its reports, our scheduler and planner their own summaries; and a sweep resumes
from the store, never from Tune's experiment state.

So when a trial ends this callback empties its metric analysis, drops the config from its last
result and shrinks its config to the trial id (Tune's experiment-state snapshot then records a
small JSON of it); once its actor is stopped (status TERMINATED or ERROR) it removes it from the
controller's trial list (which Tune also scans at every step of its loop: `is_finished`). What
Tune returns from `Tuner.fit()` then lists the trials still live at the end only; sweeps read
the store instead. Tune still holds each ended `Trial` in its set of stopped trials, and its
JSON in the experiment-state cache: a few KB a trial that no callback can reach.
"""
from __future__ import annotations

from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from .envelope import trial_id_of

ENDED = (Trial.TERMINATED, Trial.ERROR)


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

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state: not the trials themselves
        return {"ended": [], "forgotten": self.forgotten}
