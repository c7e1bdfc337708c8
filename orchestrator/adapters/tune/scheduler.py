"""A Ray Tune `TrialScheduler` that stops trials by the pruning rules of `orchestrator.core.pruning`.

Thin by design: every decision lives in the pure `Pruner`; this adapter maps Tune's callbacks
onto it and returns CONTINUE or STOP. Trials run in submission order (it is a FIFOScheduler),
so it composes with any Searcher, ours included. Usable in any user's own `Tuner` whose trial
configs carry the trial contract under ``config["trial"]`` (a `trainers.contract.TrialConfig` dict),
read as a `TrialEnvelope`. Whether a trial finished is `orchestrator.core.outcome` (the store's
status word, by the planned tokens): only a finished trial becomes a reference.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
from typing import Any, Callable, Iterable, Optional, Union

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from ...core.outcome import Outcome, outcome_and_loss
from ...core.pruning import Completed, Decision, PruneConfig, Pruner, TrialMeta
from ...config.pruning import prune_config, trial_meta
from .envelope import envelope_of, trial_id_of
from .pruner_process import ProcessPruner

log = logging.getLogger(__name__)

PRUNER_KEYS = ("step", "train_loss", "eval_loss", "flops")  # what the pruner reads of a report

OnDecision = Callable[[str, Decision], None]


class PrunerScheduler(FIFOScheduler):
    """Stops a trial when the pruner says so; ``on_decision(trial_id, decision)`` records every stop."""

    def __init__(self, config: Any = PruneConfig(), on_decision: Optional[OnDecision] = None,
                 pruner: Union[Pruner, ProcessPruner, None] = None, background: bool = True, max_backlog: int = 32,
                 process: Optional[bool] = None, history: Iterable[Completed] = ()):
        super().__init__()
        config = prune_config(config)  # the spec's `pruning` section, or a PruneConfig
        # process: the pure Pruner runs in a helper process (orchestrator.adapters.tune.pruner_process), so
        # its fits do not hold the driver's GIL against Tune's event loop; same calls, same
        # decisions. None = when it runs in the background and no pruner is given.
        if pruner is None and (process if process is not None else background):
            pruner = ProcessPruner(config)
        self.pruner: Union[Pruner, ProcessPruner] = pruner or Pruner(config)
        # a resumed sweep: the trials that finished in its earlier runs are the references again
        # (orchestrator.config.pruning.completed_from_store)
        self.restored = self.pruner.restore(history) if history else 0
        self.on_decision = on_decision
        self.metas: dict[str, TrialMeta] = {}
        self._order: dict[str, int] = {}  # Tune trial id -> position added (FIFO order)
        self.last: dict[str, dict[str, float]] = {}  # trial id -> its last report (PRUNER_KEYS, tokens, done)
        self.decisions: dict[str, Decision] = {}  # trial id -> the decision that ended it
        # background: the pruner runs on a worker thread, off Tune's event loop (its curve-law
        # and frontier refits take up to seconds). It gets the same calls in the same order as
        # inline; a STOP it reaches is applied at the trial's next result (or, for a final
        # non-finite report, awaited at completion), so a stop can land a few reports later.
        self.background = background
        # Backpressure: when the worker falls more than `max_backlog` calls behind (trials that
        # report every few milliseconds, a loaded machine), Tune's loop waits until it is half
        # caught up -- decisions that arrive after the trial ended save nothing. 32, not fewer:
        # a law refit (~0.1 s) behind a burst of short trials' reports is not a reason to stall.
        self.max_backlog = max_backlog
        self._init_worker()

    def _init_worker(self) -> None:
        self._ops: "queue.SimpleQueue" = queue.SimpleQueue()
        self._ready: dict[str, Decision] = {}  # trial id -> a stop the worker reached, not applied yet
        self._done_cv = threading.Condition()
        self._enqueued = self._processed = 0
        self._thread: Optional[threading.Thread] = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its scheduler with the experiment state: not the thread or queue.
        self.drain()
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("_ops", "_ready", "_done_cv", "_thread", "_enqueued", "_processed")}
        state["on_decision"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_order", {})
        self._init_worker()

    # ------------------------------------------------------------------ worker
    def _submit(self, op: tuple) -> int:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="pruner", daemon=True)
            self._thread.start()
        with self._done_cv:
            self._enqueued += 1
            n = self._enqueued
        self._ops.put(op)
        if self.max_backlog and n - self._processed > self.max_backlog:
            self._wait(n - self.max_backlog // 2)
        return n

    def _work(self) -> None:
        # A pruner in a helper process pays a round trip per call: a run of queued reports goes in one
        # `ProcessPruner.on_reports`. In process, one call per report applies each stop as soon as it is reached.
        batched = isinstance(self.pruner, ProcessPruner)
        while True:
            ops = [self._ops.get()]
            while batched and len(ops) < 64:  # whatever else is queued (at most the backlog)
                try:
                    ops.append(self._ops.get_nowait())
                except queue.Empty:
                    break
            i = 0
            while i < len(ops):
                j = i + 1
                if batched and ops[i][0] == "report":
                    while j < len(ops) and ops[j][0] == "report":
                        j += 1
                try:
                    if j - i > 1:
                        self._apply_reports(ops[i:j])
                    else:
                        self._apply(ops[i])
                except Exception:  # the pruner must never take the sweep down
                    log.exception("pruner: %s failed for %s", ops[i][0], ops[i][1])
                with self._done_cv:
                    self._processed += j - i
                    self._done_cv.notify_all()
                i = j

    def _apply_reports(self, ops: list[tuple]) -> None:
        """Consecutive reports in one call (same order, same decisions as one `_apply` each)."""
        decisions = self.pruner.on_reports([(op[1], op[2], op[3]) for op in ops])
        for op, decision in zip(ops, decisions):
            if decision.stops:
                with self._done_cv:
                    self._ready[op[1]] = decision

    def _apply(self, op: tuple) -> None:
        kind, tid = op[0], op[1]
        if kind == "report":
            decision = self.pruner.on_report(tid, op[2], op[3])
            if decision.stops:
                with self._done_cv:
                    self._ready[tid] = decision
        elif kind == "complete":
            self._complete(tid, op[2], op[3], op[4], op[5])
        else:
            self.pruner.on_remove(tid)
            self._drop_ready(tid)

    def _drop_ready(self, tid: str) -> None:
        """Forget a stop the worker reached for a trial that has ended meanwhile (called after its last report)."""
        with self._done_cv:
            self._ready.pop(tid, None)

    def _wait(self, n: int, timeout: Optional[float] = None) -> bool:
        with self._done_cv:
            return self._done_cv.wait_for(lambda: self._processed >= n, timeout)

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Wait until the worker has processed everything handed to it (True if it did in time)."""
        return self._wait(self._enqueued, timeout) if self._thread is not None else True

    def pending(self) -> int:
        """Reports and completions handed to the worker and not processed yet."""
        return self._enqueued - self._processed

    @staticmethod
    def trial_id(trial) -> str:
        """The contract's trial id (Tune's own id when the config has none)."""
        return trial_id_of(trial.config) or str(trial.trial_id)

    def _meta(self, trial) -> Optional[TrialMeta]:
        """The pruner's plan of the trial (read from its envelope once), None for a trial without one."""
        tid = self.trial_id(trial)
        if tid not in self.metas:
            env = envelope_of(trial.config)
            if env is None:
                return None
            self.metas[tid] = trial_meta(env.trial, cell_D=env.cell_D, trunk=env.branch_of)
        return self.metas[tid]

    def on_trial_add(self, tune_controller, trial) -> None:
        self._order.setdefault(trial.trial_id, len(self._order))
        self._meta(trial)

    def choose_trial_to_run(self, tune_controller):
        """FIFOScheduler's choice (the first PENDING trial in the order added, else the first PAUSED one),
        looked up among Tune's live trials only.

        FIFOScheduler scans every trial of the experiment, twice, at every step of Tune's loop: at
        thousands of trials that was the largest single cost of the driver. PENDING and PAUSED
        trials are always live, so the choice is the same.
        """
        # A guard on Ray's side, not an interface of ours: `get_live_trials` is a method of Ray 2.6x's
        # TuneController, not of the TrialScheduler API; on a controller without it, FIFO's full scan.
        live = getattr(tune_controller, "get_live_trials", None)
        if live is None:
            return super().choose_trial_to_run(tune_controller)
        trials = live()
        for status in (Trial.PENDING, Trial.PAUSED):
            found = [t for t in trials if t.status == status]
            if found:
                return min(found, key=lambda t: self._order.get(t.trial_id, math.inf))
        return None

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        if not self.background:
            decision = self._report(trial, result)
            return TrialScheduler.STOP if decision is not None and decision.stops else TrialScheduler.CONTINUE
        tid = self.trial_id(trial)
        with self._done_cv:
            ready = self._ready.pop(tid, None)
        if ready is not None:  # reached on an earlier report: apply it now
            self._record(tid, ready)
            return TrialScheduler.STOP
        fresh = self._fresh(tid, self._meta(trial), result)
        if fresh is not None:
            self._submit(("report", tid, *fresh))
        return TrialScheduler.CONTINUE

    def _fresh(self, tid: str, meta: Optional[TrialMeta], result: dict[str, Any]) -> Optional[tuple[TrialMeta, dict]]:
        """(meta, report) of trial `tid`'s result when the pruner has not seen it, else None."""
        if meta is None or not isinstance(result, dict) or "step" not in result:
            return None
        report = {k: result.get(k) for k in PRUNER_KEYS}
        last = self.last.get(tid)
        if last is not None and {k: last[k] for k in PRUNER_KEYS} == report:
            return None  # the same result seen again (Tune repeats the last one on completion, `done` set)
        self.last[tid] = {**report, "tokens": result.get("tokens"), "done": result.get("done")}
        return meta, report

    def _report(self, trial, result: dict[str, Any]) -> Optional[Decision]:
        tid = self.trial_id(trial)
        fresh = self._fresh(tid, self._meta(trial), result)
        if fresh is None:
            return None
        decision = self.pruner.on_report(tid, *fresh)
        if decision.stops:
            self._record(tid, decision)
        return decision

    def _record(self, tid: str, decision: Decision) -> None:
        self.decisions[tid] = decision
        log.info("pruner: %s %s: %s", decision.action, tid, decision.reason)
        if self.on_decision is not None:
            try:
                self.on_decision(tid, decision)
            except Exception:  # recording must never take the sweep down
                log.exception("on_decision failed for %s", tid)

    def on_trial_complete(self, tune_controller, trial, result: dict[str, Any]) -> None:
        tid = self.trial_id(trial)
        self._order.pop(trial.trial_id, None)  # ended for good: nothing per trial is kept past here
        if tid in self.decisions:
            self._forget(tid)
            if self.background:
                self._submit(("remove", tid))
            return  # we stopped it: not a completed reference
        # Tune hands a trial's last result here, not to on_trial_result: a final NaN is a divergence.
        meta = self._meta(trial)
        fresh = self._fresh(tid, meta, result)
        self.metas.pop(tid, None)  # the completion carries it to the pruner
        env = envelope_of(trial.config)
        planned_D = env.D if env is not None else None  # what `finished` is judged by (core.outcome)
        if not self.background:
            self._complete(tid, meta, fresh, planned_D, True)
            return
        with self._done_cv:
            self._ready.pop(tid, None)  # a stop reached too late: the trial ran to its end
        final = (fresh[1].get(self.pruner.config.metric), fresh[1].get("train_loss")) if fresh else ()
        nonfinite = any(v is not None and not math.isfinite(float(v)) for v in final)
        n = self._submit(("complete", tid, meta, fresh, planned_D, nonfinite))
        if nonfinite:  # rare, and its label (diverged, with the reason) is read right after this
            self._wait(n, timeout=60.0)

    def _complete(self, tid: str, meta: Optional[TrialMeta], fresh: Optional[tuple], planned_D: Optional[float],
                  record: bool) -> None:
        """The pruner's side of a trial's completion (its final report first); on the worker when background.
        A trial that finished (`core.outcome`, by its planned tokens) becomes a reference; any other ends."""
        last = self.last.pop(tid, None)  # its last use: the trial ended
        self._drop_ready(tid)
        if fresh is not None:
            decision = self.pruner.on_report(tid, *fresh)
            if decision.stops:
                if record:
                    self._record(tid, decision)
                else:
                    self.pruner.on_remove(tid)
                return
        ended, loss = outcome_and_loss(last, planned_D, self.pruner.config.metric)
        if meta is not None and ended is Outcome.FINISHED:
            self.pruner.on_complete(tid, loss)
        else:
            self.pruner.on_remove(tid)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._remove(self.trial_id(trial))  # a restarted trial is added again (on_trial_add)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._order.pop(trial.trial_id, None)
        self._remove(self.trial_id(trial))

    def _forget(self, tid: str) -> None:
        """Drop what is kept per trial for its reports (its metadata, its last report)."""
        self.metas.pop(tid, None)
        self.last.pop(tid, None)

    def _remove(self, tid: str) -> None:
        self._forget(tid)
        if self.background:
            self._submit(("remove", tid))
        else:
            self.pruner.on_remove(tid)

    def debug_string(self) -> str:
        stops = sum(d.action == "stop" for d in self.decisions.values())
        div = sum(d.action == "diverged" for d in self.decisions.values())
        return f"Using PrunerScheduler: {stops} stopped, {div} diverged, {self.pruner.n_predictions} predictions."
