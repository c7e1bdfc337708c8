"""Short MLflow run names for trials that say what differs between them.

A trial id (`N19800-D106496-lr0.03-b8192-s0-651984`) is unique but long: the MLflow runs
table cuts it, and runs that differ only in lr look alike. A run name here leads with the
size and tokens in k/M/B, then only the settings that vary across the sweep (lr, batch,
seed), and marks a WSD branch: `N19.8k D106k lr0.03`, `N19.8k D205k lr0.01 s1`.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping


def _si(x: float) -> str:
    """3 significant digits with k / M / B / T.

    >>> _si(19800), _si(106496), _si(2.0e9), _si(512)
    ('19.8k', '106k', '2B', '512')
    """
    v = float(x)
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div * 0.9995:
            return f"{float(f'{v / div:.3g}'):g}{suffix}"
    return f"{v:.3g}"


def varying(records: Iterable[Mapping[str, Any]], keys: tuple[str, ...] = ("lr", "batch", "seed")) -> set[str]:
    """The keys among `keys` that take more than one value across `records`.

    >>> sorted(varying([{"lr": 0.01, "batch": 8, "seed": 0}, {"lr": 0.03, "batch": 8, "seed": 0}]))
    ['lr']
    """
    seen: dict[str, set] = {k: set() for k in keys}
    for rec in records:
        for k in keys:
            seen[k].add(rec.get(k))
    return {k for k, vals in seen.items() if len(vals) > 1}


def run_name(record: Mapping[str, Any], vary: Iterable[str] = ("lr", "batch", "seed")) -> str:
    """`N<size> D<tokens>` plus the varying settings among lr, batch, seed; `branch@<step>` for a WSD branch.

    >>> run_name({"N": 19800, "D": 106496, "lr": 0.03, "batch": 8192, "seed": 0}, {"lr"})
    'N19.8k D106k lr0.03'
    >>> run_name({"N": 2e6, "D": 4e7, "lr": 3e-4, "batch": 8192, "seed": 1, "branch_of": "t", "branch_step": 120},
    ...          {"lr", "batch", "seed"})
    'N2M D40M lr0.0003 b8.19k s1 branch@120'
    """
    parts = [f"N{_si(record['N'])}", f"D{_si(record['D'])}"]
    vary = set(vary)
    if "lr" in vary and record.get("lr") is not None:
        parts.append(f"lr{float(record['lr']):.3g}")
    if "batch" in vary and record.get("batch") is not None:
        parts.append(f"b{_si(record['batch'])}")
    if "seed" in vary and record.get("seed") is not None:
        parts.append(f"s{record['seed']}")
    if record.get("branch_of"):
        parts.append(f"branch@{record.get('branch_step', 0)}")
    return " ".join(parts)
