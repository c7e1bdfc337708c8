"""A real small sweep with a downstream task (issue 18): spec `eval.tasks: [cloze]` → Ray Tune (local
cluster) → DeepSpeed on CPU evaluates the built-in cloze task at every evaluation → the store's
task_metrics table and the trials' MLflow runs (SQLite) hold task/cloze/* with steps → the
proposals (fit.json, `scalesweep propose`, the HTTP API) carry predicted task metrics with
intervals, and the parent run has the downstream fit and the accuracy-vs-compute plot.

Nothing is mocked. Nine single-worker trials (3 sizes x 3 token budgets: the two-step downstream
fit needs 6+ rows, its backtest 6+ without the largest size), 16-64 steps each.
"""
from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.app.api import create_app
from orchestrator.app.cli import get_app
from orchestrator.io.store import ObservationStore, final_task_points
from orchestrator.io.tracking import read_sweep_runs
from tests.integration.conftest import run_real_sweep

pytestmark = pytest.mark.integration

SPEC = {
    "name": "tasks",
    "model": {"n_params": [8000, 20000, 50000], "seq_len": 64},
    "tokens": {"values": [32768, 65536, 131072]},
    "learning_rates": [0.003],
    "batch_sizes": [2048],
    "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.3},
    "eval": {"every": 16, "tokens": 2048, "tasks": ["cloze"], "task_items": 40},
    "budget": {"targets": [1e11]},
    "fit": {"bootstrap": 20},
    "checkpoints": False,
}
METRICS = {"acc", "acc_norm", "loss", "chance"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, local_ray):
    root = tmp_path_factory.mktemp("tasks")
    spec, outcome = run_real_sweep(root, SPEC, "tasks", local_ray=local_ray)
    return root, spec, outcome, ObservationStore(outcome.sweep_dir)


def test_the_task_is_evaluated_at_every_evaluation_and_stored(sweep):
    _, _, outcome, store = sweep
    trials = store.trials()
    assert len(trials) == 9 and {r["status"] for r in trials.values()} == {"finished"}, trials
    tasks = store.task_metrics().to_pylist()
    obs = store.observations().to_pylist()
    for tid, rec in trials.items():
        cfg = rec["config"]
        rows = [r for r in obs if r["trial_id"] == tid]
        assert [r["step"] for r in rows] == list(range(16, cfg["D"] // 2048 + 1, 16))
        mine = [t for t in tasks if t["trial_id"] == tid]
        by_step: dict[int, dict[str, float]] = {}
        for t in mine:
            assert t["task"] == "cloze"
            by_step.setdefault(t["step"], {})[t["metric"]] = t["value"]
        assert sorted(by_step) == [r["step"] for r in rows]  # every evaluation ran the task
        for m in by_step.values():
            assert set(m) == METRICS and m["chance"] == 0.25
            assert 0 <= m["acc"] <= 1 and 0 <= m["acc_norm"] <= 1 and 0 < m["loss"] < 10
        # evaluation FLOPs are counted apart: cumulative, positive, and not in the training FLOPs
        ev = [r["eval_flops"] for r in rows]
        assert all(b > a > 0 for a, b in zip(ev, ev[1:])) and rows[-1]["eval_time_s"] > 0
        assert rows[-1]["flops"] == pytest.approx(6 * cfg["N"] * cfg["D"])
    # the task loss falls with training: the last evaluation beats the first in every trial that has two
    losses: dict[str, list[float]] = {}
    for t in tasks:  # sorted by trial and step
        if t["metric"] == "loss":
            losses.setdefault(t["trial_id"], []).append(t["value"])
    longer = [v for v in losses.values() if len(v) >= 2]
    assert len(longer) == 6 and all(v[-1] < v[0] for v in longer)
    rows = final_task_points(store)
    assert len(rows) == 9 and {r["task"] for r in rows} == {"cloze"}
    assert all({"N", "D", "acc", "task_loss", "chance"} <= set(r) for r in rows)


def test_mlflow_runs_hold_the_task_metrics_with_steps(sweep):
    _, spec, outcome, store = sweep
    parent, children = read_sweep_runs(spec.tracking_uri(), spec.name)
    client = MlflowClient(spec.tracking_uri())
    assert len(children) == 9
    steps = {}
    for row in store.observations().to_pylist():
        steps.setdefault(row["trial_id"], []).append(row["step"])
    for child in children:
        tid = child.data.tags["scalesweep.trial_id"]
        for name in ("task/cloze/acc", "task/cloze/acc_norm", "task/cloze/loss"):
            hist = client.get_metric_history(child.info.run_id, name)
            assert hist and all(0 <= h.value < 10 for h in hist)
            assert sorted(h.step for h in hist) == steps[tid]
        assert "eval_flops" in child.data.metrics and child.data.metrics["eval_flops"] > 0
    artifacts = {a.path for folder in ("plots", "results") for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {"plots/accuracy_vs_compute.png", "plots/loss_vs_compute.png", "results/downstream.json"} <= artifacts
    path = client.download_artifacts(parent.info.run_id, "results/downstream.json")
    with open(path) as fh:
        doc = json.load(fh)
    assert doc["tasks"]["cloze"]["law"] == "two-step-sigmoid"  # the task loss was measured: Bhagia et al.'s two steps
    assert "backtest_by_size" in doc["tasks"]["cloze"]


def _check_task_metrics(prop: dict) -> None:
    m = prop["task_metrics"]["cloze"]
    assert 0 <= m["acc"] <= 1 and m["law"] == "two-step-sigmoid"
    lo, hi = m["interval"]
    assert lo <= m["acc"] <= hi or math.isclose(lo, hi, abs_tol=1e-9)
    assert 0 < m["loss"] < 10 and isinstance(m["warnings"], list)


def test_proposals_carry_predicted_task_metrics(sweep):
    root, spec, outcome, store = sweep
    doc = json.loads((outcome.sweep_dir / "fit.json").read_text())
    (prop,) = doc["proposals"]
    _check_task_metrics(prop)
    assert doc["downstream"]["tasks"]["cloze"]["n_points"] == 9

    r = CliRunner().invoke(get_app(), ["propose", str(outcome.sweep_dir), "--budget", "1e11", "--bootstrap", "20",
                                       "--json"])
    assert r.exit_code == 0, r.output
    (cli_prop,) = json.loads(r.stdout)
    _check_task_metrics(cli_prop)
    assert cli_prop["task_metrics"]["cloze"]["acc"] == pytest.approx(prop["task_metrics"]["cloze"]["acc"], abs=1e-9)

    with TestClient(create_app(root, launch=False)) as api:
        r = api.get("/sweeps/tasks/proposals", params={"budget": 1e11, "bootstrap": 20})
    assert r.status_code == 200, r.text
    (api_prop,) = r.json()
    _check_task_metrics(api_prop)
    assert api_prop["task_metrics"]["cloze"]["acc"] == pytest.approx(prop["task_metrics"]["cloze"]["acc"], abs=1e-9)
