"""Loss curves and their learning-rate schedules: per-step lr, warmup, forward and annealing areas.

Both curve laws (``annealing.py``, ``multipower.py``) are sums over *optimizer steps*, so a
logged curve (one row every k steps) is first turned into a per-step learning-rate array:
``lr[s]`` for every step ``s = 0..T``, linearly interpolated between logged steps. Before the
first logged step, if the log does not start at step 0, a linear warmup from 0 is assumed
(over ``warmup_steps`` when given, else up to the first logged step).

Warmup policy (shared by both laws, documented in docs/curves.md):
- the warmup end is where the lr stops rising (detected from the lr array), or ``warmup_steps``;
- losses logged before the warmup end are never fitted (``Curve.fit_mask``);
- the annealing terms (S2, the multi-power loss drop) only see lr changes *after* warmup;
- the warmup's area enters S1 according to ``warmup``: ``"actual"`` (the real ramp area, the
  multi-power law's S_W), ``"peak"`` (warmup steps counted at the peak lr, as Tissue et al.
  do), or ``"none"`` (S1 counts from the warmup end).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .table import TableError, read_table, require_columns

WARMUP_MODES = ("actual", "peak", "none")


@dataclass(frozen=True)
class Schedule:
    """A per-step learning-rate schedule: ``lr[s]`` at step ``s = 0..T`` and the warmup end."""

    lr: np.ndarray
    warmup_end: int

    @property
    def last_step(self) -> int:
        """The last step the schedule covers."""
        return len(self.lr) - 1

    def forward_area(self, steps: np.ndarray, warmup: str = "actual") -> np.ndarray:
        """S1(t) = sum of lr over steps 1..t, with the warmup counted per ``warmup``."""
        lr = self._warmup_adjusted(warmup)
        cum = np.cumsum(lr)
        cum = cum - cum[0]  # sum over steps 1..t: step 0 takes no update
        return cum[self._index(steps)]

    def drops(self, include_warmup: bool = False) -> np.ndarray:
        """Per-step lr decrease d[k] = lr[k-1] - lr[k]; 0 up to the warmup end unless ``include_warmup``."""
        d = np.zeros_like(self.lr)
        d[1:] = self.lr[:-1] - self.lr[1:]
        if not include_warmup:
            d[: self.warmup_end + 1] = 0.0
        return d

    def _warmup_adjusted(self, warmup: str) -> np.ndarray:
        if warmup not in WARMUP_MODES:
            raise ValueError(f"unknown warmup mode {warmup!r}; choose one of {', '.join(WARMUP_MODES)}")
        lr = self.lr.copy()
        w = self.warmup_end
        if warmup == "peak" and w > 0:
            lr[1 : w + 1] = lr[w]
        elif warmup == "none":
            lr[:w] = 0.0
        return lr

    def _index(self, steps: np.ndarray) -> np.ndarray:
        idx = np.asarray(np.rint(steps), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() > self.last_step):
            raise ValueError(
                f"steps {int(idx.min())}..{int(idx.max())} outside the schedule 0..{self.last_step}"
            )
        return idx


def detect_warmup_end(step: np.ndarray, lr: np.ndarray) -> int | None:
    """The logged step where an initial lr ramp ends (lr stops rising), or None if it never rises.

    >>> detect_warmup_end(np.array([0, 10, 20, 30]), np.array([0.0, 1.0, 1.0, 0.5]))
    10
    >>> detect_warmup_end(np.array([0, 10]), np.array([1.0, 0.5])) is None
    True
    """
    if len(lr) < 2 or not lr[1] > lr[0]:
        return None
    i = 0
    while i + 1 < len(lr) and lr[i + 1] > lr[i]:
        i += 1
    return int(step[i])


def per_step_schedule(
    step: np.ndarray, lr: np.ndarray, warmup_steps: int | None = None, until: int | None = None
) -> Schedule:
    """Reconstruct the per-step lr from logged (step, lr); warmup assumed linear from 0 before the log.

    >>> s = per_step_schedule([0, 10, 20, 30], [0.0, 1.0, 1.0, 0.5])  # warmup, stable, a step drop
    >>> s.warmup_end, s.last_step, s.lr[[5, 10, 29, 30]].tolist()
    (10, 30, [0.5, 1.0, 1.0, 0.5])
    """
    step = np.asarray(step, dtype=np.float64)
    lr = np.asarray(lr, dtype=np.float64)
    order = np.argsort(step, kind="stable")
    step, lr = step[order], lr[order]
    if len(step) == 0:
        raise ValueError("empty schedule")
    if np.any(lr < 0) or not np.all(np.isfinite(lr)):
        raise ValueError("learning rates must be finite and >= 0")
    first, last = int(round(step[0])), int(round(step[-1]))
    end = max(last, int(until) if until is not None else last)
    grid = np.arange(end + 1, dtype=np.float64)
    # np.interp holds the end values outside the logged range: beyond the last logged step the
    # schedule continues at its last lr (callers predicting further should pass the full schedule).
    per_step = np.interp(grid, step, lr)
    for i in _jumps(lr):
        # A change between two logged steps with a flat lr on both sides is a step schedule:
        # the drop happened at a single step, placed at the later log (where it is first seen).
        a, b = int(round(step[i])), int(round(step[i + 1]))
        per_step[a:b] = lr[i]
    detected = detect_warmup_end(step, lr)
    if warmup_steps is None:
        warmup_end = detected if detected is not None else first
    else:
        warmup_end = max(int(warmup_steps), detected or 0)
    if first > 0:
        # The log starts late: assume a linear warmup from 0 to the lr reached at warmup end
        # (or a constant lr if the caller said there is no warmup).
        ramp_end = min(warmup_end, first) if warmup_steps is not None else first
        if ramp_end > 0:
            per_step[: ramp_end + 1] = np.linspace(0.0, lr[0], ramp_end + 1)
        per_step[ramp_end:first] = lr[0]
    return Schedule(lr=per_step, warmup_end=int(warmup_end))


def _jumps(lr: np.ndarray) -> list[int]:
    """Indices i where lr drops between logs i and i+1 while the neighbouring intervals are flat."""
    if len(lr) < 2:
        return []
    change = ~np.isclose(lr[1:], lr[:-1], rtol=1e-9, atol=0.0)
    flat = ~change
    out = []
    for i in np.flatnonzero(change & (lr[1:] < lr[:-1])):  # drops only: a one-interval rise is a warmup
        neighbours = [flat[j] for j in (i - 1, i + 1) if 0 <= j < len(change)]
        if neighbours and all(neighbours):
            out.append(int(i))
    return out


@dataclass
class Curve:
    """One run's logged loss curve: steps, lr at those steps, loss (None for a schedule to predict)."""

    step: np.ndarray
    lr: np.ndarray
    loss: np.ndarray | None = None
    name: str = ""
    warmup_steps: int | None = None
    _schedule: Schedule | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.step = np.asarray(self.step, dtype=np.float64)
        self.lr = np.asarray(self.lr, dtype=np.float64)
        if self.loss is not None:
            self.loss = np.asarray(self.loss, dtype=np.float64)
            if self.loss.shape != self.step.shape:
                raise ValueError(f"{self.name or 'curve'}: step and loss lengths differ")
        if self.lr.shape != self.step.shape:
            raise ValueError(f"{self.name or 'curve'}: step and lr lengths differ")
        if np.any(np.diff(self.step) <= 0):
            order = np.argsort(self.step, kind="stable")
            self.step, self.lr = self.step[order], self.lr[order]
            if self.loss is not None:
                self.loss = self.loss[order]
            if np.any(np.diff(self.step) == 0):
                raise ValueError(f"{self.name or 'curve'}: repeated steps")

    @property
    def schedule(self) -> Schedule:
        """The per-step schedule reconstructed from the logged lr (cached)."""
        if self._schedule is None:
            self._schedule = per_step_schedule(self.step, self.lr, self.warmup_steps)
        return self._schedule

    @property
    def fit_mask(self) -> np.ndarray:
        """Rows that may be fitted: at or after the warmup end, with a positive finite loss."""
        mask = self.step >= self.schedule.warmup_end
        if self.loss is not None:
            mask &= np.isfinite(self.loss) & (self.loss > 0)
        return mask

    def head(self, n_rows: int) -> "Curve":
        """The first ``n_rows`` logged rows as a curve (a running trial's prefix)."""
        return Curve(
            self.step[:n_rows], self.lr[:n_rows],
            None if self.loss is None else self.loss[:n_rows],
            name=self.name, warmup_steps=self.warmup_steps,
        )

    @classmethod
    def from_file(cls, path: str | Path, warmup_steps: int | None = None, need_loss: bool = True) -> "Curve":
        """Read a CSV/Parquet curve with columns step, lr, loss; TableError naming the file otherwise."""
        table = read_table(path)
        cols = ["step", "lr"] + (["loss"] if need_loss or "loss" in table else [])
        try:
            data = require_columns(table, cols, positive=["loss"] if "loss" in cols else [], min_rows=2)
            if np.any(data["step"] < 0):
                raise TableError("column step: negative step")
            if np.any(data["lr"] < 0):
                raise TableError("column lr: negative learning rate")
            return cls(data["step"], data["lr"], data.get("loss"), name=str(path), warmup_steps=warmup_steps)
        except (TableError, ValueError) as exc:
            raise TableError(f"{path}: {exc}") from exc


def fit_metrics(observed: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """R², mean and worst relative error of predicted vs observed losses.

    >>> m = fit_metrics(np.array([2.0, 3.0]), np.array([2.2, 3.0]))
    >>> round(m["r2"], 3), round(m["mean_rel_error"], 3), round(m["worst_rel_error"], 3), m["n_points"]
    (0.92, 0.05, 0.1, 2)
    """
    observed = np.asarray(observed, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    rel = np.abs(predicted - observed) / observed
    ss_res = float(np.sum((observed - predicted) ** 2))
    ss_tot = float(np.sum((observed - observed.mean()) ** 2))
    return {
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "mean_rel_error": float(rel.mean()),
        "worst_rel_error": float(rel.max()),
        "n_points": int(observed.size),
    }
