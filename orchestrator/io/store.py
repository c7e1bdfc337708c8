"""The observation store: append-only Parquet under the sweep directory.

It is the single source of truth of a sweep. Three tables, each a folder of immutable
Parquet part files:

- `observations/`: one row per report (trial_id, step, tokens, flops, lr, train_loss,
  eval_loss, tokens_per_s, step_time_s, eval_flops, eval_time_s, wall_time, done, extra);
  `extra` is a map name -> value of a trainer's own metrics beyond the contract's keys
  (`grad_norm`, ...; trainers.contract.normalise_report), null when it reported none;
- `trials/`: one row per trial *event* (planned, running, finished, stopped, diverged,
  failed, stopped-by-user) with the trial's config and summary as JSON; the latest event is the state;
- `task_metrics/`: one row per downstream-task metric of a report (trial_id, step, task,
  metric, value): a long table, so any task a spec names fits one fixed schema.

Stores written before a column or table existed stay readable: a part lacking a column reads
it as null (eval_flops, eval_time_s, extra came later), a store without `task_metrics/` has no task rows.

Every part is written to a temporary file and renamed into place, so a crash never
leaves a half-written part. Reads deduplicate on (trial_id, step) keeping the last
write, so re-sent reports (a restarted trial, a retried flush) are idempotent.

Reports are buffered between flushes, but each one is first appended to a write-ahead
log (`wal/*.jsonl`, fsynced) that the part written by the next flush supersedes. A
controller killed between two flushes loses nothing: `recover()` (called by the
controller when a sweep starts or resumes) turns what the logs hold into a part. This
matters because a trial checkpoints right after its report is acknowledged: without the
log a resumed trial would continue after rows the store never got (a gap).
Any write failure (full disk, permissions, a path that is a file) raises `StoreError`
naming the path and the reason; the parts already written stay whole.

Long because it is one class: `ObservationStore`'s three tables share one write, flush and write-ahead-log
recovery path; the few reads every query shares follow it.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainers.contract import split_task_key

from ..core.planning.branching import spent_flops
from .store_location import StoreLocation, is_uri

OBS_SCHEMA = pa.schema(
    [
        ("trial_id", pa.string()),
        ("step", pa.int64()),
        ("tokens", pa.int64()),
        ("flops", pa.float64()),
        ("lr", pa.float64()),
        ("train_loss", pa.float64()),
        ("eval_loss", pa.float64()),
        ("tokens_per_s", pa.float64()),
        ("step_time_s", pa.float64()),
        ("eval_flops", pa.float64()),  # optional report keys (trainers.contract.OPTIONAL_REPORT_KEYS)
        ("eval_time_s", pa.float64()),
        ("wall_time", pa.float64()),
        ("done", pa.bool_()),
        ("extra", pa.map_(pa.string(), pa.float64())),  # a trainer's own metrics; rows read it as [(name, value)]
        ("seq", pa.int64()),  # write order, for last-write-wins deduplication
    ]
)

TRIAL_SCHEMA = pa.schema(
    [
        ("trial_id", pa.string()),
        ("status", pa.string()),
        ("time", pa.float64()),
        ("config", pa.string()),  # JSON
        ("summary", pa.string()),  # JSON (final loss, reason for a stop, ...)
        ("seq", pa.int64()),
    ]
)

TASK_SCHEMA = pa.schema(
    [
        ("trial_id", pa.string()),
        ("step", pa.int64()),
        ("task", pa.string()),
        ("metric", pa.string()),  # acc, acc_norm, loss (the task's NLL), chance
        ("value", pa.float64()),
        ("seq", pa.int64()),
    ]
)
TASK_KEY = ["trial_id", "step", "task", "metric"]

LOCATION_FILE = "LOCATION"  # in <sweep dir>/store: the URI of a store kept in an object store
STOPPED_BY_USER = "stopped-by-user"  # ended by a stop request (Ctrl-C, SIGTERM, `scalesweep stop`): resume reruns it
TRIAL_STATES = ("planned", "running", "finished", "stopped", "diverged", "failed", STOPPED_BY_USER)
RESUME_SKIPS = ("finished", "diverged", "stopped")  # ended for good: `resume` does not rerun them


class StoreError(RuntimeError):
    """The store cannot be written or read (disk full, permissions, corrupt part)."""


class ObservationStore:
    """Append-only observation and trial-event tables of one sweep.

    Appends are buffered in memory and written as one part per `flush()`; callers flush
    at trial boundaries and periodically (`flush_every_s`), trading a few seconds of
    at-risk rows for not writing thousands of tiny files.
    """

    def __init__(self, sweep_dir: str | Path, flush_every_s: float = 5.0, fsync: bool = True,
                 location: Optional[str] = None):
        # `location`: where the parts live, an object-store prefix (s3://bucket/prefix) or None for
        # <sweep_dir>/store. A sweep directory whose store is elsewhere says where in
        # store/LOCATION (written here), so every reader that opens the directory finds it; a
        # `sweep_dir` that is itself a URI opens the store at that prefix (no local directory).
        local: Optional[Path] = None
        if is_uri(sweep_dir):
            location = location or str(sweep_dir)
        else:
            local = Path(sweep_dir) / "store"
            pointer = local / LOCATION_FILE
            if location is None and pointer.is_file():
                location = pointer.read_text().strip() or None
        self.location = StoreLocation(location if location is not None else local)
        self.root = local if local is not None else self.location.root  # the local folder (its log, its pointer)
        self.flush_every_s = flush_every_s
        # fsync each logged report: needed when trials checkpoint (a report must be on disk
        # before the checkpoint that follows it survives a machine crash). Without it a
        # logged report still reaches the OS at once, so a killed controller loses nothing;
        # only an OS crash could (≈1.4 ms per report saved: the controller's sweeps of many
        # short simulated trials run without checkpoints).
        self.fsync = fsync
        self._obs: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._tasks: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._seq = time.time_ns()
        self._wal = None  # open write-ahead log of the rows in self._obs (opened on the first append)
        self._sealed: list[Path] = []  # closed logs whose rows are all in self._obs (deleted once flushed)
        self._memo: dict[str, tuple[tuple[str, ...], pa.Table]] = {}  # table -> (its parts, as read): `_read`
        # The write-ahead log is always a local folder (an object cannot be appended to): beside
        # the pointer, or for a store opened by its URI alone, a folder of this machine's named after it.
        self._wal_dir = local / "wal" if local is not None else _local_wal_dir(self.location.uri)
        for sub in ("observations", "trials", "task_metrics"):
            try:
                self.location.makedirs(sub)
            except OSError as exc:
                raise StoreError(f"cannot create the store at {self.location.describe(sub)}: {exc}") from exc
        try:
            if local is not None and self.location.remote:
                local.mkdir(parents=True, exist_ok=True)
                if not (local / LOCATION_FILE).is_file():
                    (local / LOCATION_FILE).write_text(self.location.uri + "\n")
        except OSError as exc:
            raise StoreError(f"cannot create the store's local folder at {local}: {exc}") from exc

    # ---- writes ------------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def append(self, trial_id: str, report: dict[str, Any]) -> None:
        """Buffer one report of a trial (keys as in trainers.contract.REPORT_KEYS; `extra`: {name: value})."""
        row = {name: report.get(name) for name in OBS_SCHEMA.names}
        row["trial_id"] = trial_id
        row["step"] = int(report["step"])
        row["tokens"] = int(report.get("tokens", 0))
        row["done"] = bool(report.get("done", False))
        row["wall_time"] = float(report.get("wall_time", time.time()))
        for key in ("flops", "lr", "train_loss", "eval_loss", "tokens_per_s", "step_time_s", "eval_flops", "eval_time_s"):
            val = report.get(key)
            row[key] = float("nan") if val is None else float(val)
        extra = report.get("extra")
        row["extra"] = {str(k): float(v) for k, v in extra.items()} if extra else None
        tasks = [[*tm, float(v)] for k, v in report.items() if (tm := split_task_key(k)) is not None]
        with self._lock:
            row["seq"] = self._next_seq()
            if tasks:
                row["tasks"] = tasks  # logged with the report; a flush writes them to task_metrics/
            # Buffered before it is logged: a KeyboardInterrupt (a second Ctrl-C) between the two must
            # not leave a logged row outside the buffer, whose log the next flush would delete.
            self._obs.append(row)
            self._tasks.extend(_task_rows(row))
            self._log(row)
        if time.monotonic() - self._last_flush > self.flush_every_s:
            self.flush()

    def _log(self, row: dict[str, Any]) -> None:
        """Append one row to the write-ahead log, durably (called with the lock held)."""
        try:
            if self._wal is None:
                folder = self._wal_dir
                folder.mkdir(parents=True, exist_ok=True)
                self._wal = open(folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl", "a", encoding="utf-8")
            self._wal.write(json.dumps(row, allow_nan=True) + "\n")
            self._wal.flush()
            if self.fsync:
                os.fsync(self._wal.fileno())
        except OSError as exc:
            raise StoreError(f"cannot write to the store's log at {self._wal_dir}: {exc.strerror or exc}") from exc

    def recover(self) -> int:
        """Write the rows of write-ahead logs left by a process that died before flushing (as a part).

        Call it only where no other process writes this store (the controller, at start).
        Returns the number of rows recovered (already-flushed ones included: reads deduplicate).
        """
        folder = self._wal_dir
        logs = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
        rows: list[dict[str, Any]] = []
        for path in logs:
            if self._wal is not None and path == Path(self._wal.name):
                continue
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass  # a torn last line: that report was never acknowledged
        if rows:
            self._write_part("observations", pa.Table.from_pylist(rows, schema=OBS_SCHEMA))
            tasks = [t for row in rows for t in _task_rows(row)]
            if tasks:
                self._write_part("task_metrics", pa.Table.from_pylist(tasks, schema=TASK_SCHEMA))
        for path in logs:
            if self._wal is None or path != Path(self._wal.name):
                path.unlink(missing_ok=True)
        return len(rows)

    def set_status(
        self, trial_id: str, status: str, config: Optional[dict] = None, summary: Optional[dict] = None
    ) -> None:
        """Record a trial event.

        An end (finished, stopped, diverged, failed) is written through at once: it decides
        what a resumed sweep runs again. A start (planned, running) waits for the next flush
        (at most `flush_every_s`, or the next end event): a controller killed meanwhile reruns
        that trial anyway, and a part per start would double the parts of a sweep of many
        short trials (one written-through part costs milliseconds).
        """
        if status not in TRIAL_STATES:
            raise ValueError(f"unknown trial status {status!r}; one of {TRIAL_STATES}")
        with self._lock:
            self._events.append(
                {
                    "trial_id": trial_id,
                    "status": status,
                    "time": time.time(),
                    "config": json.dumps(config, default=float) if config is not None else None,
                    "summary": json.dumps(summary, default=float) if summary is not None else None,
                    "seq": self._next_seq(),
                }
            )
        if status not in ("planned", "running") or time.monotonic() - self._last_flush > self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows as new immutable parts (atomically).

        A log is deleted only by the flush whose part holds its rows. A flush that fails or is
        interrupted (KeyboardInterrupt: a second Ctrl-C lands anywhere in the controller's main
        thread) hands its rows and logs back for the next flush; if it cannot, the logs stay on
        disk, owned by no flush, for `recover()`: a logged report is never lost.
        """
        with self._lock:
            if self._wal is not None:  # its rows are all in `self._obs`; later rows go to a new log
                self._sealed.append(Path(self._wal.name))
                self._wal.close()
                self._wal = None
            # `_sealed` is emptied first: interrupted between these stores, the logs are orphaned
            # (recovered on resume), never left to a flush whose buffer lacks their rows.
            sealed, obs, tasks, events = self._sealed, self._obs, self._tasks, self._events
            self._sealed, self._obs, self._tasks, self._events = [], [], [], []
            self._last_flush = time.monotonic()
        try:
            if obs:
                self._write_part("observations", pa.Table.from_pylist(obs, schema=OBS_SCHEMA))
            if tasks:
                self._write_part("task_metrics", pa.Table.from_pylist(tasks, schema=TASK_SCHEMA))
            if events:
                self._write_part("trials", pa.Table.from_pylist(events, schema=TRIAL_SCHEMA))
        except BaseException:
            with self._lock:  # keep the rows: a later flush may succeed (disk freed); rewrites dedupe
                self._obs[:0] = obs
                self._tasks[:0] = tasks
                self._events[:0] = events
                self._sealed[:0] = sealed  # after the rows they hold (see above)
            raise
        for path in sealed:  # superseded by the part just written
            path.unlink(missing_ok=True)

    def _write_part(self, table_name: str, table: pa.Table) -> str:
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        try:
            return self.location.write_table(table_name, name, table)
        except OSError as exc:
            raise StoreError(f"cannot write to the store at {self.location.describe(table_name)}: "
                             f"{exc.strerror or exc}") from exc

    def close(self) -> None:
        """Flush everything still buffered."""
        self.flush()

    # ---- reads -------------------------------------------------------------------------
    def _read(self, table_name: str, schema: pa.Schema) -> pa.Table:
        # One query reads a table several times (trials, last reports, ended trials, ...): the table
        # read last is kept with the part listing it came from and served again while the listing is
        # the same. Parts are immutable and uniquely named, and every write (a flush here, another
        # process's part, a compaction) changes the listing, so a kept table is never stale.
        try:
            parts = tuple(self.location.parts(table_name))
            kept = self._memo.get(table_name)
            if kept is not None and kept[0] == parts:
                return kept[1]
            table = (pa.concat_tables([self.location.read_table(p, schema=schema) for p in parts]) if parts
                     else schema.empty_table())
        except Exception as exc:
            raise StoreError(f"cannot read the store at {self.location.describe(table_name)}: {exc}") from exc
        self._memo[table_name] = (parts, table)
        return table

    def observations(self, trial_id: Optional[str] = None) -> pa.Table:
        """All reports, one row per (trial_id, step) (last write wins), sorted by trial and step."""
        self.flush()
        table = self._read("observations", OBS_SCHEMA)
        if trial_id is not None:
            table = table.filter(pc.equal(table["trial_id"], trial_id))
        return _last_per_key(table, ["trial_id", "step"]).sort_by([("trial_id", "ascending"), ("step", "ascending")])

    def extras(self, trial_id: Optional[str] = None) -> dict[str, dict[int, dict[str, float]]]:
        """A trainer's own metrics per report: {trial_id: {step: {name: value}}}, reports without any left out."""
        table = self.observations(trial_id).select(["trial_id", "step", "extra"])
        out: dict[str, dict[int, dict[str, float]]] = {}
        for row in table.to_pylist():
            if row["extra"]:
                out.setdefault(row["trial_id"], {})[row["step"]] = dict(row["extra"])
        return out

    def task_metrics(self, trial_id: Optional[str] = None) -> pa.Table:
        """All task metrics (TASK_SCHEMA), one row per (trial_id, step, task, metric), last write wins."""
        self.flush()
        table = self._read("task_metrics", TASK_SCHEMA)
        if trial_id is not None:
            table = table.filter(pc.equal(table["trial_id"], trial_id))
        return _last_per_key(table, TASK_KEY).sort_by([(k, "ascending") for k in TASK_KEY])

    def trials(self) -> dict[str, dict[str, Any]]:
        """Latest state of every trial: {trial_id: {status, config, summary, time}}.

        The config is the one given with the first event that carried one; the summary
        the latest non-empty one.
        """
        self.flush()
        table = self._read("trials", TRIAL_SCHEMA).sort_by("seq")
        out: dict[str, dict[str, Any]] = {}
        for row in table.to_pylist():
            rec = out.setdefault(row["trial_id"], {"status": None, "config": None, "summary": None, "time": None})
            rec["status"] = row["status"]
            rec["time"] = row["time"]
            if row["config"] is not None and rec["config"] is None:
                rec["config"] = json.loads(row["config"])
            if row["summary"] is not None:
                rec["summary"] = json.loads(row["summary"])
        return out

    def last_reports(self, finite: Optional[str] = None) -> dict[str, dict[str, Any]]:
        """Each trial's last report; with `finite`, its last report where that column is not NaN."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.observations().to_pylist():  # sorted by trial and step: the last one wins
            if finite is None or row[finite] == row[finite]:
                out[row["trial_id"]] = row
        return out

    def compact(self) -> None:
        """Rewrite each table as a single deduplicated part (atomic; safe to interrupt)."""
        self.flush()
        for name, schema, key in (("observations", OBS_SCHEMA, ["trial_id", "step"]), ("trials", TRIAL_SCHEMA, None),
                                  ("task_metrics", TASK_SCHEMA, TASK_KEY)):
            old = self.location.parts(name)
            if len(old) <= 1:
                continue
            table = self._read(name, schema)
            if key:
                table = _last_per_key(table, key)
            self._write_part(name, table.sort_by("seq"))
            for p in old:
                self.location.delete(p)


def _last_per_key(table: pa.Table, key: Iterable[str]) -> pa.Table:
    """Keep the row with the highest `seq` for each key, ordered by key."""
    key = list(key)
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in key] + [("seq", "descending")])
    t = table.take(order)
    first = np.ones(t.num_rows, dtype=bool)
    for k in key:
        col = t[k].to_numpy(zero_copy_only=False)
        first[1:] &= col[1:] == col[:-1]
    keep = np.ones(t.num_rows, dtype=bool)
    keep[1:] = ~first[1:]  # a row whose key equals the previous row's is an older duplicate
    return t.filter(pa.array(keep))


def final_points(store: ObservationStore) -> list[dict[str, Any]]:
    """One row per finished trial: its config and its final eval loss (the L(N, D) fit's input)."""
    trials = store.trials()
    last = store.last_reports(finite="eval_loss")
    out = []
    for tid, rec in trials.items():
        if rec["status"] != "finished" or tid not in last or rec["config"] is None:
            continue
        out.append({**rec["config"], "trial_id": tid, "loss": last[tid]["eval_loss"],
                    "flops_spent": spent_flops(last[tid]["flops"], rec["config"])})
    return out


def final_task_points(store: ObservationStore, points: Optional[list[dict[str, Any]]] = None) -> list[dict[str, Any]]:
    """The downstream fits' input (orchestrator.core.laws.downstream_proposals): one row per (finished
    trial, task) evaluated at the trial's final report, ``{"task", "N", "D", "acc", "trial_id"}``
    plus ``acc_norm``, ``task_loss`` and ``chance`` where measured.

    ``points`` (default `final_points(store)`): only the trials of each (N, D) cell's best (lr,
    batch) count (`orchestrator.core.cells.best_per_cell`, the L(N, D) fit's points): proposals
    are tuned configs, and an untuned lr would pull the accuracy law down. Empty when no task ran.
    """
    from ..core.cells import assign_cells, best_per_cell

    table = store.task_metrics()
    if table.num_rows == 0:
        return []
    points = final_points(store) if points is None else [p for p in points if math.isfinite(float(p["loss"]))]
    best = {(b["N"], b["cell_D"], b["lr"], b["batch"]) for b in best_per_cell(points)}
    keep = {p["trial_id"]: p for p, c in zip(points, assign_cells(points)) if (c.N, c.D, p["lr"], p["batch"]) in best}
    last_step = {tid: row["step"] for tid, row in store.last_reports().items()}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in table.to_pylist():
        p = keep.get(r["trial_id"])
        if p is None or r["step"] != last_step.get(r["trial_id"]):
            continue  # not a tuned point, or not the trial's final evaluation (its D is another)
        row = rows.setdefault((r["trial_id"], r["task"]), {"task": r["task"], "N": float(p["N"]), "D": float(p["D"]),
                                                           "trial_id": r["trial_id"]})
        row["task_loss" if r["metric"] == "loss" else r["metric"]] = r["value"]
    return [row for row in rows.values() if "acc" in row]


def ended_trials(store: ObservationStore) -> dict[str, Optional[dict[str, Any]]]:
    """Trials that ended for good in an earlier run of a sweep, with their last report: what a resumed
    planner is handed (the controller's resume and the query service's replay of a search alike)."""
    trials = store.trials()
    last = store.last_reports()
    return {tid: last.get(tid) for tid, rec in trials.items() if rec["status"] in RESUME_SKIPS}


def interrupted_trials(store: ObservationStore) -> dict[str, dict[str, Any]]:
    """Trials an earlier run of a sweep started and did not end -- stopped by the user, or left running by a
    lost controller -- with their recorded config: what a resumed planner continues as it planned them."""
    return {tid: dict(rec["config"]) for tid, rec in store.trials().items()
            if rec["status"] in (STOPPED_BY_USER, "running") and rec["config"]}


def drop_checkpoints_past_reports(store: ObservationStore, mirror: str) -> dict[str, int]:
    """For every trial that has not ended, drop its bucket checkpoint (``<mirror>/<trial id>``) if it is
    past the last step the store recorded of it; {trial id: the dropped checkpoint's step}.

    A controller lost with its disk loses the reports only its local write-ahead log held; a trial
    that checkpointed after them would resume past them and leave a gap in the store. Dropped, it
    starts again from step 0 (its re-sent reports are deduplicated)."""
    from trainers.checkpoint_mirror import drop_past

    last = store.last_reports()
    dropped = {}
    for tid, rec in store.trials().items():
        if rec["status"] not in RESUME_SKIPS:
            at = drop_past(f"{mirror}/{tid}", int((last.get(tid) or {}).get("step") or 0))
            if at is not None:
                dropped[tid] = at
    return dropped


def diverged_configs(store: ObservationStore) -> list[dict[str, Any]]:
    """The configs of the trials that diverged (censored: they bound the learning rate from above)."""
    return [rec["config"] for rec in store.trials().values() if rec["status"] == "diverged" and rec["config"]]


def _local_wal_dir(uri: str) -> Path:
    """This machine's write-ahead log folder for a store opened by its URI alone."""
    import hashlib
    import tempfile

    return Path(tempfile.gettempdir()) / "scalesweep-wal" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def _task_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The task_metrics rows carried by one logged observation row."""
    return [{"trial_id": row["trial_id"], "step": row["step"], "task": t, "metric": m, "value": v, "seq": row["seq"]}
            for t, m, v in row.get("tasks") or ()]
