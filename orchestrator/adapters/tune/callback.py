"""A Ray Tune `Callback` that records every report: store, MLflow and the progress display.

It runs in the driver, so trainers never touch the store or MLflow; a report reaches the
store before the planner sees it. A trial's config is read as its `TrialEnvelope`, and how it
ended is `orchestrator.core.outcome` (the one classification; a pruner's stop and a user's stop
aside).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol

from ray.tune import Callback
from ray.tune.stopper import Stopper

from trainers.contract import OPTIONAL_REPORT_KEYS, REPORT_KEYS, TASK_PREFIX

from ...core.planning.branching import spent_flops
from ...core.outcome import Outcome, outcome_of
from ...io.store import STOPPED_BY_USER, ObservationStore
from . import report_ack
from .envelope import TrialEnvelope, envelope_of, trial_id_of

log = logging.getLogger(__name__)


class Progress(Protocol):
    """The display the callback updates (the app hands in its `orchestrator.app.progress.SweepProgress`)."""

    def trial_state(self, trial_id: str, state: str) -> None: ...

    def report(self, trial_id: str, n_params: int, flops: float, eval_loss: float) -> None: ...

STILL_ENDING = "still ending (no exit.json yet)"  # a stopped program within its grace period
ENDING_WAIT_S = 10.0  # past the trial's grace period: how long the sweep's end waits for an exit record


def _report_of(result: dict[str, Any]) -> Optional[dict[str, float]]:
    """The trainer's report inside a Tune result (None for Tune-only bookkeeping results): the
    contract's keys (NaN when missing), and the optional keys and task metrics it carries."""
    if "step" not in result:
        return None
    out = {}
    for key in REPORT_KEYS:
        val = result.get(key)
        out[key] = float("nan") if val is None else float(val)
    for key, val in result.items():
        if (key in OPTIONAL_REPORT_KEYS or key.startswith(TASK_PREFIX)) and isinstance(val, (int, float)):
            out[key] = float(val)
    return out


def mlflow_end(status: str, summary: Optional[Mapping[str, Any]]) -> tuple[str, dict[str, str]]:
    """(MLflow run status, tags) that close the run of a trial that ended with this store status and summary."""
    mlflow_status = {"finished": "FINISHED", "failed": "FAILED"}.get(status, "KILLED")
    return mlflow_status, {"scalesweep.status": status, **{f"scalesweep.{k}": str(v) for k, v in (summary or {}).items()}}


