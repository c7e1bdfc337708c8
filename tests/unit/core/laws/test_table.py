"""read_table / require_columns: formats and the errors that name the problem."""
import numpy as np
import pytest

from orchestrator.core.laws.table import TableError, read_table, require_columns


def test_csv_and_parquet_roundtrip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "t.csv").write_text("N,D,loss\n1e8,2e9,3.0\n2e8,4e9,2.8\n")
    pq.write_table(pa.table({"N": [1e8, 2e8], "D": [2e9, 4e9], "loss": [3.0, 2.8]}), tmp_path / "t.parquet")
    for name in ("t.csv", "t.parquet"):
        t = read_table(tmp_path / name)
        np.testing.assert_array_equal(t["loss"], [3.0, 2.8])
        assert t["N"].dtype == np.float64


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(TableError, match="no such file"):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(TableError, match="unknown table format"):
        (tmp_path / "t.xlsx").write_text("x")
        read_table(tmp_path / "t.xlsx")
    t = {"N": np.array([1.0, -2.0]), "D": np.array([1.0, np.nan])}
    with pytest.raises(TableError, match="missing column.*loss"):
        require_columns(t, ["N", "D", "loss"])
    with pytest.raises(TableError, match="column D: 1 NaN"):
        require_columns(t, ["N", "D"])
    with pytest.raises(TableError, match="column N: 1 non-positive"):
        require_columns({"N": t["N"]}, ["N"], positive=["N"])
    with pytest.raises(TableError, match="at least 6"):
        require_columns({"N": np.ones(3)}, ["N"], min_rows=6)
