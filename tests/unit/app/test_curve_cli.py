"""`scalesweep fit-curve`: JSON contract, metrics on the published protocol, bad input exits 2."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

# Register every command group, as the `scalesweep` entry point does (with a single command
# Typer would make it the root and `fit-curve` would no longer be a subcommand).
from orchestrator.app.cli import curve_commands, fit_commands, hparam_commands, sweep_commands  # noqa: F401
from orchestrator.app.cli.app import app

D = Path(__file__).resolve().parents[2] / "data" / "multipowerlaw" / "csv_100"
runner = CliRunner()


def _train_args():
    return [a for n in ("cosine_24000", "constant_24000", "wsdcon_9") for a in ("--train", str(D / f"{n}.csv"))]


def test_fit_curve_json_predictions_and_metrics():
    target = D / "wsd_20000_24000.csv"
    res = runner.invoke(app, ["fit-curve", "--law", "multipower", *_train_args(), "--predict", str(target), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert set(doc["params"]) == {"L0", "A", "alpha", "B", "C", "beta", "gamma"}
    pred = doc["predictions"][str(target)]
    steps = [int(line.split(",")[0]) for line in target.read_text().splitlines()[1:]]
    assert pred["step"] == steps and len(pred["loss"]) == len(steps)
    m = doc["metrics"][str(target)]
    assert m["mean_rel_error"] < 0.002 and m["worst_rel_error"] < 0.01 and m["r2"] > 0.995


def test_fit_curve_predicts_a_schedule_without_loss(tmp_path):
    sched = tmp_path / "plan.csv"
    sched.write_text("step,lr\n" + "".join(f"{s},{3e-4 if s < 30000 else 3e-5}\n" for s in range(2160, 40001, 640)))
    res = runner.invoke(
        app, ["fit-curve", "--law", "annealing", *_train_args(), "--predict", str(sched), "--json", "--interval", "0.9"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    pred = doc["predictions"][str(sched)]
    assert str(sched) not in doc["metrics"]
    assert all(lo <= v <= hi for lo, v, hi in zip(pred["low"], pred["loss"], pred["high"]))
    assert pred["loss"][-1] < pred["loss"][-3]  # the step drop lowers the loss


def test_fit_curve_bad_files_exit_2_naming_the_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("step,lr\n1,0.1\n2,0.1\n")
    res = runner.invoke(app, ["fit-curve", "--train", str(bad)])
    assert res.exit_code == 2
    assert str(bad) in res.stderr and "loss" in res.stderr
    missing = tmp_path / "nope.csv"
    res = runner.invoke(app, ["fit-curve", *_train_args(), "--predict", str(missing)])
    assert res.exit_code == 2 and str(missing) in res.stderr
