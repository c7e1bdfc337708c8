"""`search.strategy: transfer` through the real controller: Ray Tune, the store and MLflow see the
trials the search plans off the grid (law points), and the proposal uses the learned laws."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.app import replay_cache

from orchestrator.config.trials import plan_grid
from orchestrator.config.trials import batch_ladder
from orchestrator.io.store import ObservationStore
from orchestrator.io.tracking import TAG_TRIAL, read_sweep_runs
from tests.integration.conftest import run_real_sweep

SPEC = {
    "name": "transfer",
    "model": {"n_params": [14000, 44000, 140000, 440000], "seq_len": 128},
    "tokens": {"per_param": [5, 20, 80]},
    "learning_rates": [0.003, 0.01, 0.03, 0.1],
    "batch_sizes": [1280, 5632],
    "trainer": {"backend": "simulated", "world": "tiny"},
    "eval": {"every": 100000, "tokens": 2097152},
    "budget": {"targets": [3e15]},
    "fit": {"bootstrap": 0},
    "search": {"strategy": "transfer"},
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, local_ray):
    return run_real_sweep(tmp_path_factory.mktemp("transfer"), SPEC, "sweep", local_ray=local_ray)


def test_law_points_run_through_tune_store_and_mlflow(sweep):
    spec, outcome = sweep
    store = ObservationStore(outcome.sweep_dir)
    trials = store.trials()
    init = sorted(spec.model.sizes())[: spec.search.init_sizes]
    ladder = plan_grid(spec, batch_ladder(spec, spec.search.batch_ladder))
    assert any(t.batch not in spec.batches() for t in ladder)
    assert {rec["config"]["n_target"] for rec in trials.values()} >= set(init)
    # the initial design searched the ladder's batches; the later cells ran at learned points
    off_grid = {tid: rec for tid, rec in trials.items() if rec["config"]["n_target"] not in init}
    assert off_grid, "the search never left the initial design"
    grid = {t.trial_id for t in plan_grid(spec)}
    assert all(tid not in grid and rec["status"] == "finished" for tid, rec in off_grid.items())
    last = store.last_reports(finite="eval_loss")
    assert set(off_grid) <= set(last)  # every law point reported its losses to the store
    _, children = read_sweep_runs(spec.tracking_uri(), spec.name)
    assert set(off_grid) <= {c.data.tags[TAG_TRIAL] for c in children}, "a law-point trial has no MLflow child run"


def test_decisions_explain_the_transfer_and_the_stop(sweep):
    spec, outcome = sweep
    parent, _ = read_sweep_runs(spec.tracking_uri(), spec.name)
    client = MlflowClient(spec.tracking_uri())
    folder = client.download_artifacts(parent.info.run_id, "results")
    decisions = json.loads(open(f"{folder}/decisions.json").read())
    whys = [d["why"] for d in decisions]
    assert any(w.startswith("transfer: the learned law's point") for w in whys)
    assert any(w.startswith("initial design") for w in whys)
    assert decisions[-1]["action"] == "stop" and decisions[-1]["why"]


def test_proposal_uses_the_learned_laws(sweep):
    _, outcome = sweep
    (p,) = outcome.fit.proposals
    assert p["hparams_from"] == "learned laws lr*(N, D), batch*(D)"
    assert p["lr"] > 0 and p["batch"] > 0 and p["N"] > 0
    for name in ("lr", "batch"):  # the learned laws' own uncertainty at (N*, D*)
        assert p["intervals"][name]["low"] < p[name] < p["intervals"][name]["high"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    """`scalesweep ARGS` in a process of its own (nothing of this test's imports or patches)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-m", "orchestrator.app.cli", *args], capture_output=True, text=True,
                       timeout=240, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_the_first_query_reads_the_live_search_a_changed_store_replays(sweep, tmp_path):
    """Issue 17: the sweep caches its own search at its end (`query.save_live_search`), so the first
    `propose` and `status` after it replay nothing and answer with the live laws and end reason; a
    store changed since means a replay, which rewrites the cache."""
    spec, outcome = sweep
    cache = outcome.sweep_dir / replay_cache.CACHE_FILE
    written = cache.read_bytes()
    doc = json.loads(written)
    assert doc["source"] == "live" and doc["done"] and doc["next_trials"] == []
    parent, _ = read_sweep_runs(spec.tracking_uri(), spec.name)
    folder = MlflowClient(spec.tracking_uri()).download_artifacts(parent.info.run_id, "results", str(tmp_path))
    stop = json.loads(Path(folder, "decisions.json").read_text())[-1]
    assert stop["action"] == "stop" and stop["why"].startswith(doc["done"])  # the live search's reason

    fit_json = json.loads((outcome.sweep_dir / "fit.json").read_text())
    budgets = [f"{c:g}" for c in spec.budget.targets]
    r = _cli("propose", str(outcome.sweep_dir), "--json", *(a for c in budgets for a in ("--budget", c)))
    proposed = json.loads(r.stdout)
    for cli, live in zip(proposed, fit_json["proposals"], strict=True):
        for key in ("N", "D", "predicted_loss", "lr", "batch"):  # the live laws, to the bit
            assert cli[key] == live[key], key
        assert cli["intervals"]["lr"] == live["intervals"]["lr"]
    r = _cli("status", str(outcome.sweep_dir))
    assert f"search (transfer): ended: {doc['done']}" in r.stdout.splitlines()
    assert cache.read_bytes() == written  # read, not replayed (a replay writes its own: source "replay")

    copy = tmp_path / "copy"  # the same sweep with one more ended trial: the cache is stale
    shutil.copytree(outcome.sweep_dir, copy, ignore=shutil.ignore_patterns("ray", "mlartifacts", "checkpoints"))
    recorded = yaml.safe_load((copy / "spec.yaml").read_text())
    (copy / "spec.yaml").write_text(yaml.safe_dump({**recorded, "output_dir": str(copy)}))
    store = ObservationStore(copy, fsync=False)
    store.append("extra-trial", {"step": 1, "tokens": 1e6, "flops": 6e10, "eval_loss": 3.0, "done": 1.0})
    store.set_status("extra-trial", "diverged", config={"N": 10000, "D": 1e6, "lr": 0.3, "batch": 1024})
    store.close()
    r = _cli("status", str(copy))
    replayed = json.loads((copy / replay_cache.CACHE_FILE).read_text())
    assert replayed["source"] == "replay" and replayed["key"] != doc["key"]
    assert f"search (transfer): ended: {replayed['done']}" in r.stdout.splitlines()


def test_a_stopped_sweep_caches_the_search_a_resume_rebuilds(sweep, tmp_path):
    """Issue 17: a law/transfer sweep that was stopped (or failed) caches its search at its end path too, so its
    first query does not replay; the cache is the store's replay (what a resume continues from: a trial the
    stop left unended is one to start again), not the live planner, which has handed it out already."""
    from orchestrator.app.stopping import StopRequest, finish_interrupted

    spec, outcome = sweep
    copy = tmp_path / "stopped"  # the sweep as if stopped while its last trial ran
    shutil.copytree(outcome.sweep_dir, copy, ignore=shutil.ignore_patterns("ray", "mlartifacts", "checkpoints",
                                                                           replay_cache.CACHE_FILE))
    recorded = yaml.safe_load((copy / "spec.yaml").read_text())
    (copy / "spec.yaml").write_text(yaml.safe_dump({**recorded, "output_dir": str(copy)}))
    store = ObservationStore(copy, fsync=False)
    last = max(store.trials().items(), key=lambda kv: kv[1].get("time") or 0)[0]
    store.set_status(last, "running")
    stash = {"stop": StopRequest(copy / "stop-requested"), "store": store}
    stash["stop"].request("SIGINT")
    finish_interrupted(stash, copy)  # marks it stopped-by-user, then caches the search
    store.close()
    assert ObservationStore(copy).trials()[last]["status"] == "stopped-by-user"
    cache = copy / replay_cache.CACHE_FILE
    written = cache.read_bytes()
    doc = json.loads(written)
    assert doc["source"] == "replay"
    r = _cli("status", str(copy))
    assert cache.read_bytes() == written  # the first query read it: no replay rewrote it
    cache.unlink()  # the query's own replay answers the same, under the same key
    assert _cli("status", str(copy)).stdout == r.stdout
    again = json.loads(cache.read_bytes())
    assert (again["key"], again["next_trials"], again["done"]) == (doc["key"], doc["next_trials"], doc["done"])
