"""MLflow tracking for a sweep: parent run = sweep, nested child run = trial.

Every write goes through one ordered operation queue served by a background thread, so
the caller (the Tune callback in the driver) never blocks on MLflow and never sees an
MLflow error. Metrics are batched with `MlflowClient.log_batch`. When MLflow is
unreachable (an HTTP tracking server down), pending operations are kept in memory and in
an append-only JSONL spool file, retried with exponential backoff and delivered in order
once the server is back; a later tracker on the same spool directory replays what an
earlier process could not deliver. Only `MlflowClient` is used (never the fluent
`mlflow.start_run` global state), so the tracker is thread-safe and leaves the rest of
the process alone.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional
from urllib.parse import unquote, urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .helper_process import HelperProcess

log = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation); values longer than these are truncated here
# because a rejected batch would otherwise be dropped as a whole.
MAX_METRICS_PER_BATCH = 1000
METRICS_PER_WINDOW = 10_000  # metrics regrouped per delivery step (then acknowledged)
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250

_BATCHED = ("metrics", "tags")  # op kinds delivered together, one log_batch per run (_next_group)

TAG_SWEEP = "scalesweep.sweep"
TAG_KIND = "scalesweep.kind"
TAG_TRIAL = "scalesweep.trial_id"
TAG_TOKEN = "scalesweep.create_token"
TAG_NONFINITE = "scalesweep.nonfinite_metrics"
TAG_PARENT = "mlflow.parentRunId"

# Error codes meaning "this request is wrong and will stay wrong": retrying cannot help,
# so the operation is dropped (with an error log) instead of blocking the queue forever.
_PERMANENT_CODES = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "INVALID_STATE",
    "BAD_REQUEST",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "ENDPOINT_NOT_FOUND",
}


def flatten_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {"a.b.c": str(value)} with MLflow's key/value length limits."""
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


