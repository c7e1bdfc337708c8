"""The online pruning rule: stop a trial whose predicted final loss cannot matter, stop diverging runs.

Pure and deterministic (no Ray): the Tune adapter ``orchestrator/tune/scheduler.py`` only maps
Tune's callbacks onto :meth:`Pruner.on_report` / :meth:`Pruner.on_complete`.

For every report of a trial the pruner

1. checks **divergence** first: a non-finite train loss (or an infinite eval loss) is *diverged*
   at once; a loss above ``divergence_factor`` × the trial's own running minimum, or (after
   warmup) above its first reported loss, is *diverged* after ``min_reports`` consecutive reports
   (a single spike that recovers is not a divergence);
2. from ``paired_grace`` of its planned steps on, **pairs** it with the leading trial of the same
   (N, D) cell and schedule shape (no curve law involved): the log-loss ratio over the recent
   common prefix, its lower end at ``level`` (noise of the mean and of one report), minus an
   allowance for how far such a bound overshot the realised final ratio on the sweep's own
   completed pairs (a conformal quantile at ``level``; before enough pairs have completed, a
   per-pair trend allowance plus ``paired_prior``); and, once calibrated, with the trials of the
   same cell under **another** schedule shape, whose allowance (calibrated per ordered pair of
   schedule kinds on the sweep's completed pairs of those kinds) holds the ratio's systematic drift
   too; stops when the higher of these lower ends exceeds ``1 + paired_margin`` for
   ``min_reports`` consecutive reports;
3. from the ``grace`` fraction of its planned steps on, predicts the trial's **final** loss
   (``laws.final_loss.predict_final``: a schedule-aware curve law fitted on the completed runs of
   the same N, or on the prefix alone while there are none) with an interval at ``level``;
4. compares the **lower** end of that interval with the **upper** end of a reference at the
   trial's own planned compute:
   - the frontier: the best loss achievable at C = 6·N·D by the L(N, D) Chinchilla law fitted
     on the completed trials (best final loss per (N, D) cell), upper end from its bootstrap;
     used once ``min_frontier_points`` cells over ≥ 3 sizes have finished (or an external
     frontier is given);
   - the same (N, D) cell, any schedule: the best other trial of that cell (a completed trial's
     realised final loss, a running trial's predicted upper end);
   and stops when ``low > reference_high · (1 + margin)`` for ``min_reports`` consecutive
   fresh predictions (never on one report).

Cost: a fresh prediction is made only when the logged prefix grew by ``refit_growth`` (10 %) of
its steps since the last one and at least ``refit_every`` reports arrived; in between a report
costs a few list appends and, after ``paired_grace``, one ratio statistic per trial of its cell
and schedule (~0.1 ms each). The curve law of a size is refitted only when the completed trials of
that size grew by ``refit_growth`` since its last fit (at least one), the Chinchilla frontier only
when the finished trials did (so a sweep of thousands of trials refits each O(log n) times).

The curve law sees the schedule's *shape* (lr / peak × ``LR_REF``): runs of one N at different
peak lrs then share one law and differ by the per-run offset that ``predict_final`` fits on the
prefix (a multiplicative, lr-dependent penalty is exactly such an offset); what an offset cannot
absorb shows up as prefix drift, which widens the interval.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import numpy as np

from trainers.contract import TrialConfig
from trainers.schedules import lr_array

from .core.cells import cell_of
from .laws.curve_law import CurveLaw
from .laws.curves import Curve, Schedule
from .laws.final_loss import make_law, predict_final
from .spec import PruningSpec

LR_REF = 1e-3  # the peak every schedule shape is scaled to before the curve law sees it

CONTINUE, STOP, DIVERGED = "continue", "stop", "diverged"


# The knobs are the spec's `pruning` section (typed, validated, documented in docs/spec.md).
PruneConfig = PruningSpec


@dataclass(frozen=True)
class TrialMeta:
    """What the pruner needs to know of a trial's plan."""

    N: float  # non-embedding parameters
    D: float  # planned training tokens
    total_steps: int
    lr: np.ndarray = field(repr=False)  # the lr used at every step 0..total_steps-1 (trainers.schedules)
    flops: float  # planned training FLOPs
    warmup_steps: int = 0
    start_step: int = 0  # a WSD cooldown branch starts at its trunk's step (orchestrator/branching.py)
    schedule: str = ""  # the schedule's kind and fractions (trainers.contract.Schedule); "" = from the lr shape
    cell_D: Optional[float] = None  # the planned trial's nominal D (its cell; None: the rounded D is the cell's)

    @classmethod
    def from_trial_config(cls, cfg: TrialConfig | Mapping[str, Any], cell_D: Optional[float] = None) -> "TrialMeta":
        """The plan of a contract TrialConfig (or its dict), with steps derived as the trainers do;
        `cell_D` is the planned trial's nominal D (`PlannedTrial.cell`)."""
        if not isinstance(cfg, TrialConfig):
            cfg = TrialConfig.from_dict(dict(cfg))
        b = (int(cfg.batch_tokens) // cfg.seq_len) * cfg.seq_len
        T = max(1, math.ceil(cfg.tokens / b))
        return cls(N=float(cfg.n_params), D=float(T * b), total_steps=T, lr=lr_array(T, cfg.lr, cfg.schedule),
                   flops=6.0 * cfg.n_params * T * b, warmup_steps=min(T, int(round(cfg.schedule.warmup * T))),
                   start_step=int(cfg.branch_step), schedule=_schedule_name(cfg.schedule), cell_D=cell_D)

    @property
    def compute(self) -> float:
        """C = 6·N·D, the compute the frontier is evaluated at (the fit's FLOP rule)."""
        return 6.0 * self.N * self.D

    def cell(self) -> tuple[float, float]:
        """The (N, D) cell key (`orchestrator.core.cells.cell_of`): the nominal D, whatever batch rounding did."""
        c = cell_of({"N": self.N, "D": self.D, "D_nominal": self.cell_D})
        return (c.N, c.D)

    def schedule_kind(self) -> str:
        """The schedule's shape as a fraction of the run, the same for every (N, D) (cross-schedule calibration key)."""
        if self.schedule:
            return self.schedule
        peak = float(np.max(self.lr)) if self.lr.size else 1.0
        bins = np.array_split(self.lr / peak, 20) if self.lr.size >= 20 else [self.lr / peak]
        return "shape:" + ",".join(f"{float(np.mean(b)):.2f}" for b in bins)

    def law_schedule(self) -> Schedule:
        """The per-step schedule the curve law sees: index s = the lr of step s, shape scaled to LR_REF."""
        peak = float(np.max(self.lr)) if self.lr.size else 1.0
        shape = self.lr / peak * LR_REF
        per_step = np.concatenate(([shape[0]], shape))  # index 0 takes no update
        return Schedule(lr=per_step, warmup_end=int(self.warmup_steps))


@dataclass(frozen=True)
class Decision:
    """continue | stop | diverged, with the reason and the prediction that justified it."""

    action: str = CONTINUE
    reason: str = ""
    prediction: dict = field(default_factory=dict)

    @property
    def stops(self) -> bool:
        """Whether the trial must end now."""
        return self.action != CONTINUE

    def summary(self) -> dict[str, Any]:
        """A flat record for the store's trial summary and MLflow tags."""
        out: dict[str, Any] = {"decision": self.action, "reason": self.reason}
        for k, v in self.prediction.items():
            out[f"pred_{k}"] = v
        return out


@dataclass
class _Trial:
    meta: TrialMeta
    schedule: Schedule
    steps: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    n_reports: int = 0
    first: float = math.nan
    running_min: float = math.inf
    blow_votes: int = 0
    stop_votes: int = 0
    pair_votes: int = 0
    last_pred_step: float = 0.0
    last_pred_report: int = -10**9
    prediction: Optional[dict] = None
    ended: bool = False
    shape_key: tuple = ()
    kind: str = ""  # TrialMeta.schedule_kind(): trials of one cell with another kind are cross-schedule peers


Frontier = Callable[[TrialMeta], tuple[float, float]]  # meta -> (estimate, upper end) at its compute


class Pruner:
    """Stop/continue decisions for running trials from their partial curves (see the module doc)."""

    def __init__(self, config: PruneConfig = PruneConfig(), frontier: Optional[Frontier] = None):
        self.config = config
        self.external_frontier = frontier
        self._trials: dict[str, _Trial] = {}
        self._completed: dict[float, list[Curve]] = {}  # N -> completed curves (shape-normalised lr)
        self._laws: dict[float, Optional[CurveLaw]] = {}
        self._finals: dict[str, tuple[tuple[float, float], float]] = {}  # trial -> (cell, final loss)
        self._frontier_fit = None
        self._frontier_stale = False
        self._frontier_n = 0  # finished trials the current frontier fit has seen
        self._n_done: dict[float, int] = {}  # N -> completed curves so far
        self._law_n: dict[float, int] = {}  # N -> completed curves when its law was last fitted
        self.n_predictions = 0
        # Paired-rule calibration: per completed pair (same cell and schedule), how far the
        # paired lower bound from each fraction of the run on overshot the realised final ratio.
        self._pair_pool: list[np.ndarray] = []
        self._groups: dict[tuple, list[str]] = {}  # shape key -> its trials (the paired rule's peers)
        self._cells: dict[tuple, list[str]] = {}  # (N, D) cell -> its trials, in the order added
        self._cell_finals: dict[tuple, list[str]] = {}  # (N, D) cell -> its finished trials, in order
        self._allowance: Optional[tuple[int, Optional[np.ndarray]]] = None  # (pool size, A(f)) cache
        # Cross-schedule calibration: per ordered pair of schedule kinds (i's, j's), for each completed
        # pair of one cell, how far i's paired lower bound over j overshot the realised final ratio.
        self._cross_pool: dict[tuple[str, str], list[np.ndarray]] = {}
        self._cross_allowance: dict[tuple[str, str], tuple[int, Optional[np.ndarray]]] = {}
        self._warm_laws: dict[float, CurveLaw] = {}  # N -> its last fitted law (starts the next refit)

    # ------------------------------------------------------------------ public API
    def on_report(self, trial_id: str, meta: TrialMeta, report: Mapping[str, float]) -> Decision:
        """The decision after one report (keys of trainers.contract.REPORT_KEYS; step required)."""
        t = self._trials.get(trial_id)
        if t is None:
            t = self._add(trial_id, meta)
        if t.ended:  # (`enabled` decides whether the controller installs a pruner at all)
            return Decision()
        step = float(report["step"])
        train = _num(report.get("train_loss"))
        val = _num(report.get(self.config.metric))
        t.n_reports += 1

        d = self._divergence(t, step, train, val)
        if d is not None:
            t.ended = True
            return d
        fresh = False
        if math.isfinite(val) and val > 0 and 0 < step <= meta.total_steps:
            if t.steps and step <= t.steps[-1]:
                return Decision(prediction=t.prediction or {})
            t.steps.append(step)
            t.loss.append(val)
            fresh = True
        if not t.steps or meta.start_step > 0:
            # A cooldown branch is its trunk's continuation: the trunk was the one to judge, and
            # the branch is short; only divergence stops it.
            return Decision()
        if fresh and step >= self.config.paired_grace * meta.total_steps:  # a vote per new loss value
            paired = self._paired(trial_id, t)
            t.pair_votes = t.pair_votes + 1 if paired is not None and paired.pop("vote") else 0
            if paired is not None:
                paired["votes"] = t.pair_votes
                if t.pair_votes >= self.config.min_reports:
                    t.ended = True
                    return Decision(STOP, _paired_reason(self.config, paired), paired)
        if step < self.config.grace * meta.total_steps:
            return Decision(prediction=t.prediction or {})
        if not self._due(t, step):
            return Decision(prediction=t.prediction or {})
        pred = self._predict(t)
        if pred is None:
            return Decision()
        verdict = self._compare(trial_id, t, pred)
        t.stop_votes = t.stop_votes + 1 if verdict else 0
        pred["votes"] = t.stop_votes
        t.prediction = pred
        if t.stop_votes >= self.config.min_reports:
            t.ended = True
            reason = _stop_reason(self.config, pred)
            return Decision(STOP, reason, pred)
        return Decision(prediction=pred)

    def on_complete(self, trial_id: str, final_loss: float, curve: Optional[tuple] = None,
                    meta: Optional[TrialMeta] = None) -> None:
        """A trial finished its planned steps: its curve and final loss become references."""
        t = self._trials.get(trial_id)
        if t is None and meta is not None:
            t = self._add(trial_id, meta)
        if t is None:
            return
        t.ended = True
        if not (isinstance(final_loss, (int, float)) and math.isfinite(final_loss) and final_loss > 0):
            return  # diverged or failed: censored, not a loss value
        if trial_id not in self._finals:
            self._cell_finals.setdefault(t.meta.cell(), []).append(trial_id)
        self._finals[trial_id] = (t.meta.cell(), float(final_loss))
        self._frontier_stale = True
        if curve is not None:  # the full curve (a history run): the paired rule's peers see it
            pts = [(float(a), float(b)) for a, b in zip(*curve) if math.isfinite(float(b)) and float(b) > 0]
            t.steps, t.loss = [a for a, _ in pts], [b for _, b in pts]
        self._calibrate(trial_id, t)
        steps, loss = (np.asarray(curve[0], float), np.asarray(curve[1], float)) if curve is not None \
            else (np.array(t.steps), np.array(t.loss))
        ok = np.isfinite(loss) & (loss > 0) & (steps >= 1) & (steps <= t.meta.total_steps)
        steps, loss = steps[ok], loss[ok]
        if np.count_nonzero(steps >= t.schedule.warmup_end) < 4:
            return
        idx = np.rint(steps).astype(np.int64)
        c = Curve(steps, t.schedule.lr[idx], loss, name=trial_id, warmup_steps=t.schedule.warmup_end,
                  _schedule=t.schedule)
        curves = self._completed.setdefault(t.meta.N, [])
        curves.append(c)
        del curves[:-self.config.max_curves]
        N = t.meta.N
        n = self._n_done[N] = self._n_done.get(N, 0) + 1
        # Refit lazily on the next prediction for this size, once the completed curves grew by
        # `refit_growth` since the last fit (every completion while there are few; a sweep of
        # thousands of trials would otherwise refit a size's law on every completion).
        if n - self._law_n.get(N, 0) >= max(1, math.ceil(self.config.refit_growth * n)):
            self._laws.pop(N, None)

    def on_remove(self, trial_id: str) -> None:
        """A trial ended without completing (stopped, failed): it is no longer a reference."""
        t = self._trials.get(trial_id)
        if t is not None:
            t.ended = True

    def frontier_at(self, meta: TrialMeta) -> Optional[tuple[float, float]]:
        """(estimate, upper end) of the best loss achievable at the trial's compute, or None."""
        if self.external_frontier is not None:
            return self.external_frontier(meta)
        if not self.config.use_frontier:
            return None
        fit = self._frontier()
        if fit is None:
            return None
        from .laws.chinchilla import frontier_samples

        C = meta.compute
        est = float(fit.law.frontier([C])["loss_opt"][0])
        if fit.samples is None or len(fit.samples) < 2:
            return est, est
        reps = frontier_samples(fit.samples, [C])["loss_opt"][:, 0]
        reps = reps[np.isfinite(reps)]
        high = float(np.quantile(reps, 0.5 + self.config.level / 2)) if reps.size else est
        return est, max(est, high)

    # ------------------------------------------------------------------ internals
    def _add(self, trial_id: str, meta: TrialMeta) -> _Trial:
        t = self._trials[trial_id] = self._new(meta)
        self._groups.setdefault(t.shape_key, []).append(trial_id)
        self._cells.setdefault(meta.cell(), []).append(trial_id)
        return t

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_cross_pool", {})
        self.__dict__.setdefault("_cross_allowance", {})
        self.__dict__.setdefault("_warm_laws", {})
        if "_cells" not in state:  # pickled before the cell indexes existed: rebuild them
            self._cells, self._cell_finals = {}, {}
            for tid, t in self._trials.items():
                self._cells.setdefault(t.meta.cell(), []).append(tid)
            for tid, (cell, _) in self._finals.items():
                self._cell_finals.setdefault(cell, []).append(tid)

    @staticmethod
    def _new(meta: TrialMeta) -> _Trial:
        sched = meta.law_schedule()
        # Trials of one (N, D) cell with the same schedule shape: the curve law with a per-run
        # offset says their log-losses differ by a constant, which the paired rule tests.
        shape = np.round(sched.lr / LR_REF, 6)
        return _Trial(meta=meta, schedule=sched, shape_key=(meta.cell(), meta.total_steps, hash(shape.tobytes())),
                      kind=meta.schedule_kind())

    def _divergence(self, t: _Trial, step: float, train: float, val: float) -> Optional[Decision]:
        # Both losses NaN is how a trainer reports a blown-up step; inf anywhere is a blow-up too.
        # One NaN alone only means "not measured in this report" (no evaluation, no train mean).
        if (math.isnan(train) and math.isnan(val)) or math.isinf(train) or math.isinf(val):
            return Decision(DIVERGED, f"non-finite loss at step {step:.0f} (train {train}, eval {val})", {"step": step})
        x = val if math.isfinite(val) else train
        if math.isnan(t.first):
            t.first = x
        after_warmup = step > t.meta.warmup_steps
        exploding = (t.n_reports >= 3 and x > self.config.divergence_factor * t.running_min) or \
                    (after_warmup and t.n_reports >= 3 and x > t.first)
        t.running_min = min(t.running_min, x)
        t.blow_votes = t.blow_votes + 1 if exploding else 0
        if t.blow_votes >= self.config.min_reports:
            return Decision(DIVERGED, f"loss exploding: {x:.4g} at step {step:.0f} vs running min "
                                      f"{t.running_min:.4g}, first {t.first:.4g}",
                            {"step": step, "loss": x, "running_min": t.running_min, "first": t.first})
        return None

    def _due(self, t: _Trial, step: float) -> bool:
        if t.prediction is None:
            return True
        grown = step >= t.last_pred_step * (1.0 + self.config.refit_growth)
        return grown and t.n_reports - t.last_pred_report >= self.config.refit_every

    def _predict(self, t: _Trial) -> Optional[dict]:
        cfg = self.config
        steps, loss = np.array(t.steps), np.array(t.loss)
        if np.count_nonzero(steps >= t.schedule.warmup_end) < 4:
            return None
        law = self._law(t.meta.N)
        try:
            fl = predict_final(steps, loss, t.schedule, completed=law if law is not None else (), law=cfg.law,
                               level=cfg.level, final_step=t.meta.total_steps, n_boot=cfg.n_boot, seed=cfg.seed)
        except (RuntimeError, ValueError, np.linalg.LinAlgError):
            return None
        self.n_predictions += 1
        t.last_pred_step = float(steps[-1])
        t.last_pred_report = t.n_reports
        return {"step": float(steps[-1]), "fraction": float(steps[-1] / t.meta.total_steps),
                "estimate": fl.estimate, "low": fl.low, "high": fl.high, "law": cfg.law, "level": cfg.level,
                "mode": "law" if law is not None else "prefix-only"}

    def _law(self, N: float) -> Optional[CurveLaw]:
        if N not in self._laws:
            curves = self._completed.get(N, [])
            law = None
            self._law_n[N] = self._n_done.get(N, 0)
            # The size's previous law starts the refit (a few more completed curves move it little):
            # one local fit instead of a grid of starts, most of the pruner's time at thousands of trials.
            warm = self._warm_laws
            if curves:
                try:
                    law = make_law(self.config.law, n_boot=self.config.n_boot, seed=self.config.seed).fit(
                        curves, warm=warm.get(N))
                except (RuntimeError, ValueError):
                    law = None
            self._laws[N] = law
            if law is not None:
                warm[N] = law
        return self._laws[N]

    def _compare(self, trial_id: str, t: _Trial, pred: dict) -> bool:
        """Fill the reference into ``pred``; True when the trial's low end is beyond it by the margin."""
        m = self.config.margin
        refs = []
        fr = self.frontier_at(t.meta)
        if fr is not None:
            refs.append(("frontier", fr[1], {"frontier_estimate": fr[0]}))
        same = self._same_cell(trial_id, t)
        if same is not None:
            refs.append(same)
        if not refs:
            pred.update(reference="none", reference_high=math.nan, margin=m)
            return False
        # The binding reference is the one that argues hardest for stopping (the lowest upper end).
        name, high, extra = min(refs, key=lambda r: r[1])
        pred.update(reference=name, reference_high=float(high), threshold=float(high * (1 + m)), margin=m, **extra)
        return pred["low"] > high * (1 + m)

    def _paired(self, trial_id: str, t: _Trial) -> Optional[dict]:
        """The paired comparison with the leading trial of the same cell (any schedule: ``_cross``), or None.

        The statistic is the log-loss ratio of the two runs over the recent common prefix
        (``_pair_stat``); its lower end is reduced by the calibrated allowance at the current
        fraction of the run (``_pair_allowance``), or, before the sweep has enough completed pairs,
        by a per-pair trend allowance and ``paired_prior``. The leader is the trial this one trails most.
        """
        cfg = self.config
        z = _z(cfg.level)
        T = t.meta.total_steps
        s_i, l_i = np.asarray(t.steps, float), np.log(np.asarray(t.loss, float))
        A = self._pair_allowance()  # None: uncalibrated, the per-pair trend allowance is needed
        best = None
        for other in self._groups.get(t.shape_key, ()):
            o = self._trials[other]
            if other == trial_id or len(o.steps) < PAIR_MIN_POINTS:
                continue
            if o.ended and other not in self._finals:
                continue  # stopped or diverged: not a reference
            stat = _pair_stat(s_i, l_i, np.asarray(o.steps, float), np.log(np.asarray(o.loss, float)),
                              t.schedule.warmup_end, T, z, trend=A is None)
            if stat is None or stat[0] < cfg.paired_grace * T:
                continue
            if best is None or stat[1] > best[1][1]:
                best = (other, stat)
        same = None
        if best is not None:
            other, (upto, mean, naive, trend_low) = best
            n = self._allowance[0] if A is not None else len(self._pair_pool)
            if A is not None:
                allowance = _at(A, upto / T)
                low = naive - allowance
            else:
                allowance = (naive - trend_low) + cfg.paired_prior
                low = trend_low - cfg.paired_prior
            same = (low, other, upto, mean, allowance, A is not None, n, "")
        cross = self._cross(trial_id, t, s_i, l_i, z)
        # The binding comparison is the one that argues hardest for stopping (the highest lower end).
        pick = max((c for c in (same, cross) if c is not None), key=lambda c: c[0], default=None)
        if pick is None:
            return None
        low, other, upto, mean, allowance, calibrated, n, kind = pick
        what = f"same (N, D) and schedule trial {other} (paired)" if not kind else \
            f"same (N, D) trial {other}, schedule {kind} (paired across schedules)"
        pred: dict[str, Any] = {
            "step": float(s_i[-1]), "fraction": float(s_i[-1] / T), "paired_fraction": float(upto / T),
            "mode": "paired", "level": cfg.level, "cross_schedule": bool(kind),
            "reference": what, "reference_trial": other,
            "ratio": float(np.exp(mean)), "ratio_low": float(np.exp(low)), "allowance": float(allowance),
            "calibrated": calibrated, "calibration_pairs": n, "margin": cfg.paired_margin,
            "vote": bool(low > math.log1p(cfg.paired_margin))}
        if other in self._finals and not kind:  # the leader finished: the implied final loss of this trial
            ref = self._finals[other][1]
            pred.update(estimate=float(ref * np.exp(mean)), low=float(ref * np.exp(low)),
                        high=float(ref * np.exp(2 * mean - low)))
        return pred

    def _cross(self, trial_id: str, t: _Trial, s_i: np.ndarray, l_i: np.ndarray, z: float) -> Optional[tuple]:
        """The paired comparison with the trials of the same cell under another schedule, or None.

        Runs of one (N, D) under two schedule shapes have log-loss ratios that move systematically
        between a fraction f of the run and its end (a WSD decay, a cosine's gradual one), by an
        amount set by the two shapes. That shift and its spread are measured on the sweep's own
        completed pairs of the same two kinds (any cell, ``_calibrate``): the lower end subtracts the
        conformal ``level`` quantile of how far i-over-j's paired lower bound overshot the realised
        final ratio from f on. Used only once that pool can calibrate (no uncalibrated variant: the
        shift is not ~0 the way a same-schedule pair's is, so a prior cannot stand in for it).
        """
        cfg = self.config
        T = t.meta.total_steps
        best = None
        for other, o in self._cross_peers(trial_id, t, self._cells.get(t.meta.cell(), ())):
            if o.ended and other not in self._finals:
                continue  # stopped or diverged: not a reference
            A = self._cross_allowance_for((t.kind, o.kind))
            if A is None:
                continue
            stat = _pair_stat(s_i, l_i, np.asarray(o.steps, float), np.log(np.asarray(o.loss, float)),
                              t.schedule.warmup_end, T, z, trend=False)
            if stat is None or stat[0] < cfg.paired_grace * T:
                continue
            upto, mean, naive, _ = stat
            allowance = _at(A, upto / T)
            low = naive - allowance
            if best is None or low > best[0]:
                best = (low, other, upto, mean, allowance, True, self._cross_allowance[(t.kind, o.kind)][0], o.kind)
        return best

    def _cross_peers(self, trial_id: str, t: _Trial, candidates):
        """(id, trial) of the ``candidates`` (ids of t's cell) that pair with t across schedules: another
        schedule kind, the same planned steps, not a cooldown branch, enough reports."""
        for other in candidates:
            o = self._trials[other]
            if other != trial_id and o.kind != t.kind and o.meta.total_steps == t.meta.total_steps \
                    and o.meta.start_step <= 0 and len(o.steps) >= PAIR_MIN_POINTS:
                yield other, o

    def _calibrate(self, trial_id: str, t: _Trial) -> None:
        """Add the pairs this completed trial forms with the completed trials of its cell and schedule."""
        z = _z(self.config.level)
        T = t.meta.total_steps
        s_i, l_i = np.asarray(t.steps, float), np.log(np.asarray(t.loss, float))
        if s_i.size < PAIR_MIN_POINTS or s_i[-1] < T:
            return
        for other in self._groups.get(t.shape_key, ()):
            o = self._trials[other]
            if other == trial_id or other not in self._finals or len(o.steps) < PAIR_MIN_POINTS:
                continue
            s_j, l_j = np.asarray(o.steps, float), np.log(np.asarray(o.loss, float))
            if s_j[-1] < T:
                continue
            self._pair_pool.append(_overshoot(s_i, l_i, s_j, l_j, t.schedule.warmup_end, T, z))
        if t.meta.start_step > 0:
            return
        for other, o in self._cross_peers(trial_id, t, self._cell_finals.get(t.meta.cell(), ())):
            s_j, l_j = np.asarray(o.steps, float), np.log(np.asarray(o.loss, float))
            if s_j[-1] < T:
                continue
            w = max(t.schedule.warmup_end, o.schedule.warmup_end)
            self._cross_pool.setdefault((t.kind, o.kind), []).append(_overshoot_dir(s_i, l_i, s_j, l_j, w, T, z))
            self._cross_pool.setdefault((o.kind, t.kind), []).append(_overshoot_dir(s_j, l_j, s_i, l_i, w, T, z))

    def _pair_allowance(self) -> Optional[np.ndarray]:
        """A(f): the conformal ``level`` quantile of the completed pairs' overshoot, or None (too few pairs).

        With n exchangeable pairs, a new pair's overshoot exceeds the ⌈(n+1)·level⌉-th smallest of
        them with probability at most 1 - level. Recomputed once the pool grew by ``refit_growth``
        (an older pool is a valid, if less sharp, calibration).
        """
        self._allowance = self._conformal(self._pair_pool, self._allowance)
        return self._allowance[1]

    def _cross_allowance_for(self, kinds: tuple[str, str]) -> Optional[np.ndarray]:
        """A(f) for i-over-j pairs of these two schedule kinds (as ``_pair_allowance``), or None."""
        pool = self._cross_pool.get(kinds)
        if not pool:
            return None
        self._cross_allowance[kinds] = self._conformal(pool, self._cross_allowance.get(kinds))
        return self._cross_allowance[kinds][1]

    def _conformal(self, pool: list, cached: Optional[tuple]) -> tuple[int, Optional[np.ndarray]]:
        n = len(pool)
        if cached is None or (cached[1] is None and n != cached[0]) or \
                n >= cached[0] * (1.0 + self.config.refit_growth) + 1:
            k = math.ceil((n + 1) * self.config.level)
            A = np.sort(np.array(pool), axis=0)[k - 1] if 0 < k <= n else None
            return n, A
        return cached

    def _same_cell(self, trial_id: str, t: _Trial):
        # Only the cell's own trials, in the order added (a scan of every trial was O(n) per
        # prediction: most of the pruner's time at thousands of trials).
        cell = t.meta.cell()
        best = None
        for other in self._cell_finals.get(cell, ()):
            final = self._finals[other][1]
            if other != trial_id and (best is None or final < best[1]):
                best = (f"same (N, D) trial {other} (finished)", final, {"reference_trial": other})
        for other in self._cells.get(cell, ()):
            o = self._trials[other]
            if other == trial_id or o.ended or o.prediction is None:
                continue
            if best is None or o.prediction["high"] < best[1]:
                best = (f"same (N, D) trial {other} (predicted)", o.prediction["high"], {"reference_trial": other})
        return best

    def _frontier(self):
        # Refitted once the finished trials grew by `refit_growth` since the last fit (the
        # bootstrap fit takes ~0.1 s; a sweep of thousands would refit it on every completion).
        grown = len(self._finals) >= self._frontier_n * (1.0 + self.config.refit_growth)
        if self._frontier_stale and (self._frontier_fit is None or grown):
            self._frontier_stale = False
            best: dict[tuple[float, float], float] = {}
            for cell, final in self._finals.values():
                best[cell] = min(final, best.get(cell, math.inf))
            Ns = {c[0] for c in best}
            if len(best) >= self.config.min_frontier_points and len(Ns) >= 3:
                from .laws.chinchilla import fit_chinchilla, refit

                cells = sorted(best)
                N = np.array([c[0] for c in cells])
                D = np.array([c[1] for c in cells])
                L = np.array([best[c] for c in cells])
                kw = dict(bootstrap=self.config.frontier_bootstrap, seed=self.config.seed)
                self._frontier_n = len(self._finals)
                try:
                    self._frontier_fit = (refit(self._frontier_fit, N, D, L, **kw) if self._frontier_fit is not None
                                          else fit_chinchilla(N, D, L, **kw))
                except (RuntimeError, ValueError):
                    self._frontier_fit = None
        return self._frontier_fit


PAIR_WINDOW = 0.25  # the paired statistic uses the common prefix from this fraction of it on
PAIR_MIN_POINTS = 4
PAIR_GRID = 101  # fractions 0, 0.01, ..., 1 at which the calibrated allowance is tabulated


def _pair_stat(s_i: np.ndarray, l_i: np.ndarray, s_j: np.ndarray, l_j: np.ndarray, warmup_end: float,
               T: float, z: float, trend: bool = True) -> Optional[tuple[float, float, float, float]]:
    """(common step, mean log ratio, its lower end, the lower end with a trend allowance) of run i over run j.

    Over i's reports in the last ``1 - PAIR_WINDOW`` of the common prefix (after warmup):
    d = log L_i - log L_j (j interpolated). Lower end = mean - z·sqrt(SE² + sd²): the noise of the
    mean (AR(1)-corrected) and of one report (the final loss is one report too). The trend variant
    also subtracts (|slope| + z·SE_slope) × the log-steps still to go (slope of d in log-steps):
    a gap that moved lately may move as much again, either way.
    """
    upto = min(s_i[-1], s_j[-1])
    lo = max(PAIR_WINDOW * upto, float(warmup_end), s_j[0])
    keep = (s_i >= lo) & (s_i <= upto)
    if np.count_nonzero(keep) < PAIR_MIN_POINTS:
        return None
    s = s_i[keep]
    d = l_i[keep] - np.interp(s, s_j, l_j)
    mean = float(np.mean(d))
    # One report's noise, from second differences of d over the whole common prefix after warmup
    # (var(d[k+1] - 2d[k] + d[k-1]) = 6·var(noise) for white noise; a smooth trend hardly adds):
    # steadier than the window's spread, and free of the trend, which the allowance covers.
    every = (s_i >= max(float(warmup_end), s_j[0])) & (s_i <= upto)
    d_all = l_i[every] - np.interp(s_i[every], s_j, l_j)
    sd = float(np.sqrt(np.mean(np.diff(d_all, 2) ** 2) / 6.0))
    naive = mean - z * math.hypot(_mean_se(d - mean), sd)
    if not trend:
        return float(upto), mean, naive, -math.inf
    x = np.log(s)
    X = x - x.mean()
    sxx = float(X @ X)
    if sxx <= 0:
        return float(upto), mean, naive, -math.inf
    slope = float(X @ (d - mean)) / sxx
    r = d - mean - slope * X
    sd_r = float(np.std(r, ddof=1)) if r.size > 2 else 0.0
    se_r = _mean_se(r)
    n_eff = (sd_r / se_r) ** 2 if se_r > 0 else float(r.size)
    se_slope = sd_r / math.sqrt(sxx) * math.sqrt(r.size / max(n_eff, 1.0))
    trend = (abs(slope) + z * se_slope) * max(0.0, math.log(T) - float(x.mean()))
    return float(upto), mean, naive, naive - trend


def _overshoot(s_i: np.ndarray, l_i: np.ndarray, s_j: np.ndarray, l_j: np.ndarray, warmup_end: float,
               T: float, z: float) -> np.ndarray:
    """For a completed pair: at each fraction f, the largest amount by which the paired lower end
    (either run over the other, at any report from f on) exceeded the realised final log ratio.

    Symmetric on purpose: a gap that shrinks counts as much as one that reverses. Counting only
    reversals (the wrong stops themselves) calibrates a bound that is right for 90 % of pairs,
    too weak when every winner meets several peers at dozens of reports: on the real lr sweeps it
    stopped 3 of 8 winners, on the simulated benchmark 1 of 6 cell winners.
    """
    return np.maximum(_overshoot_dir(s_i, l_i, s_j, l_j, warmup_end, T, z),
                      _overshoot_dir(s_j, l_j, s_i, l_i, warmup_end, T, z))


def _overshoot_dir(a_s: np.ndarray, a_l: np.ndarray, b_s: np.ndarray, b_l: np.ndarray, warmup_end: float,
                   T: float, z: float) -> np.ndarray:
    """For a completed pair: at each fraction f, the largest amount by which run a's paired lower end
    over run b (at any report of a from f on) exceeded the realised final log ratio (-inf: no check).

    One direction only: across two schedule shapes the ratio drifts one way (``Pruner._cross``).
    """
    out = np.full(PAIR_GRID, -np.inf)
    final = float(a_l[-1] - b_l[-1])
    f, score = [], []
    for k in range(PAIR_MIN_POINTS, a_s.size + 1):
        stat = _pair_stat(a_s[:k], a_l[:k], b_s, b_l, warmup_end, T, z, trend=False)
        if stat is not None:
            f.append(stat[0] / T)
            score.append(stat[2] - final)
    if not f:
        return out
    sup = np.maximum.accumulate(np.array(score)[::-1])[::-1]  # worst from each check on
    idx = np.searchsorted(np.array(f), np.linspace(0.0, 1.0, PAIR_GRID))
    ok = idx < len(f)
    out[ok] = sup[idx[ok]]
    return out


def _at(A: np.ndarray, f: float) -> float:
    """The allowance A at fraction f of the run (never negative: an allowance never helps a stop)."""
    return max(0.0, float(A[min(int(f * (A.size - 1)), A.size - 1)]))


def _schedule_name(s: Any) -> str:
    return f"{s.kind} warmup {s.warmup:g} decay {s.decay:g} final {s.final_lr_frac:g}"


def _paired_reason(cfg: PruneConfig, pred: dict) -> str:
    how = (f"a {pred['allowance']:.2%} allowance calibrated on {pred['calibration_pairs']} completed pairs"
           if pred["calibrated"] else f"a {pred['allowance']:.2%} trend and prior allowance (uncalibrated)")
    return (f"predicted final {cfg.metric} {pred['ratio']:.4f}× that of {pred['reference']} at "
            f"{pred['fraction']:.0%} of steps; lower end {pred['ratio_low']:.4f} (after {how}) "
            f"> 1 + margin {cfg.paired_margin:.1%}")


def _stop_reason(cfg: PruneConfig, pred: dict) -> str:
    head = (f"predicted final {cfg.metric} {pred['estimate']:.4g} [{pred['low']:.4g}, {pred['high']:.4g}] "
            f"at {pred['fraction']:.0%} of steps")
    return (f"{head}; low end above the {pred['reference']} upper end {pred['reference_high']:.4g} "
            f"by more than {cfg.margin:.1%}")


@functools.lru_cache(maxsize=16)
def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def _mean_se(r: np.ndarray) -> float:
    """Standard error of the mean of an autocorrelated series (AR(1) effective sample size)."""
    n = len(r)
    sd = float(np.std(r, ddof=1)) if n > 1 else 0.0
    if n < 3 or sd == 0:
        return sd
    a, b = r[:-1] - r[:-1].mean(), r[1:] - r[1:].mean()  # lag-1 correlation (np.corrcoef, cheaper)
    den = math.sqrt(float(a @ a) * float(b @ b))
    rho = float(a @ b) / den if den > 0 else 0.0  # a constant half: no correlation to speak of
    rho = min(max(rho, 0.0), 0.95)
    return sd / math.sqrt(max(n * (1 - rho) / (1 + rho), 1.0))


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


__all__ = ["PruneConfig", "TrialMeta", "Decision", "Pruner", "CONTINUE", "STOP", "DIVERGED", "LR_REF"]
