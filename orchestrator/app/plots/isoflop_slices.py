"""IsoFLOP slices read off each model size's loss-vs-compute curve, for designs whose sizes never share a
budget (a per-param grid D = k·N puts every size at its own C = 6·k·N²).

Each size's curve is the lower envelope of every loss it reached (final losses of its cells, or every
evaluation of its runs' training curves): at compute C, the lowest loss any of its runs reached with
compute <= C, linear in log C between the envelope's points (Hoffmann et al. 2022, Approach 1; Porian
et al. 2024 read their isoFLOP optima off interpolated curves the same way). At log-spaced levels of C
where >= 3 sizes' curves reach, the slice is those sizes' envelope losses; a parabola in ln N through
them gives the level's N_opt where its vertex is bracketed (the lowest point has a size on each side).
Curve points before a run's end are not annealed, so they overstate the loss that size would reach
trained to exactly C; the envelope keeps the lowest, and ended runs dominate wherever they reach.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

MIN_SIZES = 3
# The parabola is fitted to the sizes within this many e-folds of N of the slice's lowest point (at least
# two a side), as Approach 2 does (laws/isoflop.HALF_WINDOW): far from its minimum loss vs ln N is not a
# parabola (the valley is asymmetric) and a parabola through every size moves the vertex.
HALF_WINDOW = 1.2


def size_envelopes(N: Sequence[float], C: Sequence[float], loss: Sequence[float],
                   rel_tol: float = 0.01) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """{N: (C, loss)} each size's lower envelope: the points whose loss is below every point at lower C,
    and the size's largest compute at the last such loss (the envelope is flat after its last drop).

    Sizes within `rel_tol` of each other are one size (reported parameter counts jitter).

    >>> env = size_envelopes([1, 1, 1, 1, 1], [1e3, 2e3, 4e3, 8e3, 16e3], [3.0, 2.5, 2.6, 2.2, 2.3])
    >>> [(c.tolist(), l.tolist()) for c, l in env.values()]
    [([1000.0, 2000.0, 8000.0, 16000.0], [3.0, 2.5, 2.2, 2.2])]
    """
    N, C, loss = (np.asarray(x, dtype=np.float64) for x in (N, C, loss))
    ok = np.isfinite(N) & np.isfinite(C) & np.isfinite(loss) & (N > 0) & (C > 0)
    N, C, loss = N[ok], C[ok], loss[ok]
    out: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    for members in _sizes(N, rel_tol):
        n = float(np.median(N[members]))
        order = members[np.lexsort((loss[members], C[members]))]
        keep, best = [], math.inf
        for i in order:
            if loss[i] < best:
                keep.append(i)
                best = loss[i]
        if C[order[-1]] > C[keep[-1]]:
            keep.append(int(order[-1]))
        out[n] = (C[keep], np.minimum.accumulate(loss[keep]))
    return out


def _sizes(N: np.ndarray, rel_tol: float) -> list[np.ndarray]:
    """Index groups of N equal within rel_tol, in increasing N."""
    order = np.argsort(N, kind="stable")
    groups: list[list[int]] = []
    for i in order:
        if groups and math.log(N[i] / N[groups[-1][0]]) <= math.log1p(rel_tol):
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return [np.array(g, dtype=np.int64) for g in groups]


def envelope_at(curve: tuple[np.ndarray, np.ndarray], c: float) -> float:
    """A size's envelope loss at compute c: linear in log C between its points, NaN outside them.

    >>> env = (np.array([1e3, 1e5]), np.array([3.0, 2.0]))
    >>> envelope_at(env, 1e4), envelope_at(env, 1e6)
    (2.5, nan)
    """
    cs, ls = curve
    if not cs[0] * (1 - 1e-9) <= c <= cs[-1] * (1 + 1e-9):
        return math.nan
    return float(np.interp(math.log(c), np.log(cs), ls))


def isoflop_slices(N: Sequence[float], C: Sequence[float], loss: Sequence[float], *,
                   levels: Optional[Sequence[float]] = None, n_levels: int = 6,
                   min_sizes: int = MIN_SIZES) -> list[dict]:
    """IsoFLOP slices read off the sizes' envelopes: a list, by increasing C, of {C, N, loss (the
    envelope losses of the sizes that reach C, by increasing N), fitted (mask of the sizes the parabola
    is fitted to, `HALF_WINDOW`), coeffs (np.polyfit degree 2 in ln N), N_opt, loss_opt (the vertex
    where it is a minimum bracketed by the sizes, else None)}.

    `levels`: the compute levels; by default `n_levels` log-spaced levels over the range of C that at
    least `min_sizes` sizes reach (none when no C is reached by that many).

    Planted (a Chinchilla world with alpha = beta and A = B, so N_opt = (C/6)^0.5), each size along its curve:

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8, 1e9], 30); C = np.tile(np.geomspace(1e15, 1e21, 30), 5)
    >>> sl = isoflop_slices(N, C, 1.7 + 400 / N**0.34 + 400 / (C / (6 * N))**0.34, levels=[6e16])
    >>> round(sl[0]["N_opt"] / 1e8, 2)
    0.99
    """
    env = size_envelopes(N, C, loss)
    if levels is None:
        levels = _levels(env, n_levels, min_sizes)
    out = []
    for c in levels:
        ns = np.array([n for n in env if math.isfinite(envelope_at(env[n], c))])
        ls = np.array([envelope_at(env[n], c) for n in ns])
        if len(ns) < min_sizes:
            continue
        x, j = np.log(ns), int(np.argmin(ls))
        near = np.abs(x - x[j]) <= HALF_WINDOW
        near[max(0, j - 2):j + 3] = True  # at least two sizes a side where they exist
        coeffs = np.polyfit(x[near], ls[near], 2)
        row = {"C": float(c), "N": ns, "loss": ls, "fitted": near, "coeffs": coeffs, "N_opt": None, "loss_opt": None}
        xv = parabola_vertex(coeffs, x[near], ls[near], bracketed=True) if 0 < j < len(ns) - 1 else None
        if xv is not None:
            row["N_opt"], row["loss_opt"] = math.exp(xv), float(np.polyval(coeffs, xv))
        out.append(row)
    return out


def parabola_vertex(coeffs: np.ndarray, x: np.ndarray, y: np.ndarray, bracketed: bool = True) -> Optional[float]:
    """ln N of the vertex of a parabola in ln N (np.polyfit order) fitted to points (x = ln N, y = loss):
    None unless convex with its vertex within the points' ln N range and, with `bracketed`, the lowest
    point has a point on each side (else the minimum may lie beyond the sizes).

    >>> parabola_vertex(np.array([1.0, -4.0, 0.0]), np.array([0.0, 2.0, 4.0]), np.array([0.0, -4.0, 0.0]))
    2.0
    """
    if not coeffs[0] > 0 or not len(x):
        return None
    j = int(np.argmin(y))
    if bracketed and (x[j] == np.min(x) or x[j] == np.max(x)):
        return None
    xv = float(-coeffs[1] / (2 * coeffs[0]))
    return xv if np.min(x) <= xv <= np.max(x) else None


def _levels(env: dict, n_levels: int, min_sizes: int) -> list[float]:
    """n_levels log-spaced C between the first and last compute reached by >= min_sizes sizes."""
    def reached(c: float) -> int:
        return sum(cs[0] <= c <= cs[-1] for cs, _ in env.values())

    if len(env) < min_sizes:
        return []
    grid = np.geomspace(min(cs[0] for cs, _ in env.values()), max(cs[-1] for cs, _ in env.values()), 400)
    ok = [c for c in grid if reached(c) >= min_sizes]
    if not ok:
        return []
    return [float(c) for c in np.geomspace(ok[0], ok[-1], n_levels) if reached(c) >= min_sizes]
