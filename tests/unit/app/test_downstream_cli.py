"""`scalesweep fit-downstream`: JSON with predictions in the other table's order; clear errors (exit 2)."""
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from benchmarks.downstream import CHANCE, load_pythia, task_columns
from orchestrator.app.cli import get_app

runner = CliRunner()
app = get_app()


def _write(path: Path, header: str, rows) -> Path:
    path.write_text(header + "\n" + "\n".join(",".join(str(x) for x in r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def pythia_tables(tmp_path_factory):
    """piqa and arc_easy of Pythia up to 1.4B (train) and the final 2.8B/6.9B/12B (other)."""
    d = tmp_path_factory.mktemp("pythia")
    data = load_pythia("standard")
    train, other = [], []
    for task in ("piqa", "arc_easy"):
        c = task_columns(data, task)
        for n, dd, a, s, L in zip(c["N"], c["D"], c["acc"], c["step"], c["loss"]):
            if n <= 1.3e9:
                train.append((task, n, dd, a, CHANCE[task], L))
            elif s == 143000:
                other.append((task, n, dd, a, L))
    other = other[::-1]  # any order: predictions must follow it
    return {
        "train": _write(d / "train.csv", "task,N,D,acc,chance,lambada_log_ppl", train),
        "other": _write(d / "other.csv", "task,N,D,acc_observed,lambada_log_ppl", other),
        "other_rows": other,
        "dir": d,
    }


def test_multi_task_latent_fit_predicts_in_row_order(pythia_tables):
    res = runner.invoke(app, ["fit-downstream", str(pythia_tables["train"]), "--predict", str(pythia_tables["other"]),
                              "--min-D", "3e9", "--bootstrap", "50", "--cluster", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["law"] == "latent-sigmoid"
    assert set(doc["tasks"]) == {"piqa", "arc_easy"}
    preds = doc["predictions"]
    rows = pythia_tables["other_rows"]
    assert len(preds) == len(rows) == 6
    for p, (task, n, d, obs, _) in zip(preds, rows):
        assert p["task"] == task and p["N"] == n and p["D"] == d
        lo, hi = p["interval"]
        assert lo <= p["acc"] <= hi
        # the golden numbers: within 3 points of the observed accuracy
        assert abs(p["acc"] - obs) < 0.03, (task, n, p["acc"], obs)
        assert set(p) >= {"N", "D", "acc", "interval", "prediction_interval"}


def test_two_step_with_a_loss_column(tmp_path, pythia_tables):
    data = load_pythia("standard")
    c = task_columns(data, "lambada_openai")
    keep = c["N"] <= 1.3e9
    train = _write(tmp_path / "t.csv", "N,D,task_loss,acc",
                   zip(c["N"][keep], c["D"][keep], c["loss"][keep], c["acc"][keep]))
    fin = ~keep & (c["step"] == 143000)
    other = _write(tmp_path / "o.csv", "N,D", zip(c["N"][fin], c["D"][fin]))
    given = _write(tmp_path / "g.csv", "N,D,task_loss", [(1e10, 3e11, 1.4)])
    res = runner.invoke(app, ["fit-downstream", str(train), "--predict", str(other), "--chance", "0",
                              "--min-D", "3e9", "--bootstrap", "30", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["law"] == "two-step-sigmoid"
    assert all(p["loss_source"] == "loss law" and p["loss"] > 1.0 for p in doc["predictions"])
    assert [p["N"] for p in doc["predictions"]] == list(c["N"][fin])
    res = runner.invoke(app, ["fit-downstream", str(train), "--predict", str(given), "--chance", "0",
                              "--bootstrap", "0", "--link", "exponential", "--json"])
    assert res.exit_code == 0, res.output
    p = json.loads(res.stdout)["predictions"][0]
    assert p["loss_source"] == "given" and p["loss"] == 1.4 and p["interval"] == [None, None]


def test_text_output(pythia_tables):
    res = runner.invoke(app, ["fit-downstream", str(pythia_tables["train"]), "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    assert "latent-sigmoid" in res.output and "piqa" in res.output


@pytest.mark.parametrize("header, rows, extra, message", [
    ("N,D,acc", [(1e8, 1e9, 1.2)] * 10, [], "outside [0, 1]"),
    ("N,D,acc", [(1e8 * (i + 1), 1e9, 0.3 + 0.01 * i) for i in range(10)], ["--chance", "0.9", "--ceiling", "0.8"],
     "chance 0.9 is not below the ceiling 0.8"),
    ("N,D,loss", [(1e8, 1e9, 2.0)] * 10, [], "missing column acc"),
    ("M,acc", [(1, 0.5)] * 10, [], "needs columns N and D, or C"),
    ("N,D,acc", [(1e8 * (i + 1), 1e9, 0.5) for i in range(3)], [], "need at least"),
    ("N,D,acc", [(1e8, 1e9, "x")] * 10, [], "acc"),
    ("N,D,acc,chance", [(1e8 * (i + 1), 1e9, 0.5, 0.25 + 0.25 * (i % 2)) for i in range(10)], [], "chance varies"),
])
def test_bad_tables_exit_2_naming_the_problem(tmp_path, header, rows, extra, message):
    table = _write(tmp_path / "bad.csv", header, rows)
    res = runner.invoke(app, ["fit-downstream", str(table), "--bootstrap", "0", *extra])
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_predict_table_errors(tmp_path, pythia_tables):
    other = _write(tmp_path / "o.csv", "task,N,D", [("hellaswag", 1e10, 3e11)])
    res = runner.invoke(app, ["fit-downstream", str(pythia_tables["train"]), "--predict", str(other), "--bootstrap", "0"])
    assert res.exit_code == 2 and "hellaswag" in res.output
    no_task = _write(tmp_path / "n.csv", "N,D", [(1e10, 3e11)])
    res = runner.invoke(app, ["fit-downstream", str(pythia_tables["train"]), "--predict", str(no_task), "--bootstrap", "0"])
    assert res.exit_code == 2 and "add a task column" in res.output
    res = runner.invoke(app, ["fit-downstream", str(tmp_path / "missing.csv")])
    assert res.exit_code == 2 and "no such file" in res.output


def test_untrained_rows_are_left_out_and_a_missing_chance_is_flagged(tmp_path):
    N = np.repeat([1e7, 3e7, 1e8, 3e8], 4)
    D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    acc = 0.25 + 0.75 / (1 + np.exp(3.0 * (1.7 + 400 / N ** 0.34 + 400 / D ** 0.28 - 2.6)))
    rows = [(n, 0, 0.25) for n in (1e7, 3e7, 1e8, 3e8)] + list(zip(N, D, acc))
    table = _write(tmp_path / "t.csv", "N,D,acc", rows)
    res = runner.invoke(app, ["fit-downstream", str(table), "--bootstrap", "0", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["n_points"] == 16
    assert "4 row(s) with D = 0 (untrained checkpoints) left out" in doc["warnings"]
    assert any("no chance level given" in w for w in doc["warnings"])


def _saturating_table(tmp_path) -> Path:
    """A planted latent-sigmoid law (5 sizes x 8 checkpoints, exact accuracies) whose smallest size falls 6 and 10
    points below its peak at its last two checkpoints, as Pythia 70M does late in training."""
    N = np.repeat([2e7, 5e7, 1.2e8, 3e8, 8e8], 8)
    D = np.tile(np.geomspace(3e9, 3e11, 8), 5)
    acc = 0.25 + 0.75 / (1 + np.exp(300 / N ** 0.3 + 2000 / D ** 0.3 - 2.5))
    acc[[6, 7]] = acc[5] - np.array([0.06, 0.10])
    return _write(tmp_path / "sat.csv", "N,D,acc", zip(N, D, acc))


def test_checkpoint_weights_and_saturation_flags_reach_the_fit(tmp_path):
    table = _saturating_table(tmp_path)

    def fit(*flags):
        res = runner.invoke(app, ["fit-downstream", str(table), "--chance", "0.25", "--bootstrap", "0", "--json", *flags])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    default = fit()
    assert default["extra"]["checkpoint_weights"] == "tokens" and default["extra"]["saturation_sigma"] == 3.0
    assert default["n_points"] == 38 and default["extra"]["n_saturated"] == 2
    assert any("saturat" in w and "N 2e+07" in w for w in default["warnings"])
    off = fit("--saturation-sigma", "0")
    assert off["n_points"] == 40 and off["extra"]["saturation_sigma"] == 0.0
    assert not any("saturat" in w for w in off["warnings"])
    assert off["params"] != default["params"]
    loose = fit("--saturation-sigma", "1e6")  # a 10-point drop is far below a million standard errors
    assert loose["n_points"] == 40
    uniform = fit("--checkpoint-weights", "uniform")
    assert uniform["extra"]["checkpoint_weights"] == "uniform" and uniform["n_points"] == 38
    assert uniform["params"] != default["params"]
    # the explicit values are the defaults: same fit
    assert fit("--checkpoint-weights", "tokens", "--saturation-sigma", "3")["params"] == default["params"]


def test_checkpoint_weights_of_a_two_step_fit(tmp_path):
    N = np.repeat([1e7, 3e7, 1e8, 3e8], 4)
    D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    L = 1.7 + 400 / N ** 0.34 + 400 / D ** 0.28
    acc = 0.25 + 0.75 / (1 + np.exp(3.0 * (L - 2.6)))
    table = _write(tmp_path / "t.csv", "N,D,loss,acc", zip(N, D, L, acc))
    for flag, weights in (([], "uniform"), (["--checkpoint-weights", "tokens"], "tokens")):
        res = runner.invoke(app, ["fit-downstream", str(table), "--chance", "0.25", "--bootstrap", "0", "--json", *flag])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert doc["law"] == "two-step-sigmoid" and doc["extra"]["checkpoint_weights"] == weights
        assert doc["extra"]["saturation_sigma"] == 0.0  # the saturation rule is for latent fits only
        assert doc["params"]["acc.L0"] == pytest.approx(2.6, abs=1e-3)  # exact data: any weights recover the law


def test_checkpoint_flag_errors(tmp_path):
    table = _saturating_table(tmp_path)
    res = runner.invoke(app, ["fit-downstream", str(table), "--saturation-sigma", "-1"])
    assert res.exit_code == 2 and "--saturation-sigma must be >= 0" in res.output
    res = runner.invoke(app, ["fit-downstream", str(table), "--checkpoint-weights", "late"])
    assert res.exit_code == 2 and "late" in res.output
    compute = _write(tmp_path / "c.csv", "C,acc", [(1e18 * 2 ** i, 0.3 + 0.05 * i) for i in range(8)])
    res = runner.invoke(app, ["fit-downstream", str(compute), "--checkpoint-weights", "tokens", "--bootstrap", "0"])
    assert res.exit_code == 2 and "needs N and D" in res.output


def test_saturation_default_is_the_laws():
    from orchestrator.app.cli.downstream_commands import fit_downstream_command
    from orchestrator.core.laws.downstream import SATURATION_SIGMA

    assert inspect.signature(fit_downstream_command).parameters["saturation_sigma"].default.default == SATURATION_SIGMA
    res = runner.invoke(app, ["fit-downstream", "--help"], env={"COLUMNS": "200"})
    assert "--checkpoint-weights" in res.output and "--saturation-sigma" in res.output
