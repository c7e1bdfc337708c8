"""The paired rule: stop a trial whose loss ratio to a peer of its own (N, D) cell is surely above 1.

No curve law involved. From ``grace`` of its planned steps on, every fresh report pairs the trial
with the leading trial of its cell and schedule shape: the log-loss ratio over the recent common
prefix (`orchestrator.core.pruning.pairstat.pair_stat`), its lower end at ``level``, minus an allowance
for how far such a bound overshot the realised final ratio on the sweep's own completed pairs
(`orchestrator.core.pruning.calibration`; before enough pairs have completed, a per-pair trend
allowance plus ``prior``). A trial with no peer of its own schedule shape in its cell is paired,
once calibrated, with its cell's trials under **another** schedule shape (the allowance of that
ordered pair of kinds holds the ratio's systematic drift). It votes when the lower end exceeds
``1 + margin``.
A WSD branch is judged on its whole curve, its trunk's up to its start step first (`History`); one
whose trunk this pruner never saw is not judged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..config import PruneConfig
from ..decision import Verdict
from ..history import History, TrialState
from ..pairstat import PAIR_MIN_POINTS, at, pair_stat, z


@dataclass(frozen=True)
class PairedConfig:
    """The paired rule's knobs (``paired_*`` and ``level`` of the spec)."""

    grace: float = 0.1  # no comparison before this fraction of the planned steps
    margin: float = 0.0  # vote when the ratio's lower end > 1 + margin
    prior: float = 0.03  # extra allowance (log ratio) until the sweep's pairs calibrate it
    level: float = 0.9
    metric: str = "eval_loss"  # named in the stop reason

    @classmethod
    def of(cls, config: PruneConfig) -> "PairedConfig":
        return cls(grace=config.paired_grace, margin=config.paired_margin, prior=config.paired_prior,
                   level=config.level, metric=config.metric)


class Paired:
    """Votes on each fresh report whether the trial trails a peer of its cell for sure."""

    name = "paired"

    def __init__(self, config: PairedConfig = PairedConfig()):
        self.config = config

    def check(self, trial_id: str, t: TrialState, history: History) -> Optional[Verdict]:
        """A vote per new loss value of a trunk past ``grace`` (no vote: no peer to compare with yet)."""
        if not t.fresh or not t.from_start or t.step < self.config.grace * t.meta.total_steps:
            return None
        found = self._compare(trial_id, t, history)
        if found is None:
            return Verdict(False)
        pred, low = found
        vote = bool(low > math.log1p(self.config.margin))
        return Verdict(vote, pred, _reason(self.config, pred) if vote else "")

    def _compare(self, trial_id: str, t: TrialState, history: History) -> Optional[tuple[dict, float]]:
        """(prediction, lower end of the log ratio) of the comparison that argues hardest for stopping
        (the highest lower end), or None.

        The leader of the same schedule is the trial this one trails most.
        """
        cfg = self.config
        zq = z(cfg.level)
        T = t.meta.total_steps
        s_i, l_i = np.asarray(t.steps, float), np.log(np.asarray(t.loss, float))
        cal = history.calibration
        A = cal.allowance()  # None: uncalibrated, the per-pair trend allowance is needed
        best = None
        for other in history.groups.get(t.shape_key, ()):
            o = history.trials[other]
            if other == trial_id or len(o.steps) < PAIR_MIN_POINTS or not history.is_reference(other):
                continue
            stat = pair_stat(s_i, l_i, np.asarray(o.steps, float), np.log(np.asarray(o.loss, float)),
                             t.schedule.warmup_end, T, zq, trend=A is None)
            if stat is None or stat[0] < cfg.grace * T:
                continue
            if best is None or stat[1] > best[1][1]:
                best = (other, stat)
        same = None
        if best is not None:
            other, (upto, mean, naive, trend_low) = best
            if A is not None:
                allowance = at(A, upto / T)
                low = naive - allowance
            else:
                allowance = (naive - trend_low) + cfg.prior
                low = trend_low - cfg.prior
            same = (low, other, upto, mean, allowance, A is not None,
                    cal.allowance_pairs() if A is not None else len(cal.pairs), "")
        # Across schedules only for a trial with no same-schedule peer to pair with: the cross pool mixes
        # pairs of any two lrs, whose WSD/cosine drift differs, and early in a sweep it held none that
        # moved as far as a winner's (tiny seed 8: three WSD cell winners trailing their cell's cosine run
        # by 1.6-2.2 % mid-run were stopped after a 0.5-0.7 % allowance, and ended ahead).
        cross = self._cross(trial_id, t, history, s_i, l_i, zq) if best is None else None
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
            "calibrated": calibrated, "calibration_pairs": n, "margin": cfg.margin}
        if other in history.finals and not kind:  # the leader finished: the implied final loss of this trial
            ref = history.finals[other][1]
            pred.update(estimate=float(ref * np.exp(mean)), low=float(ref * np.exp(low)),
                        high=float(ref * np.exp(2 * mean - low)))
        return pred, low

    def _cross(self, trial_id: str, t: TrialState, history: History, s_i: np.ndarray, l_i: np.ndarray,
               zq: float) -> Optional[tuple]:
        """The paired comparison with the trials of the same cell under another schedule, or None.

        Runs of one (N, D) under two schedule shapes have log-loss ratios that move systematically
        between a fraction f of the run and its end (a WSD decay, a cosine's gradual one), by an
        amount set by the two shapes; used only once the sweep's completed pairs of those two kinds
        calibrate it (no uncalibrated variant: the shift is not ~0 the way a same-schedule pair's
        is, so a prior cannot stand in for it).
        """
        T = t.meta.total_steps
        cal = history.calibration
        best = None
        for other, o in history.cross_peers(trial_id, t, history.cells.get(t.meta.cell(), ())):
            if not history.is_reference(other):
                continue  # stopped or diverged: not a reference
            A = cal.cross_allowance((t.kind, o.kind))
            if A is None:
                continue
            stat = pair_stat(s_i, l_i, np.asarray(o.steps, float), np.log(np.asarray(o.loss, float)),
                             t.schedule.warmup_end, T, zq, trend=False)
            if stat is None or stat[0] < self.config.grace * T:
                continue
            upto, mean, naive, _ = stat
            allowance = at(A, upto / T)
            low = naive - allowance
            if best is None or low > best[0]:
                best = (low, other, upto, mean, allowance, True, cal.cross_pairs((t.kind, o.kind)), o.kind)
        return best


def _reason(cfg: PairedConfig, pred: dict) -> str:
    how = (f"a {pred['allowance']:.2%} allowance calibrated on {pred['calibration_pairs']} completed pairs"
           if pred["calibrated"] else f"a {pred['allowance']:.2%} trend and prior allowance (uncalibrated)")
    return (f"predicted final {cfg.metric} {pred['ratio']:.4f}× that of {pred['reference']} at "
            f"{pred['fraction']:.0%} of steps; lower end {pred['ratio_low']:.4f} (after {how}) "
            f"> 1 + margin {cfg.margin:.1%}")


__all__ = ["Paired", "PairedConfig"]
