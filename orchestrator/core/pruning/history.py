"""The pruner's history: every trial's plan and logged curve, the finished trials' final losses,
the completed curves per (size, schedule family) and the paired rule's calibration -- and its
rebuild from store rows.

Rules read the history; only the pruner writes it (`add`, `record`, `complete`). Everything in it
follows from the reports and completions it was given, so a resumed sweep rebuilds it from the
observation store's rows (`completed_from_rows` + `orchestrator.core.pruning.Pruner.restore`).

>>> import numpy as np
>>> from orchestrator.core.pruning.meta import TrialMeta
>>> meta = TrialMeta(N=1e6, D=2e7, total_steps=100, lr=np.full(100, 1e-3), flops=1.2e14)
>>> rows = {"a": {"status": "finished", "summary": {"final_eval_loss": 3.01}, "time": 1.0},
...         "b": {"status": "stopped", "summary": {}, "time": 2.0}}
>>> obs = [{"trial_id": "a", "step": s, "eval_loss": 3.0 + 1 / s} for s in (10, 50, 100)]
>>> done = completed_from_rows(rows, obs, {"a": meta, "b": meta})
>>> [(c.trial_id, c.final, c.steps) for c in done]
[('a', 3.01, (10.0, 50.0, 100.0))]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from ..outcome import Outcome, is_loss
from ..laws.curves import Curve, Schedule
from .calibration import Calibration
from .config import PruneConfig
from .meta import LR_REF, TrialMeta
from .pairstat import PAIR_MIN_POINTS


@dataclass
class TrialState:
    """One trial as the pruner saw it: its plan, its logged (step, loss) curve and its last report."""

    meta: TrialMeta
    schedule: Schedule  # the per-step schedule shape the curve law sees (TrialMeta.law_schedule)
    steps: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    n_reports: int = 0
    first: float = math.nan  # divergence rule: the first reported loss
    running_min: float = math.inf  # ... and the lowest so far
    last_pred_step: float = 0.0  # law rule: step and report count of its last prediction
    last_pred_report: int = -10**9
    prediction: Optional[dict] = None  # the law rule's latest prediction (a same-cell reference)
    ended: bool = False
    # Whether `steps`/`loss` cover the run from step 0: a from-scratch trial, or a WSD branch once its
    # trunk's curve up to its start step (its own early curve: the same N, lr, batch, seed and lr at
    # every step before it) is attached. Rules judge, pair and calibrate only such curves.
    from_start: bool = True
    n_prefix: int = 0  # a branch: the curve points it took from its trunk (not its own reports)
    shape_key: tuple = ()  # (cell, steps, lr shape): the paired rule's same-schedule peers share it
    kind: str = ""  # TrialMeta.schedule_kind(): trials of one cell with another kind are cross-schedule peers
    law_key: tuple = ()  # TrialMeta.law_key(): (size, schedule family), whose completed curves its law fits
    # the report being judged
    step: float = 0.0
    train: float = math.nan
    value: float = math.nan  # the judged metric (PruneConfig.metric)
    fresh: bool = False  # it added a new point to the curve
    repeated: bool = False  # a step at or before the curve's last one (a re-sent report)


@dataclass(frozen=True)
class Completed:
    """A trial that finished its planned steps, as the store holds it: the pruner's history input."""

    trial_id: str
    meta: TrialMeta
    final: float
    steps: tuple[float, ...]
    loss: tuple[float, ...]


