"""`SweepTracker`: the one object the rest of scalesweep uses to record a sweep in MLflow.

A thin facade: each call turns into typed operations (`ops.py`) on an ordered queue
(`queue.py`: one background thread, batching, retries, the spool) delivered by the MLflow sink
(`sink.py`: the run layout). The caller (the Tune callback in the driver) never blocks on
MLflow and never sees an MLflow error.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import unquote, urlparse

from mlflow.tracking import MlflowClient

from ..helper_process import HelperProcess
from .layout import (CUMULATIVE_SECONDS, MAX_KEY_LENGTH, NOT_METRICS, OUTCOME_OF_STATUS, RUN_STATUSES, TAG_KIND,
                     TAG_NONFINITE, TAG_OUTCOME, TAG_SWEEP, TAG_TRIAL, TRAIN_SECONDS, branch_tags, flatten_params,
                     metric_value, plain, tag_values, trial_end, trial_params)
from .ops import (CREATES, CreateParent, CreateTrial, EndRun, EndStale, LogArtifact, LogMetrics, LogParams, Op,
                  Queued, SetTags)
from .queue import OpQueue
from .results import result_artifacts, table_name
from .sink import MlflowSink, is_permanent
from .spool import Spool

log = logging.getLogger(__name__)


def _sqlite_path(tracking_uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///` URI (None for other stores)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(unquote(tracking_uri[len("sqlite:///"):].split("?", 1)[0])).resolve()


class SweepTracker:
    """One sweep's MLflow runs with non-blocking, batched, outage-tolerant logging.

    `experiment` None = an experiment named after the sweep (one experiment per sweep);
    `artifact_location` = where a new experiment keeps its artifacts (None: beside a SQLite
    database, else the store's default).
    """

    def __init__(self, tracking_uri: str, experiment: Optional[str], sweep_name: str, *,
                 flush_interval_s: float = 1.0, buffer_dir: str | Path | None = None, sync_timeout_s: float = 10.0,
                 max_backoff_s: float = 30.0, client_process: Optional[bool] = None,
                 artifact_location: Optional[str] = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment or sweep_name
        self.sweep_name = sweep_name
        self.sync_timeout_s = float(sync_timeout_s)
        db = _sqlite_path(tracking_uri)
        if buffer_dir is None:
            buffer_dir = (db.parent / "mlflow-spool" if db
                          else Path(tempfile.gettempdir()) / "scalesweep-mlflow-spool" / sweep_name)
        self.buffer_dir = Path(buffer_dir)
        self.buffer_dir.mkdir(parents=True, exist_ok=True)
        self._files_dir = self.buffer_dir / "files"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sweep_name)
        self.spool_path = self.buffer_dir / f"spool-{safe}.jsonl"
        if urlparse(tracking_uri).scheme in ("http", "https"):
            # MLflow's own HTTP retries (7, exponential) would hold the worker for minutes
            # per call against a dead server; the queue retries itself. setdefault keeps
            # whatever the user configured.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        # A SQLite store's calls run in a helper process (orchestrator.io.helper_process: its
        # SQLAlchemy work, ~5-10 ms of Python per call, would hold the driver's GIL against
        # Tune's event loop); None = only for SQLite (an HTTP client's calls are light).
        if client_process is None:
            client_process = db is not None
        self._client = (HelperProcess("mlflow.tracking:MlflowClient", tracking_uri, name="mlflow-client")
                        if client_process else MlflowClient(tracking_uri))
        self.stats: dict[str, int] = {"ops": 0, "delivered": 0, "dropped": 0, "batches": 0, "metrics": 0,
                                      "nonfinite_skipped": 0, "outages": 0, "failed_attempts": 0, "replayed": 0}
        self._trials_started: set[str] = set()  # trial ids with a create enqueued
        self._trials_ended: set[str] = set()
        self._parent_params: dict[str, str] = {}
        self._nonfinite: dict[str, dict[str, int]] = {}
        self._seconds: dict[str, tuple[float, int]] = {}  # trial id -> (cumulative step_time_s, step) last reported
        self._results_step = 0
        self._tables: list[dict[str, str]] = []  # the parent's table artifacts (mlflow.loggedArtifacts)
        self._closed = False
        self._parent_enqueued = False
        self._sink = MlflowSink(self._client, self.experiment, sweep_name,
                                artifact_location=artifact_location
                                or ((db.parent / "mlartifacts").as_uri() if db else None),
                                live=self._trials_started.__contains__, stats=self.stats)
        self._queue = OpQueue(self._sink.deliver, is_permanent, Spool(self.spool_path),
                              where=f"MLflow at {tracking_uri}", name=f"mlflow-tracker-{sweep_name}",
                              flush_interval_s=flush_interval_s, max_backoff_s=max_backoff_s, stats=self.stats)
        for entry in self._queue.replayed:  # what an earlier tracker started or ended stays so
            if isinstance(entry.op, CreateTrial):
                self._trials_started.add(entry.op.trial)
            elif isinstance(entry.op, CreateParent):
                self._parent_enqueued = True
            elif isinstance(entry.op, EndRun) and entry.op.trial is not None:
                self._trials_ended.add(entry.op.trial)

    # ------------------------------------------------------------------ state
    @property
    def parent_run_id(self) -> Optional[str]:
        """The sweep's parent run id once created (None before / while MLflow is down)."""
        return self._sink.parent_id

    def run_id(self, trial_id: Optional[str] = None) -> Optional[str]:
        """The MLflow run id of a trial (or of the sweep for None), if created yet."""
        return self._sink.run_id(trial_id)

    @property
    def helper_pid(self) -> Optional[int]:
        """The process id of the helper that makes this tracker's MLflow calls (None: they run in this process)."""
        return self._client.pid if isinstance(self._client, HelperProcess) else None

    @property
    def pending(self) -> int:
        """Operations enqueued but not yet delivered (or dropped)."""
        return self._queue.pending

    def nonfinite_counts(self, trial_id: Optional[str] = None) -> dict[str, int]:
        """How many NaN/inf values were skipped per metric key for a trial (None = sweep)."""
        return dict(self._nonfinite.get(trial_id or "", {}))

    # ------------------------------------------------------------------ runs
    def start(self, spec: dict, spec_path: str | None = None, resume_run_id: str | None = None,
              resolved: dict | None = None) -> str:
        """Create (or resume) the sweep's parent run; returns its id ("" if MLflow is down).

        ``spec`` is logged as params (flattened); the artifact ``spec/`` gets the file at
        ``spec_path`` (else ``spec`` as ``spec.yaml``) and ``resolved``, the whole spec with its
        defaults, as ``spec_resolved.yaml``.
        """
        import yaml

        if spec_path is not None:
            artifacts = [(str(Path(spec_path).resolve()), "spec", False)]
        else:
            path = self._new_file("spec.yaml")
            path.write_text(yaml.safe_dump(plain(spec), sort_keys=False))
            artifacts = [(str(path), "spec", True)]
        if resolved is not None:
            path = self._new_file("spec_resolved.yaml")
            path.write_text(yaml.safe_dump(plain(resolved), sort_keys=False))
            artifacts.append((str(path), "spec", True))
        self._parent_enqueued = True
        self._put(CreateParent(uuid.uuid4().hex, flatten_params(spec), {TAG_SWEEP: self.sweep_name, TAG_KIND: "sweep"},
                               tuple(artifacts), resume_run_id))
        self._queue.wait_for(lambda: self.run_id(None) is not None, self.sync_timeout_s)
        return self.parent_run_id or ""

    def start_trial(self, trial_id: str, params: dict, wait: bool = True, run_name: Optional[str] = None) -> str:
        """Create the trial's nested run (idempotent); returns its id ("" if MLflow is down).

        `run_name` (default: the trial id) is what the runs table shows (`orchestrator.io.tracking.run_names`).
        A WSD branch (`branch_of` in `params`) is tagged with its trunk's trial and run ids and its
        branch point. With ``wait=False`` the create is only enqueued (returns "" until delivered):
        the ops that follow it for this trial are delivered after it, in order, so a caller that
        does not need the run id (the Tune callback) never waits on MLflow.
        """
        # A trial started again after end_trial (Tune retrying it from a checkpoint) gets
        # its run back to RUNNING; otherwise a repeated call is a no-op.
        if trial_id not in self._trials_started or trial_id in self._trials_ended:
            self._trials_started.add(trial_id)
            self._trials_ended.discard(trial_id)
            tags = {TAG_SWEEP: self.sweep_name, TAG_KIND: "trial", TAG_TRIAL: trial_id, **branch_tags(params)}
            self._put(CreateTrial(trial_id, uuid.uuid4().hex, flatten_params(trial_params(params)), tags,
                                  run_name or trial_id,
                                  trunk=params.get("branch_of") or None, start_ms=int(time.time() * 1000)))
        if wait:
            self._queue.wait_for(lambda: self.run_id(trial_id) is not None, self.sync_timeout_s)
        return self.run_id(trial_id) or ""

    def log_metrics(self, trial_id: Optional[str], metrics: Mapping[str, float], step: int) -> None:
        """Enqueue metrics at `step` (non-finite values are skipped and counted); never blocks.

        Of a trial's report, `step` and `done` are not metrics, and the cumulative `step_time_s`
        is logged once, as `train_s`, when the trial's run ends (`layout.py`).
        """
        ts = int(time.time() * 1000)
        rows = []
        for key, value in metrics.items():
            v = metric_value(value)
            if v is None or (trial_id is not None and key in NOT_METRICS):
                continue
            if not math.isfinite(v):
                # NaN/inf: MLflow's stores differ (SQLite keeps NaN, inf is clamped, JSON over
                # REST has no NaN); an absent point is unambiguous in the UI.
                counts = self._nonfinite.setdefault(trial_id or "", {})
                counts[key] = counts.get(key, 0) + 1
                self.stats["nonfinite_skipped"] += 1
                continue
            if trial_id is not None and key == CUMULATIVE_SECONDS:
                self._seconds[trial_id] = (v, int(step))
                continue
            rows.append((str(key)[:MAX_KEY_LENGTH], v, ts, int(step)))
        if rows:
            self._put(LogMetrics(trial_id, tuple(rows)), wake=False)

    def set_tags(self, trial_id: Optional[str], tags: Mapping[str, Any]) -> None:
        """Set tags on a trial's run (or on the sweep's parent run for None)."""
        if tags:  # no wake: they go with the next flush, or with the end_trial that usually follows
            self._put(SetTags(trial_id, tag_values(tags)), wake=False)

    def end_trial(self, trial_id: str, status: str = "FINISHED", tags: Mapping[str, Any] | None = None) -> None:
        """Terminate the trial's run after its queued metrics; never blocks.

        With the store's status in `tags` (`scalesweep.status`), the run's MLflow status and its
        `scalesweep.outcome` tag follow `layout.OUTCOMES` (diverged: FAILED, pruned: KILLED, ...).
        """
        all_tags = dict(tags or {})
        status, all_tags[TAG_OUTCOME] = trial_end(status, all_tags)
        nonfinite = self._nonfinite.get(trial_id)
        if nonfinite:
            all_tags[TAG_NONFINITE] = json.dumps(nonfinite, sort_keys=True)
        if trial_id in self._seconds:
            seconds, step = self._seconds[trial_id]
            self._put(LogMetrics(trial_id, ((TRAIN_SECONDS, seconds, int(time.time() * 1000), step),)), wake=False)
        self.set_tags(trial_id, all_tags)
        self._trials_ended.add(trial_id)
        self._put(EndRun(trial_id, status, int(time.time() * 1000)))

    def end_stale_trials(self, ended: Mapping[str, tuple[str, Mapping[str, Any]]]) -> None:
        """Terminate the child runs still RUNNING of trials that already ended: {trial_id: (status, tags)}.

        A resumed sweep calls it for what its store says ended: a controller killed right after a
        trial ended may not have delivered that trial's end, and the trial is not run again. One
        search for the parent's RUNNING children, then a tags batch and an end per stale run.
        """
        if ended:
            out = {}
            for tid, (status, tags) in ended.items():
                mlflow_status, outcome = trial_end(status, tags)
                out[tid] = (mlflow_status, tag_values({**tags, TAG_OUTCOME: outcome}))
            self._put(EndStale(out))

    # ------------------------------------------------------------------ results
    def log_sweep_results(self, params: Mapping[str, Any], metrics: Mapping[str, float],
                          json_artifacts: Mapping[str, Any], figures: Mapping[str, Any], *,
                          tables: Optional[Mapping[str, Mapping[str, list]]] = None,
                          texts: Optional[Mapping[str, str]] = None, tags: Optional[Mapping[str, Any]] = None,
                          step: Optional[int] = None) -> None:
        """Log fit results on the parent run: params, metrics, JSON files, PNG figures, tables, texts, tags.

        Metrics are logged at `step` (default: a count of the calls), so repeated fits form a
        history. MLflow params are immutable: a param whose value changed since an earlier call
        is set as a tag `scalesweep.result.<key>` instead of failing. `tables` are
        `{name: {"columns": [...], "data": [[row], ...]}}`, written as `tables/<name>.json` in
        the layout of `mlflow.log_table` (pandas "split") and listed in the run's
        `mlflow.loggedArtifacts` tag, so the UI shows them as tables; a later call replaces a
        table of the same name. `texts` are files at the run's artifact root (`summary.md`).
        """
        flat = flatten_params(params) if params else {}
        stable = {k: v for k, v in flat.items() if self._parent_params.get(k, v) == v}
        self._parent_params.update(stable)
        if stable:
            self._put(LogParams(None, stable))
        all_tags = {**{f"scalesweep.result.{k}": v for k, v in flat.items() if k not in stable}, **(tags or {})}
        for name in tables or {}:
            entry = {"path": f"tables/{table_name(name)}", "type": "table"}
            if entry not in self._tables:
                self._tables.append(entry)
        if tables:
            all_tags["mlflow.loggedArtifacts"] = json.dumps(self._tables)
        self.set_tags(None, all_tags)
        step = self._results_step if step is None else step
        if metrics:
            self.log_metrics(None, metrics, step)
        self._results_step = step + 1
        for upload in result_artifacts(self._new_file, json_artifacts, figures, tables, texts):
            self._put(upload, wake=False)
        self._queue.wake()

    def log_artifact(self, trial_id: Optional[str], local_path: str | Path, artifact_dir: str | None = None) -> None:
        """Upload a file (kept by the caller until delivered) to a trial's or the sweep's run."""
        self._put(LogArtifact(trial_id, str(Path(local_path).resolve()), artifact_dir, owned=False))

    # ------------------------------------------------------------------ lifecycle
    def flush(self, timeout: Optional[float] = None) -> bool:
        """Deliver everything enqueued so far; True if done within `timeout` seconds."""
        return self._queue.flush(timeout)

    def close(self, status: str = "FINISHED", timeout: float = 30.0) -> int:
        """End open trial runs and the parent run, flush, stop; returns ops left spooled.

        Trials still open take the sweep's status with the outcome `interrupted` (unless it finished).
        """
        if self._closed:
            return self.pending
        self._closed = True
        child_status = status if status in RUN_STATUSES else "KILLED"
        for trial_id in sorted(self._trials_started - self._trials_ended):
            self.end_trial(trial_id, child_status, {} if status == "FINISHED" else {TAG_OUTCOME: "interrupted"})
        if self._parent_enqueued:
            if status in OUTCOME_OF_STATUS:
                self.set_tags(None, {TAG_OUTCOME: OUTCOME_OF_STATUS[status]})
            self._put(EndRun(None, status, int(time.time() * 1000)))
        self.flush(timeout)
        stopped = self._queue.stop(max(5.0, timeout))
        if isinstance(self._client, HelperProcess) and stopped:
            self._client.close()
        left = self.pending
        if left:
            log.warning("MLflow at %s: %d operation(s) not delivered; kept in %s and replayed by the next "
                        "SweepTracker on this buffer_dir", self.tracking_uri, left, self.spool_path)
        return left

    def __enter__(self) -> "SweepTracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("FAILED" if exc_type is not None else "FINISHED")

    def _put(self, op: Op, wake: bool = True) -> None:
        # The run ids known now go with the op: a spool replayed by a later process still finds the runs.
        entry = Queued(op, parent=self._sink.parent_id,
                       run=None if isinstance(op, CREATES) else self._sink.run_id(op.trial))
        if not self._queue.put(entry, wake):
            log.warning("SweepTracker for %s is closed: %s operation spooled to %s",
                        self.sweep_name, entry.kind, self.spool_path)

    def _new_file(self, name: str) -> Path:
        d = self._files_dir / uuid.uuid4().hex[:12]
        d.mkdir(parents=True, exist_ok=True)
        return d / name
