"""The law rule: predict a trial's final loss from its prefix, stop it when even the low end of that
prediction is beyond the best reference at its compute.

From ``grace`` of its planned steps on, a fresh prediction (``laws.final_loss.predict_final``: a
schedule-aware curve law fitted on the completed runs of the same size and schedule family,
`TrialMeta.law_key`, or on the prefix alone while there are none) is made once the logged prefix
grew by ``refit_growth`` of its steps and at least ``refit_every`` reports arrived. Its **lower**
end is compared with the **upper** end of

- the frontier (`orchestrator.core.pruning.frontier`) at the trial's planned compute C = 6·N·D, and
- the best other trial of the same (N, D) cell and schedule family (a finished trial's realised
  final loss; a running trial's predicted upper end, or its latest loss where lower or before its
  prediction);

it votes when ``low > reference_high · (1 + margin)`` (wrap in `Patient`: consecutive fresh
predictions, never one). The curve law of a (size, family) is refitted only when its completed
curves grew by ``refit_growth`` since its last fit (at least one), starting from its last fit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...laws.curve_law import CurveLaw
from ...laws.final_loss import make_law, predict_final
from ..config import PruneConfig
from ..decision import Verdict
from ..frontier import FittedFrontier, Frontier, FrontierConfig
from ..history import History, TrialState


@dataclass(frozen=True)
class LawConfig:
    """The law rule's knobs."""

    grace: float = 0.3  # no prediction before this fraction of the planned steps
    margin: float = 0.02
    law: str = "multipower"
    level: float = 0.9
    n_boot: int = 10
    seed: int = 0
    refit_growth: float = 0.1
    refit_every: int = 2
    use_frontier: bool = True
    metric: str = "eval_loss"  # named in the stop reason

    @classmethod
    def of(cls, config: PruneConfig) -> "LawConfig":
        return cls(grace=config.grace, margin=config.margin, law=config.law, level=config.level,
                   n_boot=config.n_boot, seed=config.seed, refit_growth=config.refit_growth,
                   refit_every=config.refit_every, use_frontier=config.use_frontier, metric=config.metric)


class LawRule:
    """Votes on each fresh final-loss prediction whether the trial cannot reach its best reference."""

    name = "law"

    def __init__(self, config: LawConfig = LawConfig(), frontier: Optional[Frontier] = None,
                 fitted: Optional[FittedFrontier] = None):
        self.config = config
        self.external_frontier = frontier  # given: used instead of the sweep's own fitted frontier
        self.fitted = fitted if fitted is not None else FittedFrontier(FrontierConfig(
            level=config.level, refit_growth=config.refit_growth, seed=config.seed))
        # keyed by TrialMeta.law_key(): (size, schedule family)
        self._laws: dict[tuple, Optional[CurveLaw]] = {}  # its curve law (a cache of the history)
        self._law_n: dict[tuple, int] = {}  # completed curves when its law was last fitted
        self._warm: dict[tuple, CurveLaw] = {}  # its last fitted law (starts the next refit)

    def check(self, trial_id: str, t: TrialState, history: History) -> Optional[Verdict]:
        """A vote per fresh prediction past ``grace`` (None: not due, or no prediction possible)."""
        if t.repeated or not t.steps or not t.from_start or t.step < self.config.grace * t.meta.total_steps:
            return None
        if not self._due(t):
            return None
        pred = self._predict(t, history)
        if pred is None:
            return None
        vote = self._compare(trial_id, t, pred, history)
        t.prediction = pred
        return Verdict(vote, pred, _reason(self.config, pred) if vote else "")

    def frontier_at(self, meta, history: History) -> Optional[tuple[float, float]]:
        """(estimate, upper end) of the best loss achievable at the trial's compute, or None."""
        if self.external_frontier is not None:
            return self.external_frontier(meta)
        if not self.config.use_frontier:
            return None
        return self.fitted.at(meta, history)

    def _due(self, t: TrialState) -> bool:
        if t.prediction is None:
            return True
        grown = t.step >= t.last_pred_step * (1.0 + self.config.refit_growth)
        return grown and t.n_reports - t.last_pred_report >= self.config.refit_every

    def _predict(self, t: TrialState, history: History) -> Optional[dict]:
        cfg = self.config
        steps, loss = np.array(t.steps), np.array(t.loss)
        if np.count_nonzero(steps >= t.schedule.warmup_end) < 4:
            return None
        law = self._law(t.law_key, history)
        try:
            fl = predict_final(steps, loss, t.schedule, completed=law if law is not None else (), law=cfg.law,
                               level=cfg.level, final_step=t.meta.total_steps, n_boot=cfg.n_boot, seed=cfg.seed)
        except (RuntimeError, ValueError, np.linalg.LinAlgError):
            return None
        history.n_predictions += 1
        t.last_pred_step = float(steps[-1])
        t.last_pred_report = t.n_reports
        return {"step": float(steps[-1]), "fraction": float(steps[-1] / t.meta.total_steps),
                "estimate": fl.estimate, "low": fl.low, "high": fl.high, "law": cfg.law, "level": cfg.level,
                "mode": "law" if law is not None else "prefix-only"}

    def _law(self, key: tuple[float, str], history: History) -> Optional[CurveLaw]:
        n = history.n_done.get(key, 0)
        # Refit once the completed curves grew by `refit_growth` since the last fit (every
        # completion while there are few; a sweep of thousands of trials would otherwise refit a
        # size's law on every completion).
        if key in self._laws and n - self._law_n[key] >= max(1, math.ceil(self.config.refit_growth * n)):
            del self._laws[key]
        if key not in self._laws:
            curves = history.curves.get(key, [])
            law = None
            self._law_n[key] = n
            if curves:
                # The size's previous law starts the refit (a few more completed curves move it little):
                # one local fit instead of a grid of starts.
                try:
                    law = make_law(self.config.law, n_boot=self.config.n_boot, seed=self.config.seed).fit(
                        curves, warm=self._warm.get(key))
                except (RuntimeError, ValueError):
                    law = None
            self._laws[key] = law
            if law is not None:
                self._warm[key] = law
        return self._laws[key]

    def _compare(self, trial_id: str, t: TrialState, pred: dict, history: History) -> bool:
        """Fill the reference into ``pred``; True when the trial's low end is beyond it by the margin."""
        m = self.config.margin
        refs = []
        fr = self.frontier_at(t.meta, history)
        if fr is not None:
            refs.append(("frontier", fr[1], {"frontier_estimate": fr[0]}))
        same = _same_cell(trial_id, t, history)
        if same is not None:
            refs.append(same)
        if not refs:
            pred.update(reference="none", reference_high=math.nan, margin=m)
            return False
        # The binding reference is the one that argues hardest for stopping (the lowest upper end).
        name, high, extra = min(refs, key=lambda r: r[1])
        pred.update(reference=name, reference_high=float(high), threshold=float(high * (1 + m)), margin=m, **extra)
        return pred["low"] > high * (1 + m)


