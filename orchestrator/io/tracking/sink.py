"""The MLflow sink: delivers typed tracker operations as a sweep's run layout (`layout.py`).

Parent run = the sweep; nested child run = a trial. Every call goes through `MlflowClient`
(never the fluent `mlflow.start_run` global state), here or in a helper process. Creates are
idempotent across retries and restarts: a run is found by its create token or by its trial's
tags under the parent before a new one is made.
"""
from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from .layout import (MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, NOTE_MARK, NOTE_TAG, TAG_PARENT, TAG_SWEEP,
                     TAG_TOKEN, TAG_TRIAL, TAG_TRUNK_RUN, VIEW_KEY_PREFIX, VIEW_TAG_PREFIX, experiment_note, quote,
                     runs_table_view, saved_view, saved_view_key, view_key)
from .ops import (BATCHED, CreateParent, CreateTrial, EndRun, EndStale, LogArtifact, LogMetrics, LogParams, Queued,
                  SetTags)

# Error codes meaning "this request is wrong and will stay wrong": retrying cannot help,
# so the operation is dropped (with an error log) instead of blocking the queue forever.
log = logging.getLogger(__name__)

PERMANENT_CODES = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE",
    "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "ENDPOINT_NOT_FOUND",
})


def is_permanent(exc: BaseException) -> bool:
    """True for an MLflow error that retrying cannot fix."""
    return isinstance(exc, MlflowException) and getattr(exc, "error_code", "") in PERMANENT_CODES


