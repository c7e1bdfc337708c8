"""Load and validate tables of runs (CSV or Parquet) for the law fitters."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


class TableError(ValueError):
    """A table that cannot be fitted: the message names the problem."""


def read_table(path: str | Path) -> dict[str, np.ndarray]:
    """Read a CSV or Parquet file into a dict of float64/object numpy columns.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = Path(tmp) / "runs.csv"
    ...     _ = path.write_text("N,D,loss\\n1e8,2e9,3.1\\n2e8,4e9,2.9\\n")
    ...     t = read_table(path)
    >>> sorted(t), t["loss"].tolist()
    (['D', 'N', 'loss'], [3.1, 2.9])
    """
    path = Path(path)
    if not path.exists():
        raise TableError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif suffix in (".csv", ".tsv", ".txt"):
            import pyarrow.csv as pacsv

            opts = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            table = pacsv.read_csv(path, parse_options=opts)
        else:
            raise TableError(f"{path}: unknown table format {suffix!r} (use .csv or .parquet)")
    except TableError:
        raise
    except Exception as exc:  # pyarrow raises several types for malformed files
        raise TableError(f"{path}: cannot read table: {exc}") from exc
    return {name: _to_numpy(table.column(name)) for name in table.column_names}


def _to_numpy(column) -> np.ndarray:
    arr = column.to_numpy(zero_copy_only=False)
    if arr.dtype.kind in "iuf":
        return arr.astype(np.float64)
    return arr


def require_columns(
    table: dict[str, np.ndarray],
    required: Iterable[str],
    positive: Iterable[str] = (),
    min_rows: int = 1,
) -> dict[str, np.ndarray]:
    """Check required columns exist, are finite numbers, positive where asked, and numerous enough.

    >>> t = {"N": np.array([1e8, 2e8]), "loss": np.array([3.1, -1.0])}
    >>> require_columns(t, ["N"])["N"].tolist()
    [100000000.0, 200000000.0]
    >>> require_columns(t, ["N", "D"])
    Traceback (most recent call last):
    ...
    orchestrator.core.laws.table.TableError: missing column(s) D; table has N, loss
    >>> require_columns(t, ["N", "loss"], positive=["loss"])
    Traceback (most recent call last):
    ...
    orchestrator.core.laws.table.TableError: column loss: 1 non-positive value(s) (first at row 1)
    """
    required = list(required)
    missing = [c for c in required if c not in table]
    if missing:
        raise TableError(
            f"missing column(s) {', '.join(missing)}; table has {', '.join(table) or 'no columns'}"
        )
    out: dict[str, np.ndarray] = {}
    for name in required:
        col = table[name]
        if col.dtype.kind not in "iuf":
            try:
                col = col.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise TableError(f"column {name}: not numeric") from exc
        col = np.asarray(col, dtype=np.float64)
        bad = ~np.isfinite(col)
        if bad.any():
            raise TableError(f"column {name}: {int(bad.sum())} NaN/inf value(s) (first at row {int(np.argmax(bad))})")
        out[name] = col
    for name in positive:
        nonpos = out[name] <= 0
        if nonpos.any():
            raise TableError(
                f"column {name}: {int(nonpos.sum())} non-positive value(s) (first at row {int(np.argmax(nonpos))})"
            )
    n = len(out[required[0]]) if required else 0
    if n < min_rows:
        raise TableError(f"{n} row(s): this fit needs at least {min_rows}")
    return out


def validate_arrays(columns: dict[str, object], min_rows: int = 1) -> dict[str, np.ndarray]:
    """Columns given as sequences (one value per run) → float64 arrays, all positive and finite.

    TableError names the problem: mismatched lengths, non-numeric, NaN/inf, non-positive, too few rows.

    >>> validate_arrays({"N": [1e8, 2e8], "loss": (3.1, 2.9)})["loss"].tolist()
    [3.1, 2.9]
    >>> validate_arrays({"N": [1e8, 2e8], "loss": [3.1]})
    Traceback (most recent call last):
    ...
    orchestrator.core.laws.table.TableError: columns have different lengths: N=2, loss=1
    """
    arrays: dict[str, np.ndarray] = {}
    for name, col in columns.items():
        try:
            arrays[name] = np.atleast_1d(np.asarray(col, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise TableError(f"column {name}: not numeric") from exc
        if arrays[name].ndim != 1:
            raise TableError(f"column {name}: expected one value per run, got shape {arrays[name].shape}")
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise TableError("columns have different lengths: " + ", ".join(f"{k}={v}" for k, v in lengths.items()))
    return require_columns(arrays, list(arrays), positive=list(arrays), min_rows=min_rows)


def cluster_close(values: Sequence[float], rel: float = 0.01) -> dict[float, float]:
    """Map each value to the smallest of its run of values within `rel` of each other (sorted):
    grid values that whole-batch rounding or float noise moved apart count as one.

    >>> cluster_close([1e9, 1.004e9, 2e9])
    {1000000000.0: 1000000000.0, 1004000000.0: 1000000000.0, 2000000000.0: 2000000000.0}
    """
    out: dict[float, float] = {}
    rep = None
    for v in sorted(set(values)):
        if rep is None or v > rep * (1 + rel):
            rep = v
        out[v] = rep
    return out