class History:
    """Trials, their indexes by cell and schedule, finals, completed curves per (size, schedule family),
    calibration."""

    def __init__(self, config: PruneConfig):
        self.config = config
        self.trials: dict[str, TrialState] = {}
        self.groups: dict[tuple, list[str]] = {}  # shape key -> its trials (the paired rule's peers)
        self.cells: dict[tuple, list[str]] = {}  # (N, D) cell -> its trials, in the order added
        self.cell_finals: dict[tuple, list[str]] = {}  # (N, D) cell -> its finished trials, in order
        self.finals: dict[str, tuple[tuple[float, float], float]] = {}  # trial -> (cell, final loss)
        self.n_completions = 0  # valid completions so far (a version number for caches of `finals`)
        # TrialMeta.law_key() (size, schedule family) -> completed curves (shape-normalised lr), most recent
        self.curves: dict[tuple[float, str], list[Curve]] = {}
        self.n_done: dict[tuple[float, str], int] = {}  # law key -> completed curves so far
        self.calibration = Calibration(config.level, config.refit_growth)
        self.n_predictions = 0  # fresh final-loss predictions made (the law rule's cost)

    def add(self, trial_id: str, meta: TrialMeta) -> TrialState:
        """Start following a trial."""
        sched = meta.law_schedule()
        # Trials of one (N, D) cell with the same schedule shape: the curve law with a per-run
        # offset says their log-losses differ by a constant, which the paired rule tests.
        shape = np.round(sched.lr / LR_REF, 6)
        t = self.trials[trial_id] = TrialState(meta=meta, schedule=sched, kind=meta.schedule_kind(),
                                               law_key=meta.law_key(),
                                               shape_key=(meta.cell(), meta.total_steps, hash(shape.tobytes())))
        self.groups.setdefault(t.shape_key, []).append(trial_id)
        self.cells.setdefault(meta.cell(), []).append(trial_id)
        if meta.start_step > 0:
            t.from_start = False
            self._attach(t)
        return t

    def _attach(self, t: TrialState) -> None:
        """A WSD branch takes its trunk's curve up to its start step as its own early curve, once the
        trunk's curve reaches that step (a branch starts after its trunk reported past it; a trunk this
        pruner never saw -- a resumed sweep's trunk that was still running -- leaves the branch unjudged)."""
        trunk = self.trials.get(t.meta.trunk) if t.meta.trunk else None
        if trunk is None or not trunk.from_start or not trunk.steps or trunk.steps[-1] < t.meta.start_step:
            return
        t.steps, t.loss = continued(trunk.steps, trunk.loss, t.meta.start_step, t.steps, t.loss)
        t.n_prefix = sum(1 for s in t.steps if s <= t.meta.start_step)
        t.from_start = True

    def record(self, t: TrialState, report: Mapping[str, float]) -> None:
        """Take one report: the report fields rules judge, and a new curve point when it adds one."""
        t.n_reports += 1
        t.step = float(report["step"])
        t.train = _num(report.get("train_loss"))
        t.value = _num(report.get(self.config.metric))
        t.fresh = t.repeated = False
        if not t.from_start:
            self._attach(t)
        if math.isfinite(t.value) and t.value > 0 and 0 < t.step <= t.meta.total_steps:
            if t.steps and t.step <= t.steps[-1]:
                t.repeated = True
                return
            t.steps.append(t.step)
            t.loss.append(t.value)
            t.fresh = True

    def complete(self, trial_id: str, t: TrialState, final_loss: float, curve: Optional[tuple] = None) -> None:
        """A trial finished its planned steps: its final loss, curve and pairs become references."""
        t.ended = True
        if not is_loss(final_loss):
            return  # diverged or failed: censored, not a loss value
        if trial_id not in self.finals:
            self.cell_finals.setdefault(t.meta.cell(), []).append(trial_id)
        self.finals[trial_id] = (t.meta.cell(), float(final_loss))
        self.n_completions += 1
        if curve is not None:  # the full curve (a history run): the paired rule's peers see it
            pts = [(float(a), float(b)) for a, b in zip(*curve) if math.isfinite(float(b)) and float(b) > 0]
            t.steps, t.loss = [a for a, _ in pts], [b for _, b in pts]
            if t.meta.start_step > 0:  # a branch: given from step 0 (`completed_from_rows`), or its own reports only
                t.from_start = bool(t.steps) and t.steps[0] <= t.meta.start_step
                t.n_prefix = sum(1 for s in t.steps if s <= t.meta.start_step)
                if not t.from_start:
                    self._attach(t)
        self.calibration.add(trial_id, t, self)
        steps, loss = (np.asarray(curve[0], float), np.asarray(curve[1], float)) if curve is not None \
            else (np.array(t.steps), np.array(t.loss))
        ok = np.isfinite(loss) & (loss > 0) & (steps >= 1) & (steps <= t.meta.total_steps)
        steps, loss = steps[ok], loss[ok]
        if np.count_nonzero(steps >= t.schedule.warmup_end) < 4:
            return
        idx = np.rint(steps).astype(np.int64)
        c = Curve(steps, t.schedule.lr[idx], loss, name=trial_id, warmup_steps=t.schedule.warmup_end,
                  _schedule=t.schedule)
        key = t.law_key
        curves = self.curves.setdefault(key, [])
        curves.append(c)
        del curves[:-self.config.max_curves]
        self.n_done[key] = self.n_done.get(key, 0) + 1

    def cross_peers(self, trial_id: str, t: TrialState, candidates: Iterable[str]):
        """(id, trial) of the ``candidates`` (ids of t's cell) that pair with t across schedules: another
        schedule kind, the same planned steps, a curve from step 0 (`TrialState.from_start`), enough reports."""
        for other in candidates:
            o = self.trials[other]
            if other != trial_id and o.kind != t.kind and o.meta.total_steps == t.meta.total_steps \
                    and o.from_start and len(o.steps) >= PAIR_MIN_POINTS:
                yield other, o

    def is_reference(self, trial_id: str) -> bool:
        """A trial still running, or one that finished (a stopped or diverged one is no reference)."""
        return not self.trials[trial_id].ended or trial_id in self.finals


