"""`scalesweep fit-hparams`: JSON on the Step-Law grid, text output, and the exit-2 error paths."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from typer.testing import CliRunner

from orchestrator.app.cli import get_app
from orchestrator.app.cli.app import USAGE_ERROR

app = get_app()  # every command group registered, as the console script sees it

DATA = Path(__file__).resolve().parents[2] / "data" / "steplaw" / "dense_lr_bs_loss.csv"
runner = CliRunner()


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """The Step-Law grid in the CLI's format: batch in tokens (bs x 2048), loss = smooth loss."""
    t = pacsv.read_csv(DATA)
    out = pa.table({
        "N": t.column("N"), "D": t.column("D"), "lr": t.column("lr"),
        "batch": pa.array(t.column("bs").to_numpy().astype(float) * 2048.0),
        "loss": t.column("smooth loss"),
    })
    path = tmp_path_factory.mktemp("hp") / "steplaw.csv"
    pacsv.write_csv(out, path)
    return path


def _write(path: Path, cols: dict) -> Path:
    pacsv.write_csv(pa.table(cols), path)
    return path


def test_json_on_steplaw_grid(table):
    res = runner.invoke(app, ["fit-hparams", str(table), "--bootstrap", "50", "--seed", "1", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    lr, b = doc["lr"], doc["batch"]
    assert lr["N_exp"] == pytest.approx(-0.7662, abs=1e-3)
    assert lr["D_exp"] == pytest.approx(0.1970, abs=1e-3)
    assert lr["coef"] == pytest.approx(77.69, rel=1e-3)
    assert b["D_exp"] == pytest.approx(0.6125, abs=1e-3)
    assert b["coef"] == pytest.approx(0.2085, rel=1e-3)
    for group in (lr, b):
        for name, iv in group["intervals"].items():
            assert iv["low"] <= group[name] <= iv["high"], name
    assert abs(lr["N_exp"] - (-0.713)) < 0.06 and abs(b["D_exp"] - 0.571) < 0.05
    assert len(doc["cells"]) == 17 and doc["n_runs"] == 1911


def test_bowl_method_and_text_output(table):
    res = runner.invoke(app, ["fit-hparams", str(table), "--method", "bowl", "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    assert "lr*    = " in res.stdout and "batch* = " in res.stdout and "17 cells" in res.stdout


def test_diverged_column(tmp_path, table):
    t = pacsv.read_csv(table)
    loss = t.column("loss").to_numpy().copy()
    lr = t.column("lr").to_numpy()
    diverged = lr > 0.015  # the largest learning rates of the grid, flagged as diverged
    path = _write(tmp_path / "div.csv", {**{c: t.column(c) for c in ("N", "D", "lr", "batch")},
                                          "loss": loss, "diverged": diverged})
    res = runner.invoke(app, ["fit-hparams", str(path), "--bootstrap", "0", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["n_diverged"] == int(diverged.sum()) > 0


def _err(path: Path, *extra: str) -> str:
    res = runner.invoke(app, ["fit-hparams", str(path), "--bootstrap", "0", *extra])
    assert res.exit_code == USAGE_ERROR, res.output
    return res.stderr


def test_errors(tmp_path, table):
    t = pacsv.read_csv(table)
    cols = {c: t.column(c).to_numpy().astype(float) for c in t.column_names}
    assert "missing column(s) batch" in _err(_write(tmp_path / "a.csv", {k: v for k, v in cols.items() if k != "batch"}))
    assert "missing column(s) loss" in _err(_write(tmp_path / "b.csv", {k: v for k, v in cols.items() if k != "loss"}))
    neg = dict(cols, lr=np.where(np.arange(len(cols["lr"])) == 7, -1.0, cols["lr"]))
    assert "column lr" in _err(_write(tmp_path / "c.csv", neg))
    nan = dict(cols, D=np.where(np.arange(len(cols["D"])) == 3, np.nan, cols["D"]))
    assert "column D" in _err(_write(tmp_path / "d.csv", nan))
    few = {k: v[:40] for k, v in cols.items()}
    few["N"] = few["N"].copy()
    few["N"][:3] = 123.0  # a cell of three runs
    assert "at least 6" in _err(_write(tmp_path / "e.csv", few))
    assert "no such file" in _err(tmp_path / "missing.csv")
    assert "--method" in _err(table, "--method", "grid")
    bad_flag = {**{k: v for k, v in cols.items()}, "diverged": np.array(["maybe"] * len(cols["N"]))}
    assert "diverged" in _err(_write(tmp_path / "f.csv", bad_flag))


def test_surface_method_recovers_a_planted_law_with_intervals(tmp_path):
    """--method surface on runs from the tiny world's planted laws and bowl (0.2 % noise)."""
    from trainers.worlds import load_world

    w = load_world("tiny")
    rng = np.random.default_rng(1)
    rows = []
    for N in (1e4, 3e4, 1e5):
        for D in (N * 5, N * 20, N * 80):
            for lr in w.lr_star(N, D) * np.array([1 / 3, 1, 3]):
                for b in w.batch_star(D) * np.array([0.5, 1, 2]):
                    rows.append((N, D, lr, b, w.loss_star(N, D) * w.bowl_factor(N, D, lr, b) * (1 + 0.002 * rng.standard_normal())))
    path = _write(tmp_path / "planted.csv", {k: [r[i] for r in rows] for i, k in enumerate(("N", "D", "lr", "batch", "loss"))})
    res = runner.invoke(app, ["fit-hparams", str(path), "--method", "surface", "--bootstrap", "40", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["method"] == "surface"
    for group, name, truth in (("lr", "N_exp", w.lr.N_exp), ("lr", "D_exp", w.lr.D_exp), ("batch", "D_exp", w.batch.D_exp)):
        iv = doc[group]["intervals"][name]
        assert doc[group][name] == pytest.approx(truth, abs=0.05)
        assert iv["low"] <= truth <= iv["high"], (group, name, iv)
