"""A cell: one nominal (N, D) point of a design, and the one rule that puts a run in its cell.

Whole-batch rounding moves a trial's D away from the design's token target, by a different amount
at each batch size, so a cell is keyed by the target (a run's ``D_nominal``), never by the rounded
D. Runs that carry no nominal D (a user's table, a store written before it was recorded) join the
nominal D within ``REL_TOL`` at their N, else each other within ``REL_TOL``.

The best tuned run of a cell is its point in an L(N, D) fit: the (lr, batch) whose seed-mean loss
is lowest, among the runs `in_cell` (a run that rounding pushed to many more tokens would win on
tokens, not on its hyperparameters).

>>> runs = [{"N": 1e6, "D": 2.0e7, "D_nominal": 2e7, "lr": 1e-3, "batch": 256, "loss": 3.1},
...         {"N": 1e6, "D": 2.01e7, "D_nominal": 2e7, "lr": 1e-3, "batch": 4096, "loss": 3.0},
...         {"N": 1e6, "D": 4.0e7, "D_nominal": 4e7, "lr": 1e-3, "batch": 256, "loss": 2.9}]
>>> [c.D for c in assign_cells(runs)]
[20000000.0, 20000000.0, 40000000.0]
>>> [(b["D"], b["batch"]) for b in best_per_cell(runs)]
[(20100000.0, 4096), (40000000.0, 256)]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

REL_TOL = 0.02  # D values closer than this at one N are one cell (whole-batch rounding, float noise)
MAX_ROUNDING = 1.1  # a run whose D exceeds its cell's by more is not a tuned point of the cell


def in_cell(D: float, cell: "Cell") -> bool:
    """Whether a run on D tokens is a point of `cell`: rounding up to whole batches added at most
    10 % to the cell's tokens (a batch too large for the token budget trains on other tokens).

    >>> in_cell(2.05e7, Cell(1e6, 2e7)), in_cell(6.5e4, Cell(1e4, 2.5e4))
    (True, False)
    """
    return float(D) <= MAX_ROUNDING * cell.D


@dataclass(frozen=True, order=True)
class Cell:
    """One nominal (N, D) point of a design."""

    N: float
    D: float

    @property
    def C(self) -> float:
        """6·N·D, the cell's nominal compute."""
        return 6.0 * self.N * self.D


def _nominal(run: Mapping[str, Any]) -> float | None:
    d = run.get("D_nominal")
    try:
        d = float(d)
    except (TypeError, ValueError):
        return None
    return d if math.isfinite(d) and d > 0 else None


def cell_of(run: Mapping[str, Any]) -> Cell:
    """The cell of one run that records its nominal D (a planned trial's record); else its own (N, D).

    >>> cell_of({"N": 100, "D": 2048, "D_nominal": 2000})
    Cell(N=100.0, D=2000.0)
    """
    d = _nominal(run)
    return Cell(float(run["N"]), float(run["D"]) if d is None else d)


def assign_cells(runs: Sequence[Mapping[str, Any]], rel: float = REL_TOL) -> list[Cell]:
    """The cell of every run, in order: `cell_of`, with runs lacking a nominal D snapped to a
    nominal D within `rel` at their N, or else clustered with each other within `rel`.

    >>> [c.D for c in assign_cells([{"N": 1, "D": 1000}, {"N": 1, "D": 1010}, {"N": 1, "D": 2000}])]
    [1000.0, 1000.0, 2000.0]
    """
    known: dict[float, list[float]] = {}
    loose: dict[float, list[float]] = {}
    for r in runs:
        d = _nominal(r)
        (known if d is not None else loose).setdefault(float(r["N"]), []).append(
            d if d is not None else float(r["D"]))
    snap: dict[tuple[float, float], float] = {}
    for n, ds in loose.items():
        anchors = sorted(set(known.get(n, ())))
        rep = None
        for d in sorted(set(ds)):
            near = min(anchors, key=lambda a: abs(math.log(d / a)), default=None)
            if near is not None and abs(math.log(d / near)) <= math.log1p(rel):
                snap[(n, d)] = near
                continue
            if rep is None or d > rep * (1 + rel):
                rep = d  # the smallest D of a run of values within `rel` of each other names the cell
            snap[(n, d)] = rep
    return [cell_of(r) if _nominal(r) is not None else Cell(float(r["N"]), snap[(float(r["N"]), float(r["D"]))])
            for r in runs]


def best_per_cell(runs: Sequence[Mapping[str, Any]], rel: float = REL_TOL) -> list[dict[str, Any]]:
    """Per cell, the best tuned run: the (lr, batch) with the lowest seed-mean loss (runs need
    N, D, lr, batch and a finite loss). Returns one dict per cell, sorted by (N, D): the cell's
    nominal ``cell_D``, the best config's mean actual ``D`` and ``C`` = 6·N·D, ``lr``, ``batch``,
    ``loss`` and ``n_seeds``.

    >>> runs = [{"N": 1e6, "D": 2e7, "lr": lr, "batch": 256, "loss": loss} for lr, loss in ((1e-3, 3.2), (3e-3, 3.1))]
    >>> [(b["lr"], b["loss"], b["n_seeds"]) for b in best_per_cell(runs)]
    [(0.003, 3.1, 1)]
    """
    rows = [r for r in runs if math.isfinite(float(r["loss"]))]
    groups: dict[Cell, dict[tuple[float, float], list[Mapping[str, Any]]]] = {}
    for cell, r in zip(assign_cells(rows, rel), rows):
        groups.setdefault(cell, {}).setdefault((float(r["lr"]), float(r["batch"])), []).append(r)
    out = []
    for cell, configs in groups.items():
        means = []
        for rs in configs.values():
            d = sum(float(r["D"]) for r in rs) / len(rs)
            loss = sum(float(r["loss"]) for r in rs) / len(rs)
            means.append((in_cell(d, cell), loss, d, rs))
        eligible = [m for m in means if m[0]] or means  # a table of other runs: all of them
        _, loss, d, rs = min(eligible, key=lambda m: m[1])
        out.append({"N": cell.N, "D": d, "cell_D": cell.D, "C": 6.0 * cell.N * d, "lr": rs[0]["lr"],
                    "batch": rs[0]["batch"], "loss": loss, "n_seeds": len(rs)})
    return sorted(out, key=lambda c: (c["N"], c["cell_D"]))