def completed_from_rows(trials: Mapping[str, Mapping[str, Any]], observations: Iterable[Mapping[str, Any]],
                        metas: Mapping[str, TrialMeta], metric: str = "eval_loss") -> list[Completed]:
    """The finished trials of a store (``ObservationStore.trials()`` and its observation rows), in the
    order they finished, with their curves of `metric`; trials without a plan in `metas` are skipped.

    >>> meta = TrialMeta(N=1e6, D=2e7, total_steps=100, lr=np.full(100, 1e-3), flops=1.2e14)
    >>> rows = {"a": {"status": "finished", "summary": {}, "time": 1.0}}
    >>> [c.final for c in completed_from_rows(rows, [{"trial_id": "a", "step": 100, "eval_loss": 3.2}], {"a": meta})]
    [3.2]
    """
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in observations:
        tid = row["trial_id"]
        if tid in metas:
            curves.setdefault(tid, []).append((float(row["step"]), _num(row.get(metric))))

    def whole(tid: str, depth: int = 0) -> list[tuple[float, float]]:
        # a WSD branch's rows start after its branch point: its trunk's rows (a trunk with a plan in
        # `metas`, itself from step 0) come first, as `History` attaches them live
        pts = sorted(curves.get(tid, []))
        m = metas[tid]
        if m.start_step <= 0 or m.trunk not in metas or depth > len(metas):
            return pts
        trunk = whole(m.trunk, depth + 1)
        if not trunk or metas[m.trunk].start_step > 0 and trunk[0][0] > metas[m.trunk].start_step \
                or trunk[-1][0] < m.start_step:
            return pts
        steps, loss = continued([p[0] for p in trunk], [p[1] for p in trunk], m.start_step,
                                [p[0] for p in pts], [p[1] for p in pts])
        return list(zip(steps, loss))

    out = []
    ended = sorted((rec.get("time") or 0.0, tid) for tid, rec in trials.items()
                   if rec.get("status") == Outcome.FINISHED.value and tid in metas)
    for _, tid in ended:
        pts = whole(tid)
        summary = trials[tid].get("summary") or {}
        final = _num(summary.get(f"final_{metric}", pts[-1][1] if pts else math.nan))
        out.append(Completed(tid, metas[tid], final, tuple(p[0] for p in pts), tuple(p[1] for p in pts)))
    return out


def continued(trunk_steps: Sequence[float], trunk_loss: Sequence[float], start_step: float,
              steps: Sequence[float], loss: Sequence[float]) -> tuple[list[float], list[float]]:
    """A WSD branch's curve from step 0: its trunk's points up to its start step, then its own after it.

    The branch restores its trunk's state after ``start_step`` steps and the two ran the same steps
    at the same lr before it (a cooldown branch, or an extension of a shorter run), so the trunk's
    curve there is the branch's own; after it their schedules differ, and only the branch's points count.

    >>> continued([10, 20, 30, 40], [4.0, 3.5, 3.2, 3.0], 30, [40, 50], [3.1, 2.9])
    ([10.0, 20.0, 30.0, 40.0, 50.0], [4.0, 3.5, 3.2, 3.1, 2.9])
    """
    head = [(float(s), float(v)) for s, v in zip(trunk_steps, trunk_loss) if s <= start_step]
    tail = [(float(s), float(v)) for s, v in zip(steps, loss) if s > start_step]
    return [s for s, _ in head + tail], [v for _, v in head + tail]


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


__all__ = ["History", "TrialState", "Completed", "completed_from_rows", "continued"]
