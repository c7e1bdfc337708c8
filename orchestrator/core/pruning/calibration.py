"""Calibration of the paired rule on the sweep's own completed pairs (conformal allowances).

Two pools, filled as trials complete (`Calibration.add`):

- same schedule: per completed pair of one (N, D) cell and schedule shape, how far the paired
  lower end from each fraction of the run on overshot the realised final ratio (symmetric);
- across schedules: per ordered pair of schedule kinds (i's, j's), for each completed pair of
  one cell, how far i's paired lower end over j overshot the realised final ratio (one way: the
  ratio of two schedule shapes drifts systematically).

An allowance A(f) is the conformal ``level`` quantile of a pool: with n exchangeable pairs, a new
pair's overshoot exceeds the ⌈(n+1)·level⌉-th smallest with probability at most 1 - level.

>>> import numpy as np
>>> c = Calibration(level=0.9, refit_growth=0.1)
>>> c.pairs = [np.full(101, v) for v in np.linspace(0.0, 0.1, 9)]
>>> float(c.allowance()[0])
0.1
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import numpy as np

from .pairstat import PAIR_MIN_POINTS, overshoot, overshoot_dir, z

if TYPE_CHECKING:
    from .history import History, TrialState


class Calibration:
    """The paired rule's calibration pools and their conformal allowances (cached)."""

    def __init__(self, level: float, refit_growth: float):
        self.level = level
        self.refit_growth = refit_growth
        self.pairs: list[np.ndarray] = []  # same cell and schedule
        self.cross: dict[tuple[str, str], list[np.ndarray]] = {}  # (kind of i, kind of j) -> pairs
        self._allowance: Optional[tuple[int, Optional[np.ndarray]]] = None  # (pool size, A(f)) cache
        self._cross_allowance: dict[tuple[str, str], tuple[int, Optional[np.ndarray]]] = {}

    def add(self, trial_id: str, t: "TrialState", history: "History") -> None:
        """Add the pairs a completed trial forms with the completed trials of its cell (and schedule)."""
        zq = z(self.level)
        T = t.meta.total_steps
        s_i, l_i = np.asarray(t.steps, float), np.log(np.asarray(t.loss, float))
        # Only curves from step 0 (a WSD branch with its trunk's prefix is one): a branch's own reports
        # alone would give its late overshoots to the early fractions, narrowing their allowance.
        if not t.from_start or s_i.size < PAIR_MIN_POINTS or s_i[-1] < T:
            return
        for other in history.groups.get(t.shape_key, ()):
            o = history.trials[other]
            if other == trial_id or other not in history.finals or not o.from_start or len(o.steps) < PAIR_MIN_POINTS:
                continue
            s_j, l_j = np.asarray(o.steps, float), np.log(np.asarray(o.loss, float))
            if s_j[-1] < T:
                continue
            self.pairs.append(overshoot(s_i, l_i, s_j, l_j, t.schedule.warmup_end, T, zq))
        for other, o in history.cross_peers(trial_id, t, history.cell_finals.get(t.meta.cell(), ())):
            s_j, l_j = np.asarray(o.steps, float), np.log(np.asarray(o.loss, float))
            if s_j[-1] < T:
                continue
            w = max(t.schedule.warmup_end, o.schedule.warmup_end)
            self.cross.setdefault((t.kind, o.kind), []).append(overshoot_dir(s_i, l_i, s_j, l_j, w, T, zq))
            self.cross.setdefault((o.kind, t.kind), []).append(overshoot_dir(s_j, l_j, s_i, l_i, w, T, zq))

    def allowance(self) -> Optional[np.ndarray]:
        """A(f) of the same-schedule pool, or None (too few pairs for a ``level`` bound). Recomputed
        once the pool grew by ``refit_growth`` (an older pool is a valid, if less sharp, calibration)."""
        self._allowance = self._conformal(self.pairs, self._allowance)
        return self._allowance[1]

    def allowance_pairs(self) -> int:
        """How many pairs the current same-schedule allowance rests on."""
        return self._allowance[0] if self._allowance is not None else len(self.pairs)

    def cross_allowance(self, kinds: tuple[str, str]) -> Optional[np.ndarray]:
        """A(f) for i-over-j pairs of these two schedule kinds (as `allowance`), or None."""
        pool = self.cross.get(kinds)
        if not pool:
            return None
        self._cross_allowance[kinds] = self._conformal(pool, self._cross_allowance.get(kinds))
        return self._cross_allowance[kinds][1]

    def cross_pairs(self, kinds: tuple[str, str]) -> int:
        """How many pairs the current allowance of these kinds rests on."""
        return self._cross_allowance[kinds][0]

    def _conformal(self, pool: list, cached: Optional[tuple]) -> tuple[int, Optional[np.ndarray]]:
        n = len(pool)
        return (n, conformal(pool, self.level)) if stale(cached, n, self.refit_growth) else cached


def stale(cached: Optional[tuple], n: int, refit_growth: float) -> bool:
    """Whether an allowance cached as ``(pool size, A or None)`` is recomputed for a pool of ``n``:
    none yet, none possible before and the pool changed, or the pool grew by ``refit_growth``.

    >>> stale(None, 3, 0.1), stale((9, None), 10, 0.1), stale((20, "A"), 21, 0.1), stale((20, "A"), 23, 0.1)
    (True, True, False, True)
    """
    return cached is None or (cached[1] is None and n != cached[0]) or n >= cached[0] * (1.0 + refit_growth) + 1


def conformal(pool: list, level: float) -> Optional[np.ndarray]:
    """The conformal ``level`` quantile of a pool of arrays, elementwise, or None (too few for it).

    >>> conformal([np.array([float(i)]) for i in range(9)], 0.9)
    array([8.])
    >>> conformal([np.array([0.0])] * 8, 0.9) is None
    True
    """
    n = len(pool)
    k = math.ceil((n + 1) * level)
    return np.sort(np.array(pool), axis=0)[k - 1] if 0 < k <= n else None


__all__ = ["Calibration", "conformal", "stale"]
