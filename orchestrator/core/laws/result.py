"""The common result of a law fit: parameters, objective, intervals and warnings."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Interval:
    """A central interval at `level` (e.g. 0.9 for 5 %..95 %) with its point estimate."""

    estimate: float
    low: float
    high: float
    level: float = 0.9

    def covers(self, value: float) -> bool:
        """Whether the interval contains `value`."""
        return self.low <= value <= self.high


@dataclass
class FitResult:
    """What every fitter returns; `to_json()` is the CLI's JSON document."""

    law: str
    params: dict[str, float]
    objective: float
    n_points: int
    loss: str = "huber"
    intervals: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN/inf become null)."""
        return jsonable(asdict(self))


def jsonable(obj: Any) -> Any:
    """A copy of `obj` safe for strict JSON: numpy scalars unwrapped, NaN/inf as None.

    >>> import numpy as np
    >>> jsonable({"E": np.float64(1.7), "ci": (float("nan"), 2.0), 3: [np.int64(4)]})
    {'E': 1.7, 'ci': [None, 2.0], '3': [4]}
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


_clean = jsonable  # older name, still imported by some fitters


class ResultView:
    """What a fit object answers from the `FitResult` it holds as ``.result``: a fit can be used
    wherever only the result is wanted (`ChinchillaFit`, `selection.AutoFit`)."""

    result: FitResult

    @property
    def params(self) -> dict[str, float]:
        """Fitted parameters by name (the chosen form's, for a selection)."""
        return self.result.params

    @property
    def objective(self) -> float:
        """Summed robust loss at the optimum."""
        return self.result.objective

    @property
    def intervals(self) -> dict:
        """Intervals, budgets keyed by `chinchilla.budget_key` (see FitResult)."""
        return self.result.intervals

    @property
    def warnings(self) -> list[str]:
        """Identifiability, fit and selection warnings."""
        return self.result.warnings
