"""`scalesweep fit`: JSON output on the Chinchilla points and clear errors on bad tables."""
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from orchestrator.app.cli import get_app
from orchestrator.core.laws.table import read_table

DATA = Path(__file__).parents[2] / "data" / "chinchilla_epoch" / "svg_extracted_data.csv"
runner = CliRunner()
app = get_app()


def _write(path: Path, header: str, rows) -> Path:
    path.write_text(header + "\n" + "\n".join(",".join(str(x) for x in r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def chin_table(tmp_path_factory) -> Path:
    t = read_table(DATA)
    N, C, L = t["Model Size"], t["Training FLOP"], t["loss"]
    keep = np.sort(np.argsort(L, kind="stable")[:240])
    rows = [(float(n), float(c / (6 * n)), float(l), float(c)) for n, c, l in zip(N[keep], C[keep], L[keep])]
    return _write(tmp_path_factory.mktemp("t") / "chin.csv", "N,D,loss,C", rows)


def test_fit_chinchilla_json(chin_table):
    res = runner.invoke(app, ["fit", str(chin_table), "--law", "chinchilla", "--bootstrap", "50",
                              "--budget", "1e23", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["law"] == "chinchilla" and doc["n_points"] == 240
    assert doc["objective"] <= 1.01828e-3
    assert abs(doc["params"]["alpha"] / 0.3473 - 1) < 0.005
    iv = doc["intervals"]["budgets"]["1e+23"]["N_opt"]
    assert iv["low"] < iv["estimate"] < iv["high"]
    assert doc["warnings"] == []


def test_fit_text_output(chin_table):
    res = runner.invoke(app, ["fit", str(chin_table), "--law", "chinchilla"])
    assert res.exit_code == 0, res.output
    assert "alpha" in res.stdout and "chinchilla" in res.stdout


def test_missing_column(tmp_path):
    p = _write(tmp_path / "t.csv", "N,loss", [(1e8, 3.0)] * 8)
    res = runner.invoke(app, ["fit", str(p), "--law", "chinchilla"])
    assert res.exit_code == 2
    assert "missing column" in res.output and "D" in res.output


@pytest.mark.parametrize(
    "rows, message",
    [
        ([(1e8 * (i + 1), 1e9, 3.0 - 0.1 * i) for i in range(7)] + [(-1e8, 1e9, 2.0)], "non-positive"),
        ([(1e8 * (i + 1), 1e9, 3.0 - 0.1 * i) for i in range(7)] + [(1e8, "nan", 2.0)], "NaN"),
        ([(1e8 * (i + 1), 1e9, 3.0 - 0.1 * i) for i in range(4)], "at least 6"),
    ],
)
def test_bad_tables_exit_2_with_reason(tmp_path, rows, message):
    p = _write(tmp_path / "t.csv", "N,D,loss", rows)
    res = runner.invoke(app, ["fit", str(p), "--law", "chinchilla"])
    assert res.exit_code == 2
    assert message in res.output


def test_data_constrained_needs_U(chin_table):
    res = runner.invoke(app, ["fit", str(chin_table), "--law", "data-constrained"])
    assert res.exit_code == 2 and "U" in res.output


def test_unknown_law(chin_table):
    res = runner.invoke(app, ["fit", str(chin_table), "--law", "nonsense"])
    assert res.exit_code == 2
