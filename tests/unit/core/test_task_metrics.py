"""Downstream tasks inside a sweep (issue 18), piece by piece: the spec's eval.tasks (validated at
`scalesweep validate`), the trial contract, the Tune callback, the store's task_metrics table (old
stores stay readable), the rows a downstream fit gets, proposals with task_metrics, the plot.
The whole chain runs for real in tests/integration/test_task_sweep.py."""
from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.config.spec import SpecError, parse_spec
from orchestrator.io.store import OBS_SCHEMA, ObservationStore, final_task_points
from trainers.contract import TrialConfig, split_task_key, task_key

BASE = {"name": "t", "model": {"n_params": [8000], "seq_len": 64}, "tokens": {"values": [8192]},
        "learning_rates": [0.003], "batch_sizes": [1024]}


def spec_with(**eval_fields):
    return {**BASE, "eval": eval_fields}


# ------------------------------------------------------------------------------------- spec

def test_spec_accepts_builtin_tasks_and_importable_hooks(tmp_path, monkeypatch):
    (tmp_path / "mylab_tasks.py").write_text("def make_quiz():\n    return lambda model, tok: {'acc': 0.5}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = parse_spec(spec_with(tasks=["cloze", "builtin:next_line", "mylab_tasks:make_quiz"], tasks_at="checkpoints"))
    assert spec.eval.tasks == ["cloze", "builtin:next_line", "mylab_tasks:make_quiz"]
    assert spec.eval.tasks_at == "checkpoints"
    assert parse_spec(BASE).eval.tasks == [] and parse_spec(BASE).eval.tasks_at == "every_eval"
    from orchestrator.config.planners import GridPlanner
    from orchestrator.config.trials import trial_config

    cfg = trial_config(spec, GridPlanner(spec).runnable()[0], None, None)
    assert cfg.tasks == ("cloze", "builtin:next_line", "mylab_tasks:make_quiz") and cfg.tasks_at == "checkpoints"
    assert cfg.task_items == 200


@pytest.mark.parametrize("tasks, message", [
    (["clozee"], "task 'clozee': not a built-in task"),
    (["builtin:hellaswag"], "unknown built-in task 'hellaswag'"),
    (["no_such_module_xyz:task"], "cannot import module 'no_such_module_xyz'"),
    (["json:no_such_attr"], "module 'json' has no attribute 'no_such_attr'"),
    (["json:__doc__"], "is not callable"),
    (["cloze", "builtin:cloze"], "both report as task/cloze/"),
])
def test_spec_rejects_tasks_that_do_not_load(tasks, message):
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with(tasks=tasks))
    assert "eval.tasks" in str(err.value) and message in str(err.value)


def test_spec_rejects_builtin_tasks_on_user_shards_and_bad_tasks_at():
    with pytest.raises(SpecError, match="eval.tasks: built-in task 'cloze' is built from the built-in corpus"):
        parse_spec({**spec_with(tasks=["cloze"]), "data": "/some/shards"})
    with pytest.raises(SpecError, match="eval.tasks: the simulated backend has no model"):
        parse_spec({**spec_with(tasks=["cloze"]), "trainer": {"backend": "simulated"}})
    with pytest.raises(SpecError, match="eval.tasks_at"):
        parse_spec(spec_with(tasks=["cloze"], tasks_at="sometimes"))


def test_validate_command_exits_2_naming_eval_tasks(tmp_path):
    from orchestrator.app.cli import get_app

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_with(tasks=["missing_pkg_abc.evals:quiz"])))
    r = CliRunner().invoke(get_app(), ["validate", str(path)])
    assert r.exit_code == 2
    assert "eval.tasks" in r.output and "missing_pkg_abc" in r.output


# --------------------------------------------------------------------------------- contract

def test_trial_config_round_trips_tasks_and_reads_older_dicts():
    cfg = TrialConfig("t", 8000, 8192, 3e-3, 1024, tasks=("cloze",), tasks_at="checkpoints", task_items=50)
    d = json.loads(json.dumps(cfg.to_dict()))  # as a Ray config travels: the tuple becomes a list
    assert d["tasks"] == ["cloze"] and TrialConfig.from_dict(d) == cfg
    old = asdict(TrialConfig("t", 8000, 8192, 3e-3, 1024))
    for key in ("tasks", "tasks_at", "task_items"):  # a config written before tasks existed
        old.pop(key)
    back = TrialConfig.from_dict(old)
    assert back.tasks == () and back.tasks_at == "every_eval"


