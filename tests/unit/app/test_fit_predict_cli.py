"""`scalesweep fit --law auto` and `--predict OTHER`: JSON shape, row order, any law, clear errors."""
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from orchestrator.app.cli import get_app
from orchestrator.core.laws.chinchilla import ChinchillaLaw

runner = CliRunner()
app = get_app()
TRUTH = ChinchillaLaw(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.35)


def _write(path: Path, header: str, rows) -> Path:
    path.write_text(header + "\n" + "\n".join(",".join(str(x) for x in r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("t")
    rng = np.random.default_rng(0)
    N = np.repeat(np.geomspace(2e7, 4e8, 5), 5)
    D = N * np.tile([2.5, 5, 10, 20, 40], 5)
    L = TRUTH.predict(N, D) * np.exp(rng.normal(0, 0.003, N.size))
    train = _write(d / "train.csv", "N,D,loss", zip(N, D, L))
    # Deliberately unsorted, so row order is checked.
    other_rows = [(1.4e9, 2.8e10), (1e8, 1e9), (6.9e9, 1.4e11), (2e7, 5e8)]
    other = _write(d / "other.csv", "N,D", other_rows)
    return train, other, other_rows


def test_predict_json_shape_and_row_order(tables):
    train, other, rows = tables
    res = runner.invoke(app, ["fit", str(train), "--law", "auto", "--predict", str(other), "--bootstrap", "30",
                              "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["law"] in doc["weights"] and doc["weights"][doc["law"]] == max(doc["weights"].values())
    preds = doc["predictions"]
    assert [(p["N"], p["D"]) for p in preds] == rows
    for p in preds:
        assert set(p) == {"N", "D", "loss", "interval"}
        lo, hi = p["interval"]
        assert lo < p["loss"] < hi
        # The planted truth is close (0.3 % noise; up to 17x beyond the largest fitted size).
        assert abs(p["loss"] / float(TRUTH.predict(p["N"], p["D"])) - 1) < 0.02
    assert doc["fit"]["form"] == doc["law"]
    # rows beyond what the backtests checked are named (issue 12): 6.9e9 is 2.2 decades beyond in compute
    (far,) = doc["warnings"]
    assert "rows 2)" in far and "beyond the fitted runs" in far, far


def test_predict_inside_the_fitted_runs_has_no_extrapolation_warning(tables, tmp_path):
    train, _, _ = tables
    near = _write(tmp_path / "near.csv", "N,D", [(1e8, 1e9), (4e8, 1.6e10)])
    res = runner.invoke(app, ["fit", str(train), "--law", "chinchilla", "--predict", str(near), "--bootstrap", "10",
                              "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["warnings"] == []


@pytest.mark.parametrize("law", ["chinchilla", "kaplan"])
def test_predict_works_with_a_named_law(tables, law):
    train, other, rows = tables
    res = runner.invoke(app, ["fit", str(train), "--law", law, "--predict", str(other), "--bootstrap", "10",
                              "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["law"] == law and doc["weights"] == {law: 1.0}
    assert len(doc["predictions"]) == len(rows)


def test_predict_text_table(tables):
    train, other, _ = tables
    res = runner.invoke(app, ["fit", str(train), "--law", "auto", "--predict", str(other), "--bootstrap", "10"])
    assert res.exit_code == 0, res.output
    assert "law:" in res.stdout and "predictions of other.csv" in res.stdout and "largest N" in res.stdout
    # the chosen form's backtest errors by extrapolation distance (issue 12), for both backtests
    lines = [ln for ln in res.stdout.splitlines() if "by extrapolation distance" in ln]
    assert [ln.split(",")[1].split(" by ")[0].strip() for ln in lines] == ["largest N", "top C decade"], lines
    assert all(ln.startswith(res.stdout.split("law: ")[1].split(" ")[0] + ",") for ln in lines), lines


def test_distance_lines_doctest():
    import doctest

    from orchestrator.app.cli import fit_commands

    finder = doctest.DocTestFinder()
    runner_ = doctest.DocTestRunner()
    for test in finder.find(fit_commands.distance_lines, "distance_lines", globs={"distance_lines": fit_commands.distance_lines}):
        runner_.run(test)
    assert runner_.failures == 0 and runner_.tries == 1


def test_auto_fit_json(tables):
    train, _, _ = tables
    res = runner.invoke(app, ["fit", str(train), "--law", "auto", "--budget", "1e22", "--bootstrap", "10", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["law"] == "auto" and doc["form"] == doc["selection"]["chosen"]
    assert set(doc["selection"]["candidates"]) >= {"chinchilla", "equal-exponent", "kaplan"}
    bt = doc["selection"]["candidates"]["chinchilla"]["backtests"]
    assert set(bt) == {"largest_size", "largest_compute_decade"}
    assert "1e+22" in doc["intervals"]["budgets"]


def test_default_law_is_the_specs(tables):
    """Without --law, `fit` fits the spec's default `fit.law` (one definition of the default law) and says so."""
    from orchestrator.config.spec import FitSpec

    train, _, _ = tables
    res = runner.invoke(app, ["fit", str(train), "--bootstrap", "0", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["law"] == FitSpec().law
    assert "fit.law" in runner.invoke(app, ["fit", "--help"]).output


@pytest.mark.parametrize("header, rows, message", [
    ("N,tokens", [(1e9, 2e10)], "missing column"),
    ("N,D", [(1e9, -1.0)], "non-positive"),
    ("N,D", [(1e9, "nan")], "NaN"),
])
def test_bad_other_table_exits_2(tables, tmp_path, header, rows, message):
    train, _, _ = tables
    bad = _write(tmp_path / "bad.csv", header, rows)
    res = runner.invoke(app, ["fit", str(train), "--law", "chinchilla", "--predict", str(bad), "--bootstrap", "0"])
    assert res.exit_code == 2
    assert message in res.output and "bad.csv" in res.output


def test_predict_missing_file_and_isoflop(tables, tmp_path):
    train, other, _ = tables
    res = runner.invoke(app, ["fit", str(train), "--law", "chinchilla", "--predict", str(tmp_path / "nope.csv")])
    assert res.exit_code == 2 and "no such file" in res.output
    res = runner.invoke(app, ["fit", str(train), "--law", "isoflop", "--predict", str(other)])
    assert res.exit_code == 2 and "isoflop" in res.output