class MlflowSink:
    """One sweep's runs in one MLflow experiment; `deliver` is called by the queue's thread only."""

    def __init__(self, client: Any, experiment: str, sweep_name: str, *, artifact_location: Optional[str] = None,
                 live: Callable[[str], bool] = lambda trial: False, stats: Optional[dict[str, int]] = None) -> None:
        self.client = client
        self.experiment = experiment
        self.sweep_name = sweep_name
        self.artifact_location = artifact_location
        self._live = live  # trials this tracker (re)started: not stale
        self.stats = stats if stats is not None else {}
        self.stats.setdefault("batches", 0)
        self.stats.setdefault("metrics", 0)
        self._exp_id: Optional[str] = None
        self.parent_id: Optional[str] = None
        self.run_ids: dict[str, str] = {}  # trial id -> run id (delivered creates)
        self._created_parent: Optional[str] = None  # a parent run this sink created (it has no old children)

    def run_id(self, trial_id: Optional[str]) -> Optional[str]:
        """A trial's run id (the parent's for None), once created."""
        return self.parent_id if trial_id is None else self.run_ids.get(trial_id)

    def deliver(self, group: list[Queued]) -> None:
        """Do one group of operations (one op, or consecutive metrics and tags); raises on failure."""
        head = group[0]
        op = head.op
        if isinstance(op, BATCHED):
            self._deliver_batch(group)
        elif isinstance(op, CreateParent):
            self._create_parent(op)
        elif isinstance(op, CreateTrial):
            self._create_trial(head)
        elif isinstance(op, LogParams):
            self._log_params(self._resolve(head), op.params)
        elif isinstance(op, LogArtifact):
            self.client.log_artifact(self._resolve(head), op.path, op.dir)
            if op.owned:
                shutil.rmtree(Path(op.path).parent, ignore_errors=True)
        elif isinstance(op, EndRun):
            self.client.set_terminated(self._resolve(head), op.status, op.end_ms)
        elif isinstance(op, EndStale):
            self._end_stale(head)
        else:
            raise MlflowException(f"unknown op {op!r}", error_code="INVALID_PARAMETER_VALUE")

    def _deliver_batch(self, group: list[Queued]) -> None:
        """One log_batch per run (<= 1000 metrics, <= 100 tags each): metrics in report order
        within a run, tags merged in op order (a later value of a key wins, as separate calls would).

        Progress is kept per op (`sent`), so a window interrupted by an outage resumes
        where it stopped instead of resending delivered batches (tags are idempotent).
        """
        by_run: dict[Any, tuple[list[tuple[Queued, int]], list[Queued]]] = {}
        for entry in group:
            rows, tag_entries = by_run.setdefault(entry.trial, ([], []))
            if isinstance(entry.op, LogMetrics):
                rows.extend((entry, i) for i in range(entry.sent, len(entry.op.m)))
            elif not entry.sent:
                tag_entries.append(entry)
        for rows, tag_entries in by_run.values():
            if not rows and not tag_entries:
                continue
            run_id = self._resolve(rows[0][0] if rows else tag_entries[0])
            merged = {k: v for e in tag_entries for k, v in e.op.tags.items()}
            tags = [RunTag(k, v) for k, v in merged.items()]
            chunks = itertools.zip_longest(
                [rows[i:i + MAX_METRICS_PER_BATCH] for i in range(0, len(rows), MAX_METRICS_PER_BATCH)],
                [tags[i:i + MAX_PARAMS_TAGS_PER_BATCH] for i in range(0, len(tags), MAX_PARAMS_TAGS_PER_BATCH)],
                fillvalue=[])
            for chunk, tag_chunk in chunks:
                metrics = [Metric(*entry.op.m[i]) for entry, i in chunk]
                self.client.log_batch(run_id, metrics=metrics, tags=tag_chunk, synchronous=True)
                for entry, i in chunk:
                    entry.sent = i + 1
                self.stats["batches"] += 1
                self.stats["metrics"] += len(metrics)
            for entry in tag_entries:
                entry.sent = 1

    def _end_stale(self, entry: Queued) -> None:
        op: EndStale = entry.op  # type: ignore[assignment]
        parent = self._resolve(entry)
        stale, token = [], None
        while True:  # every page first: ending runs while paging would shift the (offset) pages
            runs = self.client.search_runs(
                [self.experiment_id(parent)], max_results=1000, page_token=token,
                filter_string=f"tags.`{TAG_PARENT}` = '{parent}' and attributes.status = 'RUNNING'")
            stale += [(run.info.run_id, run.data.tags.get(TAG_TRIAL)) for run in runs]
            token = runs.token
            if not token:
                break
        for run_id, trial_id in stale:
            if trial_id in op.ended and not self._live(trial_id):
                status, tags = op.ended[trial_id]
                self._log_tags(run_id, tags)
                self.client.set_terminated(run_id, status)

    def _resolve(self, entry: Queued) -> str:
        """The run id an operation is for (found by its trial's tags when this process never created it)."""
        trial_id = entry.trial
        run_id = self.run_id(trial_id) or entry.run
        if trial_id is None and run_id is None:
            run_id = entry.parent
        parent = self.parent_id or entry.parent
        if run_id is None and trial_id is not None and parent is not None:
            run_id = self._trial_run(trial_id, parent)
        if run_id is None:
            what = f"trial {trial_id!r}" if trial_id else "the sweep"
            raise MlflowException(f"no MLflow run for {what} (start it first)", error_code="RESOURCE_DOES_NOT_EXIST")
        return run_id

    def _trial_run(self, trial_id: str, parent: str) -> Optional[str]:
        """The run of `trial_id` under `parent`, searched by tags (remembered once found)."""
        run_id = self.run_ids.get(trial_id) or self._find_by_tag(
            f"tags.`{TAG_TRIAL}` = '{quote(trial_id)}' and tags.`{TAG_PARENT}` = '{parent}'", parent)
        if run_id is not None:
            self.run_ids[trial_id] = run_id
        return run_id

    def experiment_id(self, parent: Optional[str] = None) -> str:
        """The sweep's experiment: the parent run's when it exists (a resumed sweep keeps its
        experiment whatever it is called now), else the one named `experiment`, created if missing."""
        if self._exp_id is None and parent is not None:
            self._exp_id = self.client.get_run(parent).info.experiment_id
        if self._exp_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    self._exp_id = self.client.create_experiment(
                        self.experiment, artifact_location=self.artifact_location)
                except MlflowException as exc:  # created concurrently by someone else
                    exp = self.client.get_experiment_by_name(self.experiment)
                    if exp is None:
                        raise exc
                    self._exp_id = exp.experiment_id
            else:
                self._exp_id = exp.experiment_id
        return self._exp_id

    def _find_by_tag(self, filter_string: str, parent: Optional[str] = None) -> Optional[str]:
        runs = self.client.search_runs(
            [self.experiment_id(parent)], filter_string=filter_string, max_results=1,
            order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    def _create_parent(self, op: CreateParent) -> None:
        run_id = op.resume
        if run_id:
            self.experiment_id(run_id)
            self.client.update_run(run_id, status="RUNNING")
        elif self.parent_id is not None:
            run_id = self.parent_id  # resumed from a replayed spool in this process
        else:
            exp_id = self.experiment_id()
            # A retried create may have reached the server before the connection broke.
            run_id = self._find_by_tag(f"tags.`{TAG_TOKEN}` = '{op.token}'")
            if run_id is None:
                run = self.client.create_run(exp_id, tags={**op.tags, TAG_TOKEN: op.token}, run_name=self.sweep_name)
                run_id = run.info.run_id
                self._created_parent = run_id
        existing = self.client.get_run(run_id).data.params
        self._log_params(run_id, {k: v for k, v in op.params.items() if k not in existing})
        self._log_tags(run_id, op.tags)
        for path, art_dir, owned in op.artifacts:
            self.client.log_artifact(run_id, path, art_dir)
            if owned:
                shutil.rmtree(Path(path).parent, ignore_errors=True)
        self.parent_id = run_id
        self._save_view()

    def _save_view(self) -> None:
        """The sweep's saved runs-table view on its experiment (`layout.runs_table_view`), and the
        experiment's description linking every sweep's view, unless someone else wrote it. A view is a
        convenience: a store that refuses experiment tags costs a warning, not the parent run."""
        try:
            exp_id = self.experiment_id(self.parent_id)
            key = view_key(self.sweep_name)
            self.client.set_experiment_tag(exp_id, VIEW_TAG_PREFIX + key, json.dumps(runs_table_view(self.sweep_name)))
            tags = self.client.get_experiment(exp_id).tags
            named = VIEW_TAG_PREFIX + saved_view_key(self.sweep_name)
            now = int(time.time() * 1000)
            try:  # a resumed sweep's view keeps when it was first saved (the menu sorts by it)
                created = int(json.loads(tags[named])["createdAt"])
            except (KeyError, ValueError, TypeError):
                created = now
            self.client.set_experiment_tag(exp_id, named, saved_view(self.sweep_name, created, now))
            note = tags.get(NOTE_TAG)
            if note is not None and not note.startswith(NOTE_MARK):
                return
            views = {}
            for tag, value in tags.items():  # the bare views (an envelope has no TAG_SWEEP: skipped)
                if tag.startswith(VIEW_TAG_PREFIX + VIEW_KEY_PREFIX):
                    try:
                        views[tag[len(VIEW_TAG_PREFIX):]] = str(json.loads(value)[TAG_SWEEP])
                    except (ValueError, KeyError, TypeError):
                        continue
            views[key] = self.sweep_name
            self.client.set_experiment_tag(exp_id, NOTE_TAG, experiment_note(exp_id, views))
        except Exception as exc:  # noqa: BLE001 -- see the docstring
            log.warning("MLflow: the sweep's saved runs-table view was not set (%s: %s)", type(exc).__name__, exc)

    def _create_trial(self, entry: Queued) -> None:
        op: CreateTrial = entry.op  # type: ignore[assignment]
        parent = self._resolve(Queued(SetTags(None, {}), parent=entry.parent))
        exp_id = self.experiment_id(parent)
        # Idempotent across restarts and lost responses: reuse the child run that already
        # carries this trial's tags under this parent. Under a parent this sink created,
        # such a run can exist only if an earlier attempt of this op reached the server: a
        # first attempt skips the search (it grows with the experiment, tens of ms per trial
        # in a sweep of thousands).
        first_try = parent == self._created_parent and not entry.tried and not entry.replayed
        entry.tried = True
        run_id = self.run_ids.get(op.trial) or (None if first_try else self._trial_run(op.trial, parent))
        if run_id is None:
            tags = {**op.tags, TAG_PARENT: parent, TAG_TOKEN: op.token}
            trunk = self._trial_run(op.trunk, parent) if op.trunk else None
            if trunk is not None:
                tags[TAG_TRUNK_RUN] = trunk
            # start_time: when the trial started; a create delivered after a short trial had already
            # ended (its end op carries the end time) would otherwise show a negative duration
            run = self.client.create_run(exp_id, start_time=op.start_ms, tags=tags, run_name=op.name or op.trial)
            run_id = run.info.run_id
            self._log_params(run_id, op.params)
        else:
            run = self.client.get_run(run_id)
            if run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            existing = run.data.params
            self._log_params(run_id, {k: v for k, v in op.params.items() if k not in existing})
        self.run_ids[op.trial] = run_id

    def _log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i:i + MAX_PARAMS_TAGS_PER_BATCH], synchronous=True)

    def _log_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        items = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, tags=items[i:i + MAX_PARAMS_TAGS_PER_BATCH], synchronous=True)
