"""The MLflow run layout of a sweep: tag names, MLflow's limits, which report keys are metrics,
and how a run's end reads (the `outcome` tag beside MLflow's three statuses).

Pure: no MLflow import, so the layout can be read (docs, tests) without a tracking client.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional

# MLflow's limits (mlflow.utils.validation); values longer than these are truncated here
# because a rejected batch would otherwise be dropped as a whole.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250

TAG_SWEEP = "scalesweep.sweep"
TAG_KIND = "scalesweep.kind"
TAG_TRIAL = "scalesweep.trial_id"
TAG_TOKEN = "scalesweep.create_token"
TAG_NONFINITE = "scalesweep.nonfinite_metrics"
TAG_PARENT = "mlflow.parentRunId"
TAG_STATUS = "scalesweep.status"  # the store's status of a trial (orchestrator.io.store.TRIAL_STATES)
TAG_OUTCOME = "scalesweep.outcome"  # how a run ended, one word per case (OUTCOMES)
TAG_TRUNK_TRIAL = "scalesweep.trunk_trial_id"  # a WSD branch: its trunk's trial id ...
TAG_TRUNK_RUN = "scalesweep.trunk_run_id"  # ... the trunk's MLflow run id ...
TAG_BRANCH_STEP = "scalesweep.branch_step"  # ... the trunk's step the branch starts from ...
TAG_BRANCH_FLOPS = "scalesweep.branch_flops"  # ... and the FLOPs the trunk spent to get there

# Report keys that are bookkeeping, not measurements: `step` is MLflow's step axis and `done`
# a flag; charting them drew a staircase and a step function beside the losses.
NOT_METRICS = frozenset({"step", "done"})
# A cumulative counter (seconds inside training steps): a rising line says nothing per report.
# Its last value is logged once when the run ends, as TRAIN_SECONDS.
CUMULATIVE_SECONDS = "step_time_s"
TRAIN_SECONDS = "train_s"

# Store status of a trial -> (outcome tag, MLflow status). MLflow has only FINISHED, FAILED
# and KILLED: the outcome tag tells the five endings apart.
OUTCOMES: dict[str, tuple[str, str]] = {
    "finished": ("finished", "FINISHED"),
    "failed": ("failed", "FAILED"),  # crashed, or broke the trial contract
    "diverged": ("diverged", "FAILED"),  # non-finite or exploding loss
    "stopped": ("pruned", "KILLED"),  # ended early by the pruner (or a scheduler)
    "stopped-by-user": ("stopped-by-user", "KILLED"),  # Ctrl-C / `scalesweep stop`; resume reruns it
}
# MLflow status of a run ended without a store status (the sweep's parent; trials still open
# when the sweep's run closes) -> its outcome.
OUTCOME_OF_STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "stopped-by-user"}
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")


# The MLflow UI's saved ("shared") views of an experiment's runs table: an experiment tag
# `mlflow.sharedViewState.<key>` holding the view's JSON (search facets and UI state: columns,
# order, filter), opened with `#/experiments/<id>?viewStateShareKey=<key>`. It is the only view
# state the server keeps: a browser's own column choice lives in its local storage.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_KEY_PREFIX = "scalesweep-"
NOTE_TAG = "mlflow.note.content"  # the experiment's description, shown above its runs
NOTE_MARK = "<!-- scalesweep views -->"  # a description scalesweep wrote (and may rewrite)
# The trials table: what differs between trials (size, tokens, lr, batch, seed), how each ended and
# what it reached and cost. Keys as the UI spells them (`params.`N``); the params are PlannedTrial's fields.
VIEW_COLUMNS = ("params.`N`", "params.`D`", "params.`lr`", "params.`batch`", "params.`seed`",
                "tags.`scalesweep.outcome`", "metrics.`eval_loss`", "metrics.`flops`", "metrics.`train_s`")


def view_key(sweep_name: str) -> str:
    """The saved view's share key of a sweep (URL-safe).

    >>> view_key("tiny demo/1")
    'scalesweep-tiny_demo_1'
    """
    return VIEW_KEY_PREFIX + "".join(c if c.isalnum() or c in "-_" else "_" for c in sweep_name)


def runs_table_view(sweep_name: str) -> dict[str, Any]:
    """The saved view of a sweep's trials: only its trial runs (flat, not nested under the sweep's run),
    lowest final eval loss first, with VIEW_COLUMNS. Unknown keys are ignored by the UI, so the sweep's
    name rides along under TAG_SWEEP.

    >>> v = runs_table_view("tiny"); v["searchFilter"], v["orderByKey"], len(v["selectedColumns"])
    ("tags.`scalesweep.sweep` = 'tiny' and tags.`scalesweep.kind` = 'trial'", 'metrics.`eval_loss`', 9)
    """
    return {"searchFilter": f"tags.`{TAG_SWEEP}` = '{quote(sweep_name)}' and tags.`{TAG_KIND}` = 'trial'",
            "orderByKey": "metrics.`eval_loss`", "orderByAsc": True, "lifecycleFilter": "Active",
            "selectedColumns": list(VIEW_COLUMNS), "runListHidden": False, TAG_SWEEP: sweep_name}


# MLflow 3.17's runs tab lists an experiment's *named* saved views in its "Saved views" menu: a tag under the
# same prefix whose value is an envelope {name, createdAt, updatedAt, state} (the UI's savedViewEnvelope.ts;
# `state`: the view's JSON, plain or deflated). Older 3.x UIs read only the bare state, so the sweep's view
# is saved both ways: the bare one under `view_key` (the description's link), the envelope under
# `saved_view_key` (listed by name; opening it shows the same view).
SAVED_VIEW_SUFFIX = ".trials"  # a dot: no `view_key` has one, so no sweep's bare key can be another's envelope


def saved_view_key(sweep_name: str) -> str:
    """The share key of the sweep's named saved view (the envelope).

    >>> saved_view_key("tiny")
    'scalesweep-tiny.trials'
    """
    return view_key(sweep_name) + SAVED_VIEW_SUFFIX


def saved_view(sweep_name: str, created_ms: int, updated_ms: Optional[int] = None) -> str:
    """The tag value of the sweep's named saved view: MLflow's envelope around `runs_table_view`.

    >>> doc = json.loads(saved_view("tiny", 1000)); doc["name"], doc["createdAt"], json.loads(doc["state"])["orderByKey"]
    ('Trials of sweep tiny', 1000, 'metrics.`eval_loss`')
    """
    return json.dumps({"name": f"Trials of sweep {sweep_name}", "createdAt": int(created_ms),
                       "updatedAt": int(created_ms if updated_ms is None else updated_ms),
                       "state": json.dumps(runs_table_view(sweep_name))})


def experiment_note(experiment_id: str, views: Mapping[str, str]) -> str:
    """The experiment's description linking each sweep's saved view ({share key: sweep name}).

    >>> print(experiment_note("3", {"scalesweep-tiny": "tiny"}))
    <!-- scalesweep views -->
    <BLANKLINE>
    **Trials of sweep `tiny`**: [runs table: N, D, lr, batch, seed, outcome, eval loss, FLOPs](#/experiments/3?viewStateShareKey=scalesweep-tiny) (lowest eval loss first; the sweep's run holds its summary, plots and fit)
    """
    lines = [NOTE_MARK]
    for key, name in sorted(views.items(), key=lambda kv: kv[1]):
        lines.append(f"**Trials of sweep `{name}`**: [runs table: N, D, lr, batch, seed, outcome, eval loss, FLOPs]"
                     f"(#/experiments/{experiment_id}?viewStateShareKey={key}) (lowest eval loss first; the sweep's "
                     "run holds its summary, plots and fit)")
    return "\n\n".join(lines)


def trial_end(status: str, tags: Mapping[str, Any]) -> tuple[str, str]:
    """(MLflow status, outcome) of a trial's run ending with `status` and `tags`.

    The store's status in `tags` (TAG_STATUS) decides when present; an explicit outcome tag
    is kept; otherwise the outcome follows the MLflow status.

    >>> trial_end("KILLED", {"scalesweep.status": "diverged"})
    ('FAILED', 'diverged')
    >>> trial_end("FINISHED", {})
    ('FINISHED', 'finished')
    """
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be FINISHED, FAILED or KILLED, not {status!r}")
    known = OUTCOMES.get(str(tags.get(TAG_STATUS, "")))
    if known is not None:
        return known[1], known[0]
    return status, str(tags.get(TAG_OUTCOME) or OUTCOME_OF_STATUS[status])


def branch_tags(params: Mapping[str, Any]) -> dict[str, str]:
    """The tags that link a WSD branch's run to its trunk (empty for any other trial).

    >>> branch_tags({"branch_of": "trunk-1", "branch_step": 120, "branch_flops": 3.5e12})
    {'scalesweep.trunk_trial_id': 'trunk-1', 'scalesweep.branch_step': '120', 'scalesweep.branch_flops': '3.5e+12'}
    """
    trunk = params.get("branch_of")
    if not trunk:
        return {}
    return {TAG_TRUNK_TRIAL: str(trunk), TAG_BRANCH_STEP: str(int(params.get("branch_step") or 0)),
            TAG_BRANCH_FLOPS: f"{float(params.get('branch_flops') or 0.0):.6g}"}


def trial_params(record: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's planned config as its run's params: the fields that have a value. None, an empty list and,
    for a trial that is not a WSD branch, the branch point (0) say nothing, and each such key would be one
    more entry of the UI's column picker for the whole experiment.

    >>> trial_params({"N": 1, "warmup": None, "checkpoint_steps": [], "branch_of": None, "branch_step": 0})
    {'N': 1}
    >>> trial_params({"N": 1, "branch_of": "t", "branch_step": 0})
    {'N': 1, 'branch_of': 't', 'branch_step': 0}
    """
    branch = record.get("branch_of") is not None
    return {k: v for k, v in record.items() if v is not None and not (isinstance(v, (list, tuple, Mapping)) and not v)
            and (branch or not str(k).startswith("branch_"))}


def flatten_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {"a.b.c": str(value)} with MLflow's key/value length limits.

    >>> flatten_params({"model": {"n_params": [1, 2]}, "lr": 0.1})
    {'model.n_params': '[1,2]', 'lr': '0.1'}
    """
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten_params(v, key))
            continue
        if isinstance(v, (list, tuple, Mapping)):
            text = json.dumps(v, default=str, separators=(",", ":"))
        else:
            text = str(v)
        out[key[:MAX_KEY_LENGTH]] = text[:MAX_PARAM_VAL_LENGTH]
    return out


def tag_values(tags: Mapping[str, Any]) -> dict[str, str]:
    """Tags as MLflow strings within its key and value limits."""
    return {str(k)[:MAX_KEY_LENGTH]: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in tags.items()}


def quote(s: str) -> str:
    """A value inside a single-quoted MLflow search filter."""
    return s.replace("'", "\\'")


def plain(obj: Any) -> Any:
    """JSON/YAML-safe copy: numpy scalars to Python, non-finite floats to None.

    >>> plain({"a": (1.0, float("nan"))})
    {'a': [1.0, None]}
    """
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars
        return plain(obj.tolist())
    if hasattr(obj, "to_json") and callable(obj.to_json):  # FitResult and friends
        return plain(obj.to_json())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def metric_value(value: Any) -> Optional[float]:
    """A report value as a float (None when it is not a number)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
