"""A real small sweep end to end: spec → Ray Tune (local cluster) → DeepSpeed on CPU
(one 2-worker ZeRO-3 trial through Ray Train's TorchTrainer) → Parquet store + MLflow → fit.

Nothing is mocked: Ray, DeepSpeed and MLflow (SQLite) all run for real.
"""
from __future__ import annotations

import json
import math

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.app.cli import get_app
from orchestrator.io.store import ObservationStore
from orchestrator.io.tracking import read_sweep_runs
from tests.integration.conftest import run_real_sweep

pytestmark = pytest.mark.integration

SPEC = {
    "name": "itest",
    "model": {"n_params": [8000, 20000, 50000], "seq_len": 64},
    "tokens": {"values": [8192, 16384]},
    "learning_rates": [0.003],
    "batch_sizes": [1024],
    "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.3},
    "eval": {"every": 4, "tokens": 4096},
    "budget": {"targets": [1e11, 1e12]},
    # the largest model trains on 2 workers with ZeRO stage 3 (Ray Train TorchTrainer)
    "resources": {"rules": [{"min_n_params": 40000, "workers": 2, "zero_stage": 3}]},
    "fit": {"bootstrap": 50},
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, local_ray):
    # A 4-CPU cluster: the controller caps concurrency so that every running trial's workers fit
    # (CPUs / the largest trial's 2 workers), so on 2 CPUs all six trials would run one at a time.
    # Each trial is mostly start-up (processes, imports, Ray Train's worker group), not compute.
    return run_real_sweep(tmp_path_factory.mktemp("sweep"), SPEC, "itest", num_cpus=4, local_ray=local_ray)


def test_every_trial_finished_and_store_has_rows(sweep):
    spec, outcome = sweep
    store = ObservationStore(outcome.sweep_dir)
    trials = store.trials()
    assert len(trials) == 6
    assert {rec["status"] for rec in trials.values()} == {"finished"}, trials
    obs = store.observations().to_pylist()
    by_trial: dict[str, list[dict]] = {}
    for row in obs:
        by_trial.setdefault(row["trial_id"], []).append(row)
    assert set(by_trial) == set(trials)
    for tid, rows in by_trial.items():
        cfg = trials[tid]["config"]
        steps = [r["step"] for r in rows]
        assert steps == sorted(set(steps)), "one row per (trial, step)"
        assert rows[-1]["done"] and rows[-1]["tokens"] == cfg["D"]
        assert rows[-1]["flops"] == pytest.approx(6 * cfg["N"] * cfg["D"])
        assert math.isfinite(rows[-1]["eval_loss"]) and rows[-1]["eval_loss"] < math.log(256)
    two_worker = [t for t in trials.values() if t["config"]["workers"] == 2]
    assert len(two_worker) == 2 and all(t["config"]["zero_stage"] == 3 for t in two_worker)


def test_mlflow_parent_and_children(sweep):
    spec, outcome = sweep
    parent, children = read_sweep_runs(spec.tracking_uri(), spec.name)
    assert parent.info.run_id == outcome.mlflow_parent_run
    assert parent.data.params["model.seq_len"] == "64"
    assert len(children) == 6
    client = MlflowClient(spec.tracking_uri())
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        hist = client.get_metric_history(child.info.run_id, "eval_loss")
        assert len(hist) >= 2 and hist[-1].value < hist[0].value
        assert {"tokens", "flops", "lr", "train_loss", "tokens_per_s"} <= set(child.data.metrics)
    artifacts = {a.path for folder in ("plots", "results") for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {"plots/loss_vs_compute.png", "results/fit.json", "results/proposals.json"} <= artifacts


def test_fitted_law_and_proposals(sweep):
    spec, outcome = sweep
    doc = json.loads((outcome.sweep_dir / "fit.json").read_text())
    params = doc["law"]["params"]
    # the form is chosen by backtest (orchestrator/core/laws/selection.py): its own parameters
    kaplan = {"Nc", "Dc", "alphaN", "alphaD"}
    expected = {"kaplan": kaplan, "kaplan-E": kaplan | {"E"}}.get(doc["law"]["form"], {"E", "A", "B", "alpha", "beta"})
    assert set(params) == expected, params
    assert all(math.isfinite(v) for v in params.values())
    assert len(doc["proposals"]) == 2
    for prop in doc["proposals"]:
        assert prop["N"] > 0 and prop["D"] > 0 and math.isfinite(prop["predicted_loss"])
        assert prop["N"] * prop["D"] * 6 == pytest.approx(prop["budget"], rel=1e-6)


def test_status_and_propose_commands(sweep):
    spec, outcome = sweep
    runner = CliRunner()
    app = get_app()
    r = runner.invoke(app, ["status", str(outcome.sweep_dir), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["counts"] == {"finished": 6}
    assert doc["flops_spent"] == pytest.approx(sum(t["planned_flops"] for t in doc["trials"]))
    r = runner.invoke(app, ["propose", str(outcome.sweep_dir), "--budget", "1e12", "--bootstrap", "20", "--json"])
    assert r.exit_code == 0, r.output
    (prop,) = json.loads(r.stdout)
    assert {"budget", "N", "D", "lr", "batch", "predicted_loss"} <= set(prop)
    assert prop["budget"] == 1e12 and prop["lr"] == 0.003 and prop["batch"] == 1024