def _sqlite_path(tracking_uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///` URI (None for other stores)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    rest = tracking_uri[len("sqlite:///"):]
    return Path(unquote(rest.split("?", 1)[0])).resolve()


def _is_http(tracking_uri: str) -> bool:
    return urlparse(tracking_uri).scheme in ("http", "https")


def _is_permanent(exc: BaseException) -> bool:
    return isinstance(exc, MlflowException) and getattr(exc, "error_code", "") in _PERMANENT_CODES


class SweepTracker:
    """One sweep's MLflow runs with non-blocking, batched, outage-tolerant logging."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        sweep_name: str,
        *,
        flush_interval_s: float = 1.0,
        buffer_dir: str | Path | None = None,
        sync_timeout_s: float = 10.0,
        max_backoff_s: float = 30.0,
        client_process: Optional[bool] = None,
        artifact_location: Optional[str] = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_name = sweep_name
        self.flush_interval_s = float(flush_interval_s)
        self.sync_timeout_s = float(sync_timeout_s)
        self.max_backoff_s = float(max_backoff_s)
        db = _sqlite_path(tracking_uri)
        # where a new experiment keeps its artifacts (None: MLflow's default for this store)
        self._artifact_location = artifact_location or ((db.parent / "mlartifacts").as_uri() if db else None)
        if buffer_dir is None:
            buffer_dir = (
                db.parent / "mlflow-spool"
                if db
                else Path(tempfile.gettempdir()) / "scalesweep-mlflow-spool" / sweep_name
            )
        self.buffer_dir = Path(buffer_dir)
        self.buffer_dir.mkdir(parents=True, exist_ok=True)
        self._files_dir = self.buffer_dir / "files"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sweep_name)
        self.spool_path = self.buffer_dir / f"spool-{safe}.jsonl"
        if _is_http(tracking_uri):
            # MLflow's own HTTP retries (7, exponential) would hold the worker for minutes
            # per call against a dead server; this tracker retries itself. setdefault keeps
            # whatever the user configured.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        # A SQLite store's calls run in a helper process (orchestrator.helper_process: its
        # SQLAlchemy work, ~5-10 ms of Python per call, would hold the driver's GIL against
        # Tune's event loop); None = only for SQLite (an HTTP client's calls are light).
        if client_process is None:
            client_process = db is not None
        self._client = (HelperProcess("mlflow.tracking:MlflowClient", tracking_uri, name="mlflow-client")
                        if client_process else MlflowClient(tracking_uri))

        self._cond = threading.Condition()
        self._inbox: deque[dict[str, Any]] = deque()  # filled by callers
        self._pending: deque[dict[str, Any]] = deque()  # owned by the worker, in order
        self._seq = 0  # last sequence number handed out
        self._done_seq = 0  # every op with seq <= this is delivered or dropped
        self._attempts = 0  # delivery cycles finished (for callers waiting on a create)
        self._spooling = False  # True while an outage backlog is mirrored to the spool
        self._warned = False
        self._spool_failed = False
        self._backoff = 0.0
        self._next_try = 0.0
        self._force = False
        self._stopping = False
        self._exp_id: Optional[str] = None
        self._parent_id: Optional[str] = None
        self._run_ids: dict[str, str] = {}  # trial_id -> run id (delivered creates)
        self._trials_started: set[str] = set()  # trial ids with a create enqueued
        self._trials_ended: set[str] = set()
        self._parent_params: dict[str, str] = {}
        self._nonfinite: dict[str, dict[str, int]] = {}
        self._results_step = 0
        self._tables: list[dict[str, str]] = []  # the parent's table artifacts (mlflow.loggedArtifacts)
        self._closed = False
        self._parent_enqueued = False
        self._created_parent: Optional[str] = None  # a parent run this tracker created (it has no old children)
        self.stats: dict[str, int] = {
            "ops": 0, "delivered": 0, "dropped": 0, "batches": 0, "metrics": 0,
            "nonfinite_skipped": 0, "outages": 0, "failed_attempts": 0, "replayed": 0,
        }
        self._replay_spool()
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=self._worker, name=f"mlflow-tracker-{sweep_name}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ public API
    @property
    def parent_run_id(self) -> Optional[str]:
        """The sweep's parent run id once created (None before / while MLflow is down)."""
        return self._parent_id

    def run_id(self, trial_id: Optional[str] = None) -> Optional[str]:
        """The MLflow run id of a trial (or of the sweep for None), if created yet."""
        return self._parent_id if trial_id is None else self._run_ids.get(trial_id)

    @property
    def pending(self) -> int:
        """Operations enqueued but not yet delivered (or dropped)."""
        return self._seq - self._done_seq

    def start(
        self, spec: dict, spec_path: str | None = None, resume_run_id: str | None = None
    ) -> str:
        """Create (or resume) the sweep's parent run; returns its id ("" if MLflow is down)."""
        params = flatten_params(spec)
        artifacts: list[list[Any]] = []
        if spec_path is not None:
            artifacts.append([str(Path(spec_path).resolve()), "spec", False])
        else:
            import yaml

            path = self._new_file("spec.yaml")
            path.write_text(yaml.safe_dump(_plain(spec), sort_keys=False))
            artifacts.append([str(path), "spec", True])
        tags = {TAG_SWEEP: self.sweep_name, TAG_KIND: "sweep"}
        self._parent_enqueued = True
        self._enqueue(
            {"kind": "parent", "token": uuid.uuid4().hex, "params": params, "tags": tags,
             "artifacts": artifacts, "resume": resume_run_id}
        )
        self._wait_created(None)
        return self._parent_id or ""

    def start_trial(self, trial_id: str, params: dict, wait: bool = True, run_name: Optional[str] = None) -> str:
        """Create the trial's nested run (idempotent); returns its id ("" if MLflow is down).

        `run_name` (default: the trial id) is what the runs table shows (`orchestrator.run_names`).

        With ``wait=False`` the create is only enqueued (returns "" until delivered): the ops
        that follow it for this trial are delivered after it, in order, so a caller that does
        not need the run id (the Tune callback) never waits on MLflow.
        """
        # A trial started again after end_trial (Tune retrying it from a checkpoint) gets
        # its run back to RUNNING; otherwise a repeated call is a no-op.
        if trial_id not in self._trials_started or trial_id in self._trials_ended:
            self._trials_started.add(trial_id)
            self._trials_ended.discard(trial_id)
            tags = {TAG_SWEEP: self.sweep_name, TAG_KIND: "trial", TAG_TRIAL: trial_id}
            self._enqueue(
                {"kind": "trial", "trial": trial_id, "token": uuid.uuid4().hex,
                 "params": flatten_params(params), "tags": tags, "name": run_name or trial_id}
            )
        if wait:
            self._wait_created(trial_id)
        return self._run_ids.get(trial_id, "")

    def log_metrics(self, trial_id: Optional[str], metrics: Mapping[str, float], step: int) -> None:
        """Enqueue metrics at `step` (non-finite values are skipped and counted); never blocks."""
        ts = int(time.time() * 1000)
        rows = []
        for key, value in metrics.items():
            try:
                v = float(value)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(v):
                # NaN/inf: MLflow's stores differ (SQLite keeps NaN, inf is clamped, JSON over
                # REST has no NaN); an absent point is unambiguous in the UI.
                counts = self._nonfinite.setdefault(trial_id or "", {})
                counts[key] = counts.get(key, 0) + 1
                self.stats["nonfinite_skipped"] += 1
                continue
            rows.append([str(key)[:MAX_KEY_LENGTH], v, ts, int(step)])
        if rows:
            self._enqueue({"kind": "metrics", "trial": trial_id, "m": rows}, wake=False)

    def nonfinite_counts(self, trial_id: Optional[str] = None) -> dict[str, int]:
        """How many NaN/inf values were skipped per metric key for a trial (None = sweep)."""
        return dict(self._nonfinite.get(trial_id or "", {}))

    def set_tags(self, trial_id: Optional[str], tags: Mapping[str, Any]) -> None:
        """Set tags on a trial's run (or on the sweep's parent run for None)."""
        if tags:  # no wake: they go with the next flush, or with the end_trial that usually follows
            self._enqueue({"kind": "tags", "trial": trial_id, "tags": _tag_values(tags)}, wake=False)

    def end_trial(
        self, trial_id: str, status: str = "FINISHED", tags: Mapping[str, Any] | None = None
    ) -> None:
        """Terminate the trial's run after its queued metrics; never blocks."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, not {status!r}")
        all_tags = dict(tags or {})
        nonfinite = self._nonfinite.get(trial_id)
        if nonfinite:
            all_tags[TAG_NONFINITE] = json.dumps(nonfinite, sort_keys=True)
        if all_tags:
            self.set_tags(trial_id, all_tags)
        self._trials_ended.add(trial_id)
        self._enqueue(
            {"kind": "end", "trial": trial_id, "status": status, "end_ms": int(time.time() * 1000)}
        )

    def end_stale_trials(self, ended: Mapping[str, tuple[str, Mapping[str, Any]]]) -> None:
        """Terminate the child runs still RUNNING of trials that already ended: {trial_id: (status, tags)}.

        A resumed sweep calls it for what its store says ended: a controller killed right after a
        trial ended may not have delivered that trial's end, and the trial is not run again. One
        search for the parent's RUNNING children, then a tags batch and an end per stale run.
        """
        if ended:
            self._enqueue({"kind": "stale", "trial": None,
                           "ended": {t: [s, _tag_values(tags)] for t, (s, tags) in ended.items()}})

    def log_sweep_results(
        self,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        json_artifacts: Mapping[str, Any],
        figures: Mapping[str, Any],
        *,
        tables: Optional[Mapping[str, Mapping[str, list]]] = None,
        texts: Optional[Mapping[str, str]] = None,
        tags: Optional[Mapping[str, Any]] = None,
        step: Optional[int] = None,
    ) -> None:
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
        changed = {f"scalesweep.result.{k}": v for k, v in flat.items() if k not in stable}
        self._parent_params.update(stable)
        if stable:
            self._enqueue({"kind": "params", "trial": None, "params": stable})
        all_tags = {**changed, **(tags or {})}
        for name in tables or {}:
            fname = name if name.endswith(".json") else f"{name}.json"
            entry = {"path": f"tables/{fname}", "type": "table"}
            if entry not in self._tables:
                self._tables.append(entry)
        if tables:
            all_tags["mlflow.loggedArtifacts"] = json.dumps(self._tables)
        if all_tags:
            self.set_tags(None, all_tags)
        if step is None:
            step = self._results_step
        if metrics:
            self.log_metrics(None, metrics, step)
        self._results_step = step + 1
        for name, obj in json_artifacts.items():
            fname = name if name.endswith(".json") else f"{name}.json"
            path = self._new_file(fname)
            path.write_text(json.dumps(_plain(obj), indent=2, default=str, allow_nan=False))
            self._enqueue({"kind": "artifact", "trial": None, "path": str(path),
                           "dir": "results", "owned": True}, wake=False)
        for name, table in (tables or {}).items():
            fname = name if name.endswith(".json") else f"{name}.json"
            path = self._new_file(fname)
            doc = {"columns": list(table["columns"]), "data": _plain([list(r) for r in table["data"]])}
            path.write_text(json.dumps(doc, default=str, allow_nan=False))
            self._enqueue({"kind": "artifact", "trial": None, "path": str(path),
                           "dir": "tables", "owned": True}, wake=False)
        for name, text in (texts or {}).items():
            path = self._new_file(name)
            path.write_text(text)
            self._enqueue({"kind": "artifact", "trial": None, "path": str(path),
                           "dir": None, "owned": True}, wake=False)
        for name, fig in figures.items():
            fname = name if name.endswith(".png") else f"{name}.png"
            path = self._new_file(fname)
            # Rendered here, in the caller's thread: matplotlib figures are not thread-safe.
            fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
            self._enqueue({"kind": "artifact", "trial": None, "path": str(path),
                           "dir": "plots", "owned": True}, wake=False)
        self._wake.set()

    def log_artifact(self, trial_id: Optional[str], local_path: str | Path,
                     artifact_dir: str | None = None) -> None:
        """Upload a file (kept by the caller until delivered) to a trial's or the sweep's run."""
        self._enqueue({"kind": "artifact", "trial": trial_id, "path": str(Path(local_path).resolve()),
                       "dir": artifact_dir, "owned": False})

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Deliver everything enqueued so far; True if done within `timeout` seconds."""
        target = self._seq
        deadline = None if timeout is None else time.monotonic() + timeout
        last_poke = -math.inf
        with self._cond:
            while self._done_seq < target:
                if not self._thread.is_alive():
                    return False
                now = time.monotonic()
                left = None if deadline is None else deadline - now
                if left is not None and left <= 0:
                    return False
                if now - last_poke >= 0.25:
                    # Re-poke at most 4x/s so a flush retries an outage promptly instead of
                    # waiting out the backoff, without hammering a dead server.
                    last_poke = now
                    self._force = True
                    self._wake.set()
                self._cond.wait(0.25 if left is None else min(0.25, left))
        return True

    def close(self, status: str = "FINISHED", timeout: float = 30.0) -> int:
        """End open trial runs and the parent run, flush, stop; returns ops left spooled."""
        if self._closed:
            return self.pending
        self._closed = True
        child_status = status if status in ("FINISHED", "FAILED", "KILLED") else "KILLED"
        for trial_id in sorted(self._trials_started - self._trials_ended):
            self.end_trial(trial_id, child_status)
        if self._parent_enqueued:
            self._enqueue({"kind": "end", "trial": None, "status": status,
                           "end_ms": int(time.time() * 1000)})
        self.flush(timeout)
        with self._cond:
            self._stopping = True
        self._wake.set()
        self._thread.join(timeout=max(5.0, timeout))
        if isinstance(self._client, HelperProcess) and not self._thread.is_alive():
            self._client.close()
        left = self.pending
        if left:
            log.warning(
                "MLflow at %s: %d operation(s) not delivered; kept in %s and replayed by the "
                "next SweepTracker on this buffer_dir", self.tracking_uri, left, self.spool_path,
            )
        return left

    def __enter__(self) -> "SweepTracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("FAILED" if exc_type is not None else "FINISHED")

    # ------------------------------------------------------------------ queue + spool
    def _enqueue(self, op: dict[str, Any], wake: bool = True) -> None:
        with self._cond:
            if self._stopping:
                # Never raise into the caller: after close() the op goes straight to the
                # spool, where the next tracker on this buffer_dir picks it up.
                self._seq += 1
                op["seq"] = self._seq
                op["parent"] = self._parent_id
                op["run"] = self.run_id(op.get("trial"))
                self._spool_write([op])
                log.warning("SweepTracker for %s is closed: %s operation spooled to %s",
                            self.sweep_name, op["kind"], self.spool_path)
                return
            self._seq += 1
            op["seq"] = self._seq
            # Recorded so a spool replayed by a later process still finds the runs.
            op["parent"] = self._parent_id
            if op["kind"] not in ("parent", "trial"):
                op["run"] = self.run_id(op.get("trial"))
            self._inbox.append(op)
            self.stats["ops"] += 1
        if wake and hasattr(self, "_wake"):
            self._wake.set()

    def _wait_created(self, trial_id: Optional[str]) -> None:
        """Wait until a create op is delivered, or one failed attempt shows MLflow is down."""
        deadline = time.monotonic() + self.sync_timeout_s
        with self._cond:
            start_attempts = self._attempts
            while self.run_id(trial_id) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if self._spooling and self._attempts >= start_attempts + 2:
                    return
                self._force = True
                self._wake.set()
                self._cond.wait(min(left, 0.1))

    def _new_file(self, name: str) -> Path:
        d = self._files_dir / uuid.uuid4().hex[:12]
        d.mkdir(parents=True, exist_ok=True)
        return d / name

    def _spool_write(self, records: Iterable[dict[str, Any]]) -> None:
        try:
            with open(self.spool_path, "a", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r, separators=(",", ":")) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # full disk, permissions: memory still holds everything
            if not self._spool_failed:
                self._spool_failed = True
                log.error("cannot write the MLflow spool %s (%s); buffering in memory only",
                          self.spool_path, exc)

    def _replay_spool(self) -> None:
        """Load what an earlier tracker on this buffer_dir could not deliver."""
        if not self.spool_path.exists():
            return
        ops: list[dict[str, Any]] = []
        done = 0
        with open(self.spool_path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash mid-write
                if "done" in rec:
                    done = max(done, int(rec["done"]))
                elif "seq" in rec:
                    ops.append(rec)
        ops = sorted((o for o in ops if o["seq"] > done), key=lambda o: o["seq"])
        # Renumber into this tracker's sequence; the old file is superseded by a new one.
        self.spool_path.unlink()
        for op in ops:
            op["replayed"] = True
            self._seq += 1
            op["seq"] = self._seq
            self._pending.append(op)
        self.stats["replayed"] = len(ops)
        if ops:
            self._spooling = True
            self._spool_write(ops)
            log.warning("replaying %d undelivered MLflow operation(s) from %s",
                        len(ops), self.spool_path)
            self._trials_started.update(o["trial"] for o in ops if o["kind"] == "trial")
            self._parent_enqueued = any(o["kind"] == "parent" for o in ops)
            self._trials_ended.update(
                o["trial"] for o in ops if o["kind"] == "end" and o["trial"] is not None)

    # ------------------------------------------------------------------ worker
    def _worker(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            with self._cond:
                drained = list(self._inbox)
                self._inbox.clear()
                stopping = self._stopping
                force = self._force
                self._force = False
            if drained:
                self._pending.extend(drained)
                if self._spooling:
                    self._spool_write(drained)
            if self._pending and (force or stopping or time.monotonic() >= self._next_try):
                try:
                    self._deliver_all()
                except Exception:  # noqa: BLE001 - the worker must outlive any bug or I/O error
                    log.exception("MLflow tracker: unexpected error; will retry")
                    self._backoff = min(self.max_backoff_s, max(0.5, self._backoff * 2))
                    self._next_try = time.monotonic() + self._backoff
            with self._cond:
                self._attempts += 1
                self._cond.notify_all()
                if stopping:
                    if not self._pending and not self._inbox:
                        self._finish_spool()
                    elif self._pending and not self._spooling:
                        self._start_spool()
                    return

    def _deliver_all(self) -> None:
        while self._pending:
            group = self._next_group()
            try:
                self._deliver(group)
            except Exception as exc:  # noqa: BLE001 - MLflow raises many types when down
                if _is_permanent(exc) and len(group) > 1:
                    try:
                        self._deliver_singly(group)
                    except Exception as exc2:  # noqa: BLE001 - went down meanwhile
                        self._outage(exc2)
                        return
                elif _is_permanent(exc):
                    self._drop(group[0], exc)
                else:
                    self._outage(exc)
                    return
            else:
                self._ack(group)
        self._backoff = 0.0
        self._next_try = 0.0

    def _deliver_singly(self, group: list[dict[str, Any]]) -> None:
        for op in group:
            try:
                self._deliver([op])
            except Exception as exc:  # noqa: BLE001
                if not _is_permanent(exc):
                    raise
                self._drop(op, exc)
            else:
                self._ack([op])

    def _next_group(self) -> list[dict[str, Any]]:
        """The head op; or, for metrics and tags, the run of consecutive metric and tag ops (any trial).

        Metric and tag ops of different runs commute, and so do a run's metrics and tags;
        reports from concurrent trials arrive interleaved: regrouping them per run makes one
        `log_batch` per trial per flush instead of one per report, and a trial's closing tags
        ride with its last metrics (each MLflow call costs ~4 ms of SQLite work at least).
        """
        head = self._pending[0]
        group = [head]
        if head["kind"] not in _BATCHED:
            return group
        n = len(head.get("m", ()))
        for op in itertools.islice(self._pending, 1, None):
            if op["kind"] not in _BATCHED or n + len(op.get("m", ())) > METRICS_PER_WINDOW:
                break
            group.append(op)
            n += len(op.get("m", ()))
        return group

    def _ack(self, group: list[dict[str, Any]]) -> None:
        for _ in group:
            self._pending.popleft()
        last = group[-1]["seq"]
        if self._spooling and not self._pending:
            log.warning("MLflow at %s is reachable again: delivered the buffered operations",
                        self.tracking_uri)
            self._finish_spool()  # before waiters wake: a flushed tracker has no spool
        elif self._spooling:
            self._spool_write([{"done": last}])
        with self._cond:
            self._done_seq = last
            self.stats["delivered"] += len(group)
            self._cond.notify_all()

    def _drop(self, op: dict[str, Any], exc: BaseException) -> None:
        log.error("MLflow rejected a %s operation for %s (dropped): %s",
                  op["kind"], op.get("trial") or "the sweep", exc)
        self.stats["dropped"] += 1
        self._ack([op])

    def _outage(self, exc: BaseException) -> None:
        self.stats["failed_attempts"] += 1
        if not self._spooling:
            self.stats["outages"] += 1
            self._start_spool()
            if not self._warned:
                self._warned = True
                log.warning(
                    "MLflow at %s is unreachable (%s); buffering %d operation(s) in memory "
                    "and in %s, retrying with backoff", self.tracking_uri,
                    str(exc).splitlines()[0][:200], len(self._pending), self.spool_path,
                )
        self._backoff = min(self.max_backoff_s, max(0.5, self._backoff * 2))
        self._next_try = time.monotonic() + self._backoff

    def _start_spool(self) -> None:
        self._spooling = True
        self._spool_write(self._pending)

    def _finish_spool(self) -> None:
        """Everything delivered: the spool (and delivered owned files) can go."""
        self._spooling = False
        try:
            self.spool_path.unlink()
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ delivery
    def _deliver(self, group: list[dict[str, Any]]) -> None:
        kind = group[0]["kind"]
        if kind in _BATCHED:
            self._deliver_batch(group)
            return
        op = group[0]
        if kind == "parent":
            self._create_parent(op)
        elif kind == "trial":
            self._create_trial(op)
        elif kind == "params":
            self._log_params(self._resolve(op), op["params"])
        elif kind == "artifact":
            self._client.log_artifact(self._resolve(op), op["path"], op["dir"])
            if op.get("owned"):
                shutil.rmtree(Path(op["path"]).parent, ignore_errors=True)
        elif kind == "end":
            run_id = self._resolve(op)
            self._client.set_terminated(run_id, op["status"], op["end_ms"])
        elif kind == "stale":
            self._end_stale(op)
        else:
            raise MlflowException(f"unknown op {kind}", error_code="INVALID_PARAMETER_VALUE")

    def _deliver_batch(self, group: list[dict[str, Any]]) -> None:
        """One log_batch per run (<= 1000 metrics, <= 100 tags each): metrics in report order
        within a run, tags merged in op order (a later value of a key wins, as separate calls would).

        Progress is kept per op (`sent`), so a window interrupted by an outage resumes
        where it stopped instead of resending delivered batches (tags are idempotent).
        """
        by_run: dict[Any, tuple[list[tuple[dict[str, Any], int]], list[dict[str, Any]]]] = {}
        for op in group:
            rows, tag_ops = by_run.setdefault(op.get("trial"), ([], []))
            if op["kind"] == "metrics":
                rows.extend((op, i) for i in range(op.get("sent", 0), len(op["m"])))
            elif not op.get("sent"):
                tag_ops.append(op)
        for rows, tag_ops in by_run.values():
            if not rows and not tag_ops:
                continue
            run_id = self._resolve(rows[0][0] if rows else tag_ops[0])
            tags = [RunTag(k, v) for k, v in {k: v for op in tag_ops for k, v in op["tags"].items()}.items()]
            chunks = itertools.zip_longest(
                [rows[i:i + MAX_METRICS_PER_BATCH] for i in range(0, len(rows), MAX_METRICS_PER_BATCH)],
                [tags[i:i + MAX_PARAMS_TAGS_PER_BATCH] for i in range(0, len(tags), MAX_PARAMS_TAGS_PER_BATCH)],
                fillvalue=[])
            for chunk, tag_chunk in chunks:
                metrics = [Metric(*op["m"][i]) for op, i in chunk]
                self._client.log_batch(run_id, metrics=metrics, tags=tag_chunk, synchronous=True)
                for op, i in chunk:
                    op["sent"] = i + 1
                self.stats["batches"] += 1
                self.stats["metrics"] += len(metrics)
            for op in tag_ops:
                op["sent"] = 1

    def _end_stale(self, op: dict[str, Any]) -> None:
        parent = self._resolve(op)
        stale, token = [], None
        while True:  # every page first: ending runs while paging would shift the (offset) pages
            runs = self._client.search_runs(
                [self._experiment_id()], max_results=1000, page_token=token,
                filter_string=f"tags.`{TAG_PARENT}` = '{parent}' and attributes.status = 'RUNNING'")
            stale += [(run.info.run_id, run.data.tags.get(TAG_TRIAL)) for run in runs]
            token = runs.token
            if not token:
                break
        for run_id, trial_id in stale:
            if trial_id in op["ended"] and trial_id not in self._trials_started:
                status, tags = op["ended"][trial_id]
                self._log_tags(run_id, tags)
                self._client.set_terminated(run_id, status)

    def _resolve(self, op: dict[str, Any]) -> str:
        trial_id = op.get("trial")
        run_id = self.run_id(trial_id) or op.get("run")
        if trial_id is None and run_id is None:
            run_id = op.get("parent")
        parent = self._parent_id or op.get("parent")
        if run_id is None and trial_id is not None and parent is not None:
            run_id = self._find_by_tag(
                f"tags.`{TAG_TRIAL}` = '{_quote(trial_id)}' and tags.`{TAG_PARENT}` = '{parent}'")
            if run_id is not None:
                self._run_ids[trial_id] = run_id
        if run_id is None:
            what = f"trial {trial_id!r}" if trial_id else "the sweep"
            raise MlflowException(f"no MLflow run for {what} (start it first)",
                                  error_code="RESOURCE_DOES_NOT_EXIST")
        return run_id

    def _experiment_id(self) -> str:
        if self._exp_id is None:
            exp = self._client.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    self._exp_id = self._client.create_experiment(
                        self.experiment, artifact_location=self._artifact_location)
                except MlflowException as exc:  # created concurrently by someone else
                    exp = self._client.get_experiment_by_name(self.experiment)
                    if exp is None:
                        raise exc
                    self._exp_id = exp.experiment_id
            else:
                self._exp_id = exp.experiment_id
        return self._exp_id

    def _find_by_tag(self, filter_string: str) -> Optional[str]:
        runs = self._client.search_runs(
            [self._experiment_id()], filter_string=filter_string, max_results=1,
            order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    def _create_parent(self, op: dict[str, Any]) -> None:
        exp_id = self._experiment_id()
        run_id = op.get("resume")
        if run_id:
            self._client.update_run(run_id, status="RUNNING")
        elif self._parent_id is not None:
            run_id = self._parent_id  # resumed from a replayed spool in this process
        else:
            # A retried create may have reached the server before the connection broke.
            run_id = self._find_by_tag(f"tags.`{TAG_TOKEN}` = '{op['token']}'")
            if run_id is None:
                run = self._client.create_run(
                    exp_id, tags={**op["tags"], TAG_TOKEN: op["token"]}, run_name=self.sweep_name)
                run_id = run.info.run_id
                self._created_parent = run_id
        existing = self._client.get_run(run_id).data.params
        self._log_params(run_id, {k: v for k, v in op["params"].items() if k not in existing})
        self._log_tags(run_id, op["tags"])
        for path, art_dir, owned in op["artifacts"]:
            self._client.log_artifact(run_id, path, art_dir)
            if owned:
                shutil.rmtree(Path(path).parent, ignore_errors=True)
        with self._cond:
            self._parent_id = run_id
            self._cond.notify_all()

    def _create_trial(self, op: dict[str, Any]) -> None:
        trial_id = op["trial"]
        parent = self._resolve({"trial": None, "parent": op.get("parent")})
        exp_id = self._experiment_id()
        # Idempotent across restarts and lost responses: reuse the child run that already
        # carries this trial's tags under this parent. Under a parent this tracker created,
        # such a run can exist only if an earlier attempt of this op reached the server: a
        # first attempt skips the search (it grows with the experiment, tens of ms per trial
        # in a sweep of thousands).
        first_try = parent == self._created_parent and not op.get("tried") and not op.get("replayed")
        op["tried"] = True
        run_id = self._run_ids.get(trial_id) or (None if first_try else self._find_by_tag(
            f"tags.`{TAG_TRIAL}` = '{_quote(trial_id)}' and tags.`{TAG_PARENT}` = '{parent}'"))
        if run_id is None:
            run = self._client.create_run(
                exp_id, tags={**op["tags"], TAG_PARENT: parent, TAG_TOKEN: op["token"]},
                run_name=op.get("name") or trial_id)
            run_id = run.info.run_id
            self._log_params(run_id, op["params"])
        else:
            run = self._client.get_run(run_id)
            if run.info.status != "RUNNING":
                self._client.update_run(run_id, status="RUNNING")
            existing = run.data.params
            self._log_params(run_id, {k: v for k, v in op["params"].items() if k not in existing})
        with self._cond:
            self._run_ids[trial_id] = run_id
            self._cond.notify_all()

    def _log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(run_id, params=items[i:i + MAX_PARAMS_TAGS_PER_BATCH],
                                   synchronous=True)

    def _log_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        items = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(run_id, tags=items[i:i + MAX_PARAMS_TAGS_PER_BATCH],
                                   synchronous=True)


def _quote(s: str) -> str:
    return s.replace("'", "\\'")


def _tag_values(tags: Mapping[str, Any]) -> dict[str, str]:
    return {str(k)[:MAX_KEY_LENGTH]: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in tags.items()}


def _plain(obj: Any) -> Any:
    """JSON/YAML-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars
        return _plain(obj.tolist())
    if hasattr(obj, "to_json") and callable(obj.to_json):  # FitResult and friends
        return _plain(obj.to_json())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_sweep_runs(tracking_uri: str, sweep_name: str, experiment: str | None = None):
    """The latest parent run of `sweep_name` and its child runs (sorted by trial id)."""
    client = MlflowClient(tracking_uri)
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise LookupError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
        exp_ids = [exp.experiment_id]
    else:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(
        exp_ids,
        filter_string=f"tags.`{TAG_SWEEP}` = '{_quote(sweep_name)}' and tags.`{TAG_KIND}` = 'sweep'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise LookupError(f"no MLflow parent run for sweep {sweep_name!r} at {tracking_uri}")
    parent = parents[0]
    children = []
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{TAG_PARENT}` = '{parent.info.run_id}'",
            max_results=1000, page_token=token)
        children.extend(page)
        token = page.token
        if not token:
            break
    children.sort(key=lambda r: r.data.tags.get(TAG_TRIAL, ""))
    return parent, children