class SweepCallback(Callback):
    """Appends reports to the store, streams them to MLflow, updates the display."""

    def __init__(self, store: ObservationStore, tracker, progress: Progress, records: dict[str, dict],
                 decisions: Optional[dict[str, dict]] = None, stops: Optional[dict[str, Any]] = None,
                 interrupted: Optional[Callable[[], bool]] = None):
        self.store = store
        self.tracker = tracker
        self.progress = progress
        self.records = records  # planned trial id -> its config record (PlannedTrial.record())
        self.decisions = decisions if decisions is not None else {}  # trial id -> why the planner chose it
        self.stops = stops if stops is not None else {}  # trial id -> the pruner's stop/diverged Decision
        self.last: dict[str, dict[str, float]] = {}
        self.logged: dict[str, int] = {}  # trial id -> highest step sent to MLflow
        self.restarts: dict[str, int] = {}  # trial id -> restarts after a crash
        self.contract_errors: dict[str, str] = {}  # trial id -> how a user's trainer broke the contract
        # True once the user asked the sweep to stop (controller.StopRequest): a trial that ends
        # early then is `stopped-by-user` (resumed later), not stopped by a scheduler or failed
        self.interrupted = interrupted or _never
        # running trials that end by themselves on a user's stop, after a checkpoint (a `stop_key`)
        self.checkpointing: set[str] = set()
        # ended command trials whose program was still ending (Tune calls on_trial_complete before it
        # asks the trial to stop): trial id -> (status, summary, wait-until); the summary is written
        # again with the program's true exit once its exit.json appears (`_complete_ended`)
        self.ending: dict[str, tuple[str, dict[str, Any], float]] = {}
        # running multi-worker trials (Ray Train inside the trial) -> (their report_ack key, the highest
        # step acknowledged): rank 0 waits for a report's acknowledgement before training on
        self.acks: dict[str, list] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; the live handles (store
        # buffer, MLflow threads, display) are rebuilt by `scalesweep resume`, not unpickled.
        return {"records": self.records, "last": self.last, "decisions": self.decisions, "stops": {},
                "logged": self.logged, "restarts": self.restarts, "store": None, "tracker": None, "progress": None,
                "contract_errors": {}, "interrupted": self.interrupted,  # a module function: pickles by name
                "checkpointing": set(), "ending": {}, "acks": {}}

    @staticmethod
    def _tid(trial) -> str:
        return trial_id_of(trial.config)

    def on_trial_start(self, iteration, trials, trial, **info):
        env = TrialEnvelope.from_config(trial.config)
        tid = env.trial_id
        record = self.records[tid]
        why = self.decisions.get(tid)
        self.store.set_status(tid, "running", config=record, summary={"decision": why} if why else None)
        if env.stop_key:
            self.checkpointing.add(tid)
            if env.trial.workers > 1 and env.backend != "command":
                self.acks[tid] = [report_ack.key(env.stop_key, tid), -1]
        if self.tracker is not None:
            # enqueued only: the run is created on the tracker thread, never on Tune's event loop
            from ...io.tracking.run_names import run_name, varying

            # params: the trial's own config, each value once. Not the trainer's TrialConfig (`trainer.*`):
            # it repeats the planned values under other names and the spec's, which the sweep's run holds
            # (≈30 more keys in MLflow's column picker; docs/mlflow.md, "How the runs are organised").
            self.tracker.start_trial(tid, record, wait=False, run_name=run_name(record, varying(self.records.values())))
            if why:
                self.tracker.set_tags(tid, {"scalesweep.why": str(why.get("why", why))[:5000]})
        self.progress.trial_state(tid, "running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        report = _report_of(result)
        if report is None:
            return
        tid = self._tid(trial)
        self.last[tid] = report
        extra = _extra_of(result)  # a user's trainer's own metrics: the store and MLflow
        self.store.append(tid, {**report, "extra": extra} if extra else report)
        step = int(report["step"])
        ack = self.acks.get(tid)
        if ack is not None and step > ack[1]:  # in the store's write-ahead log: its rank 0 may go on
            ack[1] = step
            report_ack.acknowledge(ack[0], step)
        # A restarted trial re-sends the reports between its checkpoint and the crash: the
        # store keeps one row per (trial, step) anyway; MLflow gets each step once.
        if self.tracker is not None and step > self.logged.get(tid, -1):
            self.logged[tid] = step
            metrics = {k: v for k, v in report.items() if k != "step"}
            metrics.update(extra)
            self.tracker.log_metrics(tid, metrics, step=step)
        record = self.records[tid]
        self.progress.report(tid, record["N"], spent_flops(report["flops"], record), report["eval_loss"])

    def _end(self, trial, status: str, summary: dict[str, Any]) -> None:
        tid = self._tid(trial)
        self.checkpointing.discard(tid)
        ack = self.acks.pop(tid, None)
        if ack is not None:
            report_ack.clear(ack[0])
        if tid in self.restarts:
            summary = {**summary, "restarts": self.restarts[tid]}
        process = _process_exit(trial)
        if process is not None:  # a user's program: how it ended, where its files are
            summary = {**summary, "process": process}
            if process["status"] == STILL_ENDING:
                env = envelope_of(trial.config)
                grace = float((env.own or {}).get("grace_period_s") or 0.0) if env is not None else 0.0
                self.ending[tid] = (status, summary, time.monotonic() + grace + ENDING_WAIT_S)
        self.store.set_status(tid, status, summary=summary)
        if self.tracker is not None:
            self.tracker.end_trial(tid, *mlflow_end(status, summary))
        self.progress.trial_state(tid, status)
        self.last.pop(tid, None)  # an ended trial: the store has its reports (memory per trial stays flat)
        self.logged.pop(tid, None)

    def on_trial_complete(self, iteration, trials, trial, **info):
        env = TrialEnvelope.from_config(trial.config)  # (before tune.forget shrinks it: callbacks=[this, forget])
        tid = env.trial_id
        last = self.last.get(tid)
        stop = self.stops.get(tid)
        # core.outcome classifies; Tune marks the result it stops a trial on `done`, so it weighs the
        # planned tokens too (a scheduler not ours ended a trial short: its loss is not a final loss)
        ended = outcome_of(last, env.D)
        if ended in (Outcome.FAILED, Outcome.STOPPED) and self.interrupted() and stop is None:
            self._end(trial, STOPPED_BY_USER, {"reason": "stopped by the user; `scalesweep resume` reruns it from "
                                                         "its last checkpoint"})
        elif stop is not None:  # the pruner ended it: record why, with the prediction that justified it
            self._end(trial, "diverged" if stop.action == "diverged" else "stopped",
                      {"reason": stop.reason, **stop.summary()})
        elif ended is Outcome.FAILED:
            self._end(trial, ended.value, {"reason": self.contract_errors.get(tid, "no report")})
        elif ended is Outcome.DIVERGED:
            self._end(trial, ended.value, {"reason": "non-finite loss", "step": last["step"]})
        elif ended is Outcome.STOPPED:
            self._end(trial, ended.value, {"reason": "ended before its planned tokens (stopped by the scheduler)",
                                           "steps": last["step"], "flops": last["flops"]})
        else:
            self._end(trial, ended.value, {"final_eval_loss": last["eval_loss"], "steps": last["step"],
                                           "flops": last["flops"]})

    def on_trial_recover(self, iteration, trials, trial, **info):
        """The trial's process died and Tune restarts it; it resumes from its last checkpoint."""
        tid = self._tid(trial)
        n = self.restarts[tid] = self.restarts.get(tid, 0) + 1
        last = self.last.get(tid)
        at = int(last["step"]) if last is not None else 0
        log.warning("trial %s failed after step %d (restart %d); it resumes from its last checkpoint", tid, at, n)
        summary = {"restarts": n, "reason": "trial process failed; restarted", "last_step": at}
        process = _process_exit(trial)
        if process is not None:
            summary.update(process=process, reason=f"trainer failed ({process['status']}); restarted")
            self._contract(tid, process)
        self.store.set_status(tid, "running", summary=summary)
        if self.tracker is not None:
            self.tracker.set_tags(tid, {"scalesweep.restarts": n})

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.interrupted():  # its process was ended by the stop: resumed later, not failed
            self._end(trial, STOPPED_BY_USER, {"reason": "stopped by the user (its process ended while stopping)"})
            return
        process = _process_exit(trial)
        if process is not None:
            self._contract(self._tid(trial), process)
            reason = process.get("error") or f"the trainer ended with {process['status']}"
            self._end(trial, "failed", {"reason": f"{reason} (see {process['attempt_dir']})"})
            return
        summary = {"reason": f"trial error (see {trial.local_path or 'the Ray logs'})"}
        error = _error_tail(trial)
        if error:
            summary["error"] = error
        self._end(trial, "failed", summary)

    def _contract(self, tid: str, process: dict[str, Any]) -> None:
        if process.get("contract_error"):
            self.contract_errors.setdefault(tid, str(process.get("error", "")).split(": ", 1)[-1])

    def on_step_end(self, iteration, trials, **info):
        if self.ending:
            self._complete_ended()

    def _complete_ended(self) -> None:
        """Record the true exit of each ended trial whose program's exit.json has appeared since."""
        for tid, (status, summary, _) in list(self.ending.items()):
            process = _exit_record(Path(summary["process"]["attempt_dir"]))
            if process is None:
                continue
            del self.ending[tid]
            summary = {**summary, "process": process}
            self.store.set_status(tid, status, summary=summary)  # the same end, its summary completed
            if self.tracker is not None:
                self.tracker.set_tags(tid, {"scalesweep.process": str(process)})

    def on_experiment_end(self, trials, **info):
        # Tune has stopped the trial processes by now: their programs' exit records are written or
        # about to be (a program within its grace period); one that never comes keeps STILL_ENDING
        while self.ending:
            self._complete_ended()
            if not self.ending or time.monotonic() >= max(until for _, _, until in self.ending.values()):
                break
            time.sleep(0.05)
        for tid in self.ending:
            log.warning("trial %s: its program's exit was never recorded (no exit.json)", tid)
        self.store.flush()


class ContractStopper(Stopper):
    """Ends the sweep once a user's trainer broke the trial contract (every trial would, alike), or
    once the user asked it to stop: at once when no running trial can checkpoint by itself, else
    once those have saved a checkpoint at their next report and ended, or `stop_timeout_s` after
    the request (`requested_at()`: its time.monotonic, None before); then Tune stops the rest
    where they are (they resume from their last checkpoint)."""

    def __init__(self, callback: SweepCallback, stop_timeout_s: float = 0.0,
                 requested_at: Optional[Callable[[], Optional[float]]] = None):
        self.callback = callback
        self.stop_timeout_s = float(stop_timeout_s)
        self.requested_at = requested_at

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        if self.callback.contract_errors:
            return True
        if not self.callback.interrupted():
            return False
        # a stop request (Ctrl-C, SIGTERM): Tune stops every trial once those checkpointing have ended
        at = self.requested_at() if self.requested_at is not None else None
        return (not self.callback.checkpointing or at is None
                or time.monotonic() - at >= self.stop_timeout_s)


def _never() -> bool:
    return False


def _extra_of(result: Mapping[str, Any]) -> dict[str, float]:
    """A user trainer's extra metrics in a Tune result (nested under `extra`, or flattened `extra/`)."""
    extra = result.get("extra")
    out = dict(extra) if isinstance(extra, Mapping) else {}
    out.update({k[len("extra/"):]: v for k, v in result.items() if isinstance(k, str) and k.startswith("extra/")})
    return {str(k): float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _error_tail(trial, chars: int = 2000) -> Optional[str]:
    """The end of the trial's error file (Tune's traceback: the exception's own message last)."""
    try:
        path = trial.error_file
        return Path(path).read_text(errors="replace")[-chars:].strip() if path else None
    except (OSError, AttributeError):
        return None


def _process_exit(trial) -> Optional[dict[str, Any]]:
    """How a user's program last ended (its newest attempt's exit.json), for a command trial; else None."""
    env = envelope_of(trial.config)  # None: an ended trial's config that tune.forget shrank
    if env is None or not env.run_dir or env.backend != "command":
        return None
    attempts = sorted(Path(env.run_dir).glob("attempt-*"), key=lambda p: int(p.name.split("-")[1]))
    if not attempts:
        return None
    # None: a stopped program may still be ending, its record comes later (SweepCallback.ending)
    return _exit_record(attempts[-1]) or {"status": STILL_ENDING, "attempt_dir": str(attempts[-1])}


def _exit_record(attempt_dir: Path) -> Optional[dict[str, Any]]:
    """What the trial's summary keeps of an attempt's exit.json; None while there is none."""
    try:
        info = json.loads((attempt_dir / "exit.json").read_text())
    except (OSError, ValueError):
        return None
    keep = ("attempt", "status", "returncode", "ended", "reports", "last_step", "error", "contract_error",
            "attempt_dir")
    out = {k: info[k] for k in keep if k in info}
    tail = (info.get("stderr_tail") or "").strip()
    if tail and (info.get("returncode") or info.get("error")):
        out["stderr_tail"] = tail[-2000:]
    return out