def _same_cell(trial_id: str, t: TrialState, history: History):
    # Only the cell's own trials, in the order added (a scan of every trial was O(n) per
    # prediction: most of the pruner's time at thousands of trials), and only those of the trial's
    # schedule family: the law's interval assumes its form is right, and what it gets wrong about a
    # schedule's shape (a WSD run's decay still to come, forecast from its stable phase) is shared by
    # the runs of one family, not by another's realised final loss. Across families the paired rule
    # judges, calibrated per pair of schedule kinds.
    cell = t.meta.cell()
    best = None
    for other in history.cell_finals.get(cell, ()):
        final = history.finals[other][1]
        if other != trial_id and history.trials[other].law_key == t.law_key and (best is None or final < best[1]):
            best = (f"same (N, D) trial {other} (finished)", final, {"reference_trial": other})
    for other in history.cells.get(cell, ()):
        o = history.trials[other]
        if other == trial_id or o.ended or o.law_key != t.law_key:
            continue
        high, what = _running_high(o)
        if high is not None and (best is None or high < best[1]):
            best = (f"same (N, D) trial {other} ({what})", high, {"reference_trial": other})
    return best


def _running_high(o: TrialState) -> tuple[Optional[float], str]:
    """A running trial's upper end of its final loss: its predicted upper end, or its latest loss where
    that is lower or there is no prediction yet (training lowers the loss; a run whose loss climbs away
    is the divergence rule's). Without the latest loss a trial that started ahead of its peers had no
    reference until they were past ``grace`` with a prediction: a hopeless run could finish first."""
    latest = o.loss[-1] if o.loss and math.isfinite(o.loss[-1]) else None
    predicted = o.prediction["high"] if o.prediction is not None else None
    if predicted is not None and (latest is None or predicted <= latest):
        return predicted, "predicted"
    return latest, "latest"


def _reason(cfg: LawConfig, pred: dict) -> str:
    head = (f"predicted final {cfg.metric} {pred['estimate']:.4g} [{pred['low']:.4g}, {pred['high']:.4g}] "
            f"at {pred['fraction']:.0%} of steps")
    return (f"{head}; low end above the {pred['reference']} upper end {pred['reference_high']:.4g} "
            f"by more than {cfg.margin:.1%}")


__all__ = ["LawRule", "LawConfig"]