def test_task_keys():
    assert task_key("cloze", "acc") == "task/cloze/acc"
    assert split_task_key("task/cloze/acc_norm") == ("cloze", "acc_norm")
    assert split_task_key("task/my.task/loss") == ("my.task", "loss")
    assert split_task_key("eval_loss") is None and split_task_key("task/acc") is None


def test_callback_keeps_task_metrics_and_optional_keys():
    pytest.importorskip("ray")
    from orchestrator.adapters.tune.callback import _report_of

    result = {"step": 4, "tokens": 4096, "flops": 1e9, "eval_loss": 3.0, "eval_flops": 2e8, "eval_time_s": 0.1,
              "task/cloze/acc": 0.5, "task/cloze/loss": 2.5, "time_this_iter_s": 1.0, "config": {"x": 1}}
    r = _report_of(result)
    assert r["task/cloze/acc"] == 0.5 and r["task/cloze/loss"] == 2.5 and r["eval_flops"] == 2e8
    assert "time_this_iter_s" not in r and "config" not in r and math.isnan(r["train_loss"])


# ------------------------------------------------------------------------------------ store

def _report(step, eval_loss, done=False, **tasks):
    r = {"step": step, "tokens": step * 1024, "flops": 6.0 * step, "eval_loss": eval_loss, "done": float(done),
         "eval_flops": 10.0 * step}
    r.update({task_key("cloze", k): v for k, v in tasks.items()})
    return r


def test_store_keeps_task_metrics_in_a_long_table_and_recovers_them(tmp_path):
    store = ObservationStore(tmp_path)
    store.append("a", _report(1, 3.0, acc=0.3, loss=2.9, chance=0.25))
    store.append("a", _report(2, 2.5, done=True, acc=0.4, loss=2.7, chance=0.25))
    store.append("b", _report(1, 3.1))  # a report without tasks
    store.append("a", _report(2, 2.5, done=True, acc=0.45))  # re-sent (a restarted trial): last write wins
    table = store.task_metrics().to_pylist()
    assert {(r["trial_id"], r["step"], r["metric"]): r["value"] for r in table} == {
        ("a", 1, "acc"): 0.3, ("a", 1, "loss"): 2.9, ("a", 1, "chance"): 0.25,
        ("a", 2, "acc"): 0.45, ("a", 2, "loss"): 2.7, ("a", 2, "chance"): 0.25}
    obs = store.observations().to_pylist()
    assert [r["eval_flops"] for r in obs] == [10.0, 20.0, 10.0]
    # a controller killed before its flush: the write-ahead log holds the task metrics too
    dead = ObservationStore(tmp_path)
    dead.append("c", _report(1, 3.2, acc=0.2))
    dead._wal.close()
    dead._wal = None  # as if the process died here
    fresh = ObservationStore(tmp_path)
    assert fresh.recover() == 1
    assert fresh.task_metrics(trial_id="c").to_pylist()[0]["value"] == 0.2
    fresh.compact()
    assert len(list((tmp_path / "store" / "task_metrics").glob("part-*"))) == 1
    assert fresh.task_metrics().num_rows == 7


def test_a_store_written_before_task_metrics_stays_readable(tmp_path):
    old_schema = pa.schema([f for f in OBS_SCHEMA if f.name not in ("eval_flops", "eval_time_s")])
    folder = tmp_path / "store" / "observations"
    folder.mkdir(parents=True)
    row = {"trial_id": "a", "step": 3, "tokens": 3072, "flops": 1.0, "lr": 1e-3, "train_loss": 3.0, "eval_loss": 2.9,
           "tokens_per_s": 1.0, "step_time_s": 1.0, "wall_time": 0.0, "done": True, "seq": 1}
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), folder / "part-00000000000000000001-old.parquet")
    store = ObservationStore(tmp_path)
    (got,) = store.observations().to_pylist()
    assert got["eval_loss"] == 2.9 and got["eval_flops"] is None
    assert store.task_metrics().num_rows == 0 and final_task_points(store) == []


