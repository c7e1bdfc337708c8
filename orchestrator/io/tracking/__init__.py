"""MLflow tracking for a sweep: parent run = sweep, nested child run = trial.

`SweepTracker` (tracker.py) is the facade the rest of scalesweep uses. Behind it: typed
operations (ops.py), an ordered queue with batching, retries and a spool file (queue.py,
spool.py), and the MLflow sink that lays the runs out (sink.py, layout.py). `read_sweep_runs`
(reader.py) reads a sweep back.
"""
from .layout import (MAX_KEY_LENGTH, MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH,
                     MAX_TAG_VAL_LENGTH, OUTCOMES, TAG_BRANCH_FLOPS, TAG_BRANCH_STEP, TAG_KIND, TAG_NONFINITE,
                     TAG_OUTCOME, TAG_PARENT, TAG_STATUS, TAG_SWEEP, TAG_TOKEN, TAG_TRIAL, TAG_TRUNK_RUN,
                     TAG_TRUNK_TRIAL, flatten_params, trial_end)
from .reader import read_sweep_runs
from .tracker import SweepTracker

__all__ = [
    "MAX_KEY_LENGTH", "MAX_METRICS_PER_BATCH", "MAX_PARAM_VAL_LENGTH", "MAX_PARAMS_TAGS_PER_BATCH",
    "MAX_TAG_VAL_LENGTH", "OUTCOMES", "TAG_BRANCH_FLOPS", "TAG_BRANCH_STEP", "TAG_KIND", "TAG_NONFINITE",
    "TAG_OUTCOME", "TAG_PARENT", "TAG_STATUS", "TAG_SWEEP", "TAG_TOKEN", "TAG_TRIAL", "TAG_TRUNK_RUN",
    "TAG_TRUNK_TRIAL", "SweepTracker", "flatten_params", "read_sweep_runs", "trial_end",
]
