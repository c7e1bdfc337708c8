"""The forecast rule: a run's final loss predicted from its own prefix under its schedule, with an
interval calibrated on the sweep's completed runs; stop it when even that interval's low end is
worse than the best run of its (N, D) cell.

Prediction: ``laws.final_loss.predict_final`` with the curve law (``law``) fitted, without
bootstrap, on the completed runs of the trial's size and schedule kind (the trial contributes its
offset; the law sees the schedule's shape, so a WSD run's decay still to come is in the forecast).
Nothing before its (size, kind) has a completed run (the law rule's prefix-only mode covers those).

Interval: the law's own interval assumes its form is right, and on real learning-rate sweeps it is
not (lr changes a curve's shape, not only its level: the best lr trails early and catches up, a
far-too-high lr gains less from the decay than the law says). So the interval is measured instead:
when a trial completes, the forecasts the rule would have made of it from each fraction f of its
steps, with the law its size and kind had before it completed, are scored against its realised final loss,
e(f) = log(forecast) − log(final). Per completed run the pool keeps, at each f, the largest e
from f on (how far a forecast from f on overshot: the stop side) and the smallest (the reference
side). The allowances are their conformal ``level`` quantiles over the runs of the trial's
schedule kind, sizes pooled (≥ 9 runs; `Calibration` of the paired rule does the same for
pairs): a new run's forecast from f on overshoots by more than ``hi(f)`` with probability at
most 1 − level, whatever the law gets wrong on this sweep.

Vote when ``forecast · exp(−hi(f)) > reference · (1 + margin)``, the reference being the best
finished run of the cell (its realised final loss) or a running one's calibrated upper end,
``forecast · exp(−lo(f))``; wrap in `Patient` (consecutive fresh forecasts). Forecasts are made
when the prefix grew by ``refit_growth`` and ``refit_every`` reports arrived, like the law rule's.

>>> import numpy as np
>>> from orchestrator.core.pruning import PruneConfig, Pruner, TrialMeta
>>> from orchestrator.core.pruning.rules import RULES
>>> cfg = PruneConfig()
>>> rule = RULES["forecast"](cfg, None).rule
>>> rule.name, rule.allowances(('wsd', 'wsd')) is None  # no completed run yet: uncalibrated, never votes
('forecast', True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...laws.curve_law import CurveLaw
from ...laws.curves import Curve
from ...laws.final_loss import make_law, predict_final
from ..calibration import conformal, stale
from ..config import PruneConfig
from ..decision import Verdict
from ..history import History, TrialState
from ..pairstat import at, from_each_fraction

MIN_RUNS = 9  # completed runs scored before the interval exists (a 0.9 conformal bound needs 9)
REFIT_FACTOR = 1.5  # a (size, schedule) law is refitted once its completed curves grew by this factor


@dataclass(frozen=True)
class ForecastConfig:
    """The forecast rule's knobs (from the spec's ``pruning`` section)."""

    grace: float = 0.1  # no forecast before this fraction of the planned steps (the paired rule's grace)
    margin: float = 0.0  # vote when low end > reference · (1 + margin); the interval holds the final's noise
    level: float = 0.9
    law: str = "multipower"
    refit_growth: float = 0.1
    refit_every: int = 2
    max_curves: int = 6
    seed: int = 0
    metric: str = "eval_loss"  # named in the stop reason

    @classmethod
    def of(cls, config: PruneConfig) -> "ForecastConfig":
        return cls(grace=config.paired_grace, margin=config.paired_margin, level=config.level, law=config.law,
                   refit_growth=config.refit_growth, refit_every=config.refit_every,
                   max_curves=config.max_curves, seed=config.seed, metric=config.metric)


class Forecast:
    """Votes on each fresh forecast whether the trial will surely end worse than its cell's best."""

    name = "forecast"

    def __init__(self, config: ForecastConfig = ForecastConfig()):
        self.config = config
        self._laws: dict[tuple, tuple[int, Optional[CurveLaw]]] = {}  # (N, kind) -> (curves it saw, law)
        self._curves: dict[tuple, list[Curve]] = {}  # (N, kind) -> completed curves (most recent max_curves)
        self._n_added: dict[tuple, int] = {}  # (N, kind) -> completed curves added so far
        self._seen: set[str] = set()  # completed trials already scored
        # (trial's kind, law's kind) -> per scored run, at each f: the max over the checks from f on of
        # e (the stop side) and the min (the reference side)
        self.pools: dict[tuple[str, str], tuple[list[np.ndarray], list[np.ndarray]]] = {}
        self._cache: dict[tuple[str, str], tuple[int, Optional[np.ndarray], Optional[np.ndarray]]] = {}
        self._upper: dict[str, float] = {}  # running trial -> its latest calibrated upper end (log)
        self._last: dict[str, tuple[float, int]] = {}  # trial -> (step, report count) of its last forecast

    # -- the check -----------------------------------------------------------------------------
    def check(self, trial_id: str, t: TrialState, history: History) -> Optional[Verdict]:
        """A vote per fresh forecast past ``grace`` (None: not due, no law of its size, or uncalibrated)."""
        self._learn(history)
        cfg = self.config
        T = t.meta.total_steps
        if not t.fresh or not t.from_start or t.step < cfg.grace * T or not self._due(trial_id, t):
            return None
        found = self._calibrated_law(t)
        if found is None:
            return None
        kind, law, (hi_f, lo_f, n) = found
        est = self._forecast(law, t, len(t.steps))
        if est is None:
            return None
        self._last[trial_id] = (t.step, t.n_reports)
        f = t.step / T
        hi, lo = at(hi_f, f), -at(-lo_f, f)  # clipped at 0: an allowance never narrows the forecast
        low, high = est - hi, est - lo
        self._upper[trial_id] = high
        pred = {"step": float(t.step), "fraction": float(f), "mode": "forecast", "law": cfg.law, "level": cfg.level,
                "estimate": float(np.exp(est)), "low": float(np.exp(low)), "high": float(np.exp(high)),
                "allowance": float(hi), "calibrated": True, "calibration_runs": int(n),
                "law_schedule": kind, "margin": cfg.margin}
        ref = self._reference(trial_id, t, history)
        if ref is None:
            pred.update(reference="none", reference_high=math.nan)
            return Verdict(False, pred)
        name, other, ref_high = ref
        pred.update(reference=name, reference_trial=other, reference_high=float(np.exp(ref_high)),
                    threshold=float(np.exp(ref_high) * (1 + cfg.margin)))
        vote = bool(low > ref_high + math.log1p(cfg.margin))
        return Verdict(vote, pred, _reason(cfg, pred) if vote else "")

    def allowances(self, kinds: tuple[str, str]) -> Optional[tuple[np.ndarray, np.ndarray, int]]:
        """(hi(f), lo(f), runs) of the pool of forecasts of ``kinds[0]`` runs by a law fitted on
        ``kinds[1]`` runs, or None (fewer than ``MIN_RUNS`` scored runs). Recomputed once the pool
        grew by ``refit_growth``."""
        his, los = self.pools.get(kinds, ([], []))
        n = len(his)
        cached = self._cache.get(kinds)
        if stale(cached, n, self.config.refit_growth):
            hi = conformal(his, self.config.level) if n >= MIN_RUNS else None
            cached = (n, None, None) if hi is None else (n, hi, -conformal([-x for x in los], self.config.level))
            self._cache[kinds] = cached
        return None if cached[1] is None else (cached[1], cached[2], cached[0])

    # -- internals -----------------------------------------------------------------------------
    def _calibrated_law(self, t: TrialState):
        """(law's kind, law, allowances) for a trial: the law of its size and schedule kind, once the
        pool of that kind is calibrated; or None.

        Only the trial's own schedule: a law fitted on the cosine runs of a size, forecasting a WSD
        run of it (calibrated on such forecasts), stopped a cell's winner on the real sweeps (its
        forecast 15 % too pessimistic at 24 % of its steps, the pool's 90 % bound 11 %). Across
        schedules the paired rule judges, calibrated per pair of kinds.
        """
        family = t.meta.schedule_family()
        cal = self.allowances((family, family))
        law = self._law(t.law_key) if cal is not None else None
        return None if law is None else (family, law, cal)

    def _due(self, trial_id: str, t: TrialState) -> bool:
        last = self._last.get(trial_id)
        if last is None:
            return True
        return t.step >= last[0] * (1.0 + self.config.refit_growth) and t.n_reports - last[1] >= self.config.refit_every

    def _learn(self, history: History) -> None:
        """Score the trials completed since the last check (with the law their size and schedule kind
        had before), then add their curves to that law."""
        if len(self._seen) == len(history.finals):
            return
        for tid, (_, final) in list(history.finals.items()):
            if tid in self._seen:
                continue
            self._seen.add(tid)
            self._upper.pop(tid, None)
            t = history.trials[tid]
            if not t.from_start or not t.steps or t.steps[-1] < t.meta.total_steps:
                continue
            law = self._law(t.law_key)
            if law is not None:
                self._score(law, t, float(final), (t.law_key[1], t.law_key[1]))
            self._add_curve(t)

    def _score(self, law: CurveLaw, t: TrialState, final: float, kinds: tuple[str, str]) -> None:
        T = t.meta.total_steps
        cfg = self.config
        f, e = [], []
        last = None  # (step, point index) of the last forecast: the checks the rule itself makes
        for k in range(1, len(t.steps) + 1):
            s = t.steps[k - 1]
            if s < cfg.grace * T or (last is not None and (s < last[0] * (1.0 + cfg.refit_growth)
                                                           or k - last[1] < cfg.refit_every) and k < len(t.steps)):
                continue
            est = self._forecast(law, t, k)
            if est is not None:
                last = (s, k)
                f.append(s / T)
                e.append(est - math.log(final))
        if not f:
            return
        his, los = self.pools.setdefault(kinds, ([], []))
        his.append(from_each_fraction(f, e))  # the worst overshoot from each fraction on
        los.append(from_each_fraction(f, e, largest=False))

    def _forecast(self, law: CurveLaw, t: TrialState, k: int) -> Optional[float]:
        """log of the final loss forecast from the trial's first ``k`` points, or None."""
        steps, loss = np.asarray(t.steps[:k], float), np.asarray(t.loss[:k], float)
        if np.count_nonzero(steps >= t.schedule.warmup_end) < 4:
            return None
        try:
            fl = predict_final(steps, loss, t.schedule, completed=law, law=self.config.law,
                               level=self.config.level, final_step=t.meta.total_steps, n_boot=0, seed=self.config.seed)
        except (RuntimeError, ValueError, np.linalg.LinAlgError):
            return None
        return math.log(fl.estimate) if fl.estimate > 0 and math.isfinite(fl.estimate) else None

    def _add_curve(self, t: TrialState) -> None:
        steps, loss = np.asarray(t.steps, float), np.asarray(t.loss, float)
        if np.count_nonzero(steps >= t.schedule.warmup_end) < 4:
            return
        idx = np.rint(steps).astype(np.int64)
        c = Curve(steps, t.schedule.lr[idx], loss, warmup_steps=t.schedule.warmup_end, _schedule=t.schedule)
        curves = self._curves.setdefault(t.law_key, [])
        curves.append(c)
        del curves[:-self.config.max_curves]
        self._n_added[t.law_key] = self._n_added.get(t.law_key, 0) + 1

    def _law(self, key: tuple[float, str]) -> Optional[CurveLaw]:
        """The law of a (size, schedule kind) on its completed curves (the most recent ``max_curves``),
        refitted (warm) once they grew by half."""
        total = self._n_added.get(key, 0)
        if not total:
            return None
        have = self._laws.get(key)
        # Refits at 1, 2, 3, 5, 8, 12, ... curves: the fits are the rule's cost (~1 s each on a loaded
        # core), and the calibration measures whatever a less recent law gets wrong.
        if have is None or total >= max(have[0] + 1, math.ceil(REFIT_FACTOR * have[0])):
            warm = have[1] if have is not None else None
            try:
                law = make_law(self.config.law, n_boot=0, seed=self.config.seed).fit(self._curves[key], warm=warm)
            except (RuntimeError, ValueError, np.linalg.LinAlgError):
                law = warm
            self._laws[key] = (total, law)
        return self._laws[key][1]

    def _reference(self, trial_id: str, t: TrialState, history: History) -> Optional[tuple[str, str, float]]:
        """(description, trial, log upper end) of the best other reference of the cell, or None."""
        best = None
        for other in history.cell_finals.get(t.meta.cell(), ()):
            v = math.log(history.finals[other][1])
            if other != trial_id and (best is None or v < best[2]):
                best = (f"same (N, D) trial {other} (finished)", other, v)
        for other in history.cells.get(t.meta.cell(), ()):
            if other == trial_id or other not in self._upper or history.trials[other].ended:
                continue
            v = self._upper[other]
            if best is None or v < best[2]:
                best = (f"same (N, D) trial {other} (forecast)", other, v)
        return best


def _reason(cfg: ForecastConfig, pred: dict) -> str:
    return (f"forecast final {cfg.metric} {pred['estimate']:.4g} (low end {pred['low']:.4g} after a "
            f"{pred['allowance']:.2%} allowance calibrated on {pred['calibration_runs']} completed runs) at "
            f"{pred['fraction']:.0%} of steps, above the {pred['reference']} upper end "
            f"{pred['reference_high']:.4g} by more than {cfg.margin:.1%}")


__all__ = ["Forecast", "ForecastConfig"]