def test_final_task_points_are_the_tuned_trials_final_evaluations(tmp_path):
    store = ObservationStore(tmp_path)
    configs = {  # one cell, two learning rates (the better one counts), and a second cell
        "good": {"N": 1000, "D": 2048, "D_nominal": 2048, "lr": 1e-3, "batch": 1024},
        "bad": {"N": 1000, "D": 2048, "D_nominal": 2048, "lr": 1e-1, "batch": 1024},
        "other": {"N": 2000, "D": 2048, "D_nominal": 2048, "lr": 1e-3, "batch": 1024},
    }
    final = {"good": (2.5, 0.6), "bad": (3.5, 0.3), "other": (2.3, 0.7)}
    for tid, cfg in configs.items():
        store.set_status(tid, "running", config=cfg)
        loss, acc = final[tid]
        store.append(tid, _report(1, loss + 0.5, acc=acc - 0.1, loss=loss + 1, chance=0.25))
        store.append(tid, _report(2, loss, done=True, acc=acc, acc_norm=acc, loss=loss + 0.5, chance=0.25))
        store.set_status(tid, "finished")
    rows = sorted(final_task_points(store), key=lambda r: r["N"])
    assert [(r["trial_id"], r["acc"], r["task_loss"]) for r in rows] == [("good", 0.6, 3.0), ("other", 0.7, 2.8)]
    assert rows[0] == {"task": "cloze", "N": 1000.0, "D": 2048.0, "trial_id": "good", "acc": 0.6, "acc_norm": 0.6,
                       "task_loss": 3.0, "chance": 0.25}


# -------------------------------------------------------------------------------- proposals

def _planted_sweep():
    """Finished runs of a Chinchilla world and their cloze rows drawn from a two-step law."""
    from orchestrator.core.laws.chinchilla import ChinchillaLaw

    law = ChinchillaLaw(1.8, 480.0, 2100.0, 0.35, 0.37)
    points, rows = [], []
    for n in (2e7, 5e7, 1e8, 2e8, 4e8):
        for tpp in (5, 10, 20, 40, 80):
            d = n * tpp
            loss = float(law.predict(np.array([n]), np.array([d]))[0])
            points.append({"N": n, "D": d, "lr": 1e-3, "batch": 2048, "loss": loss, "trial_id": f"{n}-{d}"})
            acc = 0.25 + 0.75 / (1 + math.exp(4.0 * (loss - 2.75)))
            rows.append({"task": "cloze", "N": n, "D": d, "acc": acc, "task_loss": loss, "chance": 0.25})
    return law, points, rows


def test_proposals_carry_task_metrics_only_when_tasks_were_evaluated():
    from orchestrator.core.proposals import fit_and_propose

    law, points, rows = _planted_sweep()
    plain = fit_and_propose(points, [1e21], bootstrap=0)
    assert "task_metrics" not in plain.proposals[0]  # no task evaluated: nothing changes
    fit = fit_and_propose(points, [1e21], bootstrap=20, task_rows=rows)
    (prop,) = fit.proposals
    assert {k: v for k, v in prop.items() if k != "task_metrics"} == {
        k: v for k, v in fit_and_propose(points, [1e21], bootstrap=20).proposals[0].items()}
    m = prop["task_metrics"]["cloze"]
    truth_loss = float(law.predict(np.array([prop["N"]]), np.array([prop["D"]]))[0])
    truth = 0.25 + 0.75 / (1 + math.exp(4.0 * (truth_loss - 2.75)))
    assert m["law"] == "two-step-sigmoid"
    assert m["acc"] == pytest.approx(truth, abs=0.01) and m["loss"] == pytest.approx(truth_loss, rel=0.01)
    assert m["interval"][0] - 1e-9 <= m["acc"] <= m["interval"][1] + 1e-9  # exact data: a near-point interval


def test_task_summary_and_accuracy_plot(tmp_path):
    from orchestrator.core.proposals import fit_and_propose
    from orchestrator.app.task_summary import summarise_tasks, task_plot

    _, points, rows = _planted_sweep()
    fit = fit_and_propose(points, [1e21], bootstrap=20, task_rows=rows)
    doc, plot = summarise_tasks(rows, fit, bootstrap=20, targets=[1e21])
    task = doc["tasks"]["cloze"]
    assert task["law"] == "two-step-sigmoid" and task["n_points"] == 25
    bt = task["backtest_by_size"]
    assert bt["n_test"] == 1 and bt["mean_abs_error_points"] < 1.0  # planted truth: the largest size is predicted
    json.dumps(doc, allow_nan=False)
    entry = plot["cloze"]
    assert set(entry) >= {"runs", "curves", "curve", "heldout", "proposals", "chance"}
    assert len(entry["curves"]) == 5 and entry["proposals"][0]["C"] == 1e21
    fig = task_plot(plot, level=0.9)
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert {"fitted, compute-optimal (N*, D*)", "90% band", "proposals", "chance 0.25",
            "held out (largest N): observed"} <= set(labels)
    fig.savefig(tmp_path / "acc.png")
    assert (tmp_path / "acc.png").stat().st_size > 10_000
    assert task_plot({}) is None
