"""Shared by the sweep figures: columns read from rows or arrays, error bars, number format, axis labels."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np

LOSS_LABEL = "final eval loss (nats/token)"
C_LABEL = "compute C (FLOPs)"
N_LABEL = "non-embedding parameters N (params)"

# Accepted spellings of the same column, first match wins.
_ALIASES = {
    "C": ("C", "flops", "compute", "budget"),
    "loss": ("loss", "final_loss", "eval_loss", "mid", "predicted_loss"),
    "N": ("N", "n_params"),
    "low": ("low", "lo", "loss_low"),
    "high": ("high", "hi", "loss_high"),
    "predicted": ("predicted", "predicted_loss", "prediction"),
}


def _column(data: Any, name: str, required: bool = True) -> Optional[np.ndarray]:
    """Column `name` (or an alias) from a mapping of arrays or a list of dicts, as float64."""
    keys = _ALIASES.get(name, (name,))
    if isinstance(data, Mapping):
        for k in keys:
            if k in data and data[k] is not None:
                return np.asarray(data[k], dtype=np.float64).ravel()
    else:
        rows = list(data)
        if not rows:  # no rows: an empty column, whatever its name (an empty plot, not a crash)
            return np.empty(0, dtype=np.float64)
        for k in keys:
            if all(k in r for r in rows):
                return np.array([_num(r[k]) for r in rows], dtype=np.float64)
    if required:
        raise KeyError(f"missing column {name!r} (accepted: {', '.join(keys)})")
    return None


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _interval(data: Any, estimate: np.ndarray) -> Optional[np.ndarray]:
    """Asymmetric error bars (2, n) from low/high columns or an `interval` [low, high] field."""
    low, high = _column(data, "low", False), _column(data, "high", False)
    if low is None and not isinstance(data, Mapping):
        rows = list(data)
        if rows and all("interval" in r for r in rows):
            pairs = np.array([[_num(v) for v in r["interval"]] for r in rows], dtype=np.float64)
            low, high = pairs[:, 0], pairs[:, 1]
    if low is None or high is None:
        return None
    return np.vstack([np.maximum(estimate - low, 0.0), np.maximum(high - estimate, 0.0)])


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _count(x: float) -> str:
    """A count (parameters, tokens, batch) as a whole number with thousands separators; 3 digits beyond 1e9."""
    return f"{x:.3g}" if not math.isfinite(x) or abs(x) >= 1e9 else f"{round(x):,}"
