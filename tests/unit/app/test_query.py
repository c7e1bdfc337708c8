"""One query path (orchestrator/app/query.py): `scalesweep propose|status|validate`, the HTTP API and the
controller's fit.json answer the same question the same way, with the spec's fit settings."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from orchestrator.app.api import create_app
from orchestrator.app.cli import get_app
from orchestrator.core.laws.chinchilla import ChinchillaLaw
from orchestrator.config.trials import plan_grid
from orchestrator.config.spec import load_spec
from orchestrator.io.store import ObservationStore

TRUTH = ChinchillaLaw(E=1.8172, A=19.5815, B=71.7777, alpha=0.3478, beta=0.3658)  # the tiny world's L(N, D)
SIZES = [20_000, 60_000, 200_000, 600_000]
TOKENS = [400_000, 1_600_000, 6_400_000, 25_600_000]
TARGET = 1e15
runner = CliRunner()


def _plant(root: Path, fit: dict, noise: float = 0.0) -> Path:
    """ROOT/planted: one finished trial per (N, D) cell on the truth (plus seeded noise), its spec's `fit`."""
    d = root / "planted"
    d.mkdir()
    spec = {"name": "planted", "model": {"n_params": SIZES}, "tokens": {"values": TOKENS},
            "learning_rates": [0.01], "batch_sizes": [8192], "trainer": {"backend": "simulated"},
            "budget": {"targets": [TARGET]}, "fit": fit, "output_dir": str(d)}
    (d / "spec.yaml").write_text(yaml.safe_dump(spec))
    store = ObservationStore(d)
    rng = np.random.default_rng(0)
    for n in SIZES:
        for D in TOKENS:
            loss = float(TRUTH.predict(n, D)) * math.exp(noise * rng.standard_normal())
            tid = f"N{n}-D{D}"
            store.append(tid, {"step": 1, "tokens": D, "flops": 6.0 * n * D, "eval_loss": loss, "done": True})
            store.set_status(tid, "finished", config={"N": n, "D": D, "lr": 0.01, "batch": 8192, "seed": 0,
                                                      "flops": 6.0 * n * D})
    store.close()
    return d


def _cli_proposals(d, *budgets: float) -> list[dict]:
    args = ["propose", str(d), "--json"] + [a for c in budgets for a in ("--budget", str(c))]
    r = runner.invoke(get_app(), args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_a_non_default_fit_setting_gives_the_same_answer_on_every_surface(tmp_path):
    # noisy cells: the asymmetric (frontier) objective and Huber then disagree, so an ignored setting shows
    fit = {"law": "chinchilla", "loss": "asymmetric", "bootstrap": 0}
    d = _plant(tmp_path, fit, noise=0.02)
    cli = _cli_proposals(d, TARGET)
    with TestClient(create_app(tmp_path, launch=False)) as client:
        r = client.get("/sweeps/planted/proposals", params={"budget": TARGET})
        assert r.status_code == 200, r.text
        api = r.json()
    from orchestrator.app.outcome import summarise

    summarise(load_spec(d / "spec.yaml"), ObservationStore(d), None, None, time.monotonic())
    fit_json = json.loads((d / "fit.json").read_text())["proposals"]
    for key in ("N", "D", "predicted_loss", "lr", "batch"):
        assert cli[0][key] == api[0][key] == fit_json[0][key], key
    assert cli[0]["intervals"] == api[0]["intervals"] == fit_json[0]["intervals"]
    # the setting matters on these data: the default objective answers otherwise
    (d / "spec.yaml").write_text(yaml.safe_dump({**yaml.safe_load((d / "spec.yaml").read_text()),
                                                 "fit": {"law": "chinchilla", "bootstrap": 0}}))
    huber = _cli_proposals(d, TARGET)
    assert huber[0]["predicted_loss"] != pytest.approx(cli[0]["predicted_loss"], rel=1e-6)


@pytest.mark.parametrize("budget", [1e7, 1e30])
def test_propose_refuses_budgets_outside_the_family_as_the_api_does(tmp_path, budget):
    d = _plant(tmp_path, {"law": "chinchilla", "bootstrap": 0})
    r = runner.invoke(get_app(), ["propose", str(d), "--budget", str(budget)])
    assert r.exit_code == 2, r.output
    with TestClient(create_app(tmp_path, launch=False)) as client:
        api = client.get("/sweeps/planted/proposals", params={"budget": budget})
    assert api.status_code == 422
    assert r.stderr.strip() == f"error: {api.json()['detail']}"
    assert ("smallest" if budget < 1e12 else "largest") in r.stderr


def test_propose_in_range_still_answers(tmp_path):
    d = _plant(tmp_path, {"law": "chinchilla", "bootstrap": 0})
    (p,) = _cli_proposals(d, TARGET)
    truth = TRUTH.frontier([TARGET])
    assert p["N"] == pytest.approx(truth["N_opt"][0], rel=0.02)


def _branched_sweep(tmp_path):
    """A WSD grid sweep interrupted part-way: one trunk and its branch finished, one trial pruned, one
    diverged, one running, one pending, the rest never started."""
    spec = {"name": "wsd", "model": {"n_params": [20_000, 60_000]}, "tokens": {"per_param": [10, 20, 40]},
            "learning_rates": [0.01, 0.03], "batch_sizes": [8192], "schedule": {"kind": "wsd", "branch": True},
            "trainer": {"backend": "simulated"}, "fit": {"bootstrap": 0}, "output_dir": str(tmp_path / "wsd")}
    d = tmp_path / "wsd"
    d.mkdir()
    (d / "spec.yaml").write_text(yaml.safe_dump(spec))
    grid = plan_grid(load_spec(d / "spec.yaml"))
    branch = next(t for t in grid if t.branch_of)
    trunk = next(t for t in grid if t.trial_id == branch.branch_of)
    others = [t for t in grid if t.trial_id not in (branch.trial_id, trunk.trial_id)][:4]
    store = ObservationStore(d)
    spent = 0.0
    # a branch's reports count its trunk's FLOPs up to the branch point: it spent only its own
    for t, status in ((trunk, "finished"), (branch, "finished"), *zip(others, ("stopped", "diverged", "running",
                                                                              "planned"))):
        if status != "planned":
            store.append(t.trial_id, {"step": 1, "tokens": t.D, "flops": t.flops + t.branch_flops, "eval_loss": 3.0})
            spent += t.flops
        store.set_status(t.trial_id, status, config=t.record())
    store.close()
    assert branch.branch_flops > 0
    return d, grid, spent


def test_status_counts_branches_from_their_branch_point_and_names_every_state(tmp_path):
    d, grid, spent = _branched_sweep(tmp_path)
    r = runner.invoke(get_app(), ["status", str(d), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["flops_spent"] == pytest.approx(spent, rel=1e-12)
    assert doc["counts"] == {"finished": 2, "stopped": 1, "diverged": 1, "running": 1, "planned": 1}
    assert doc["never_started"] == len(grid) - 6
    r = runner.invoke(get_app(), ["status", str(d)])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    for words in ("1 pending", "1 running", "2 finished", "1 pruned", "1 diverged", f"{len(grid) - 6} never started"):
        assert words in text, words
    assert f"compute used: {spent:.3g} FLOPs" in text
    # the API accounts the same
    with TestClient(create_app(tmp_path, launch=False)) as client:
        assert client.get("/sweeps/wsd").json()["flops_spent"] == pytest.approx(spent, rel=1e-12)


def test_validate_lists_the_trials_per_size_and_each_with_trials(tmp_path):
    spec = {"name": "v", "model": {"n_params": [20_000, 60_000]}, "tokens": {"per_param": [10, 20]},
            "learning_rates": [0.01, 0.03], "batch_sizes": [8192], "trainer": {"backend": "simulated"},
            "output_dir": str(tmp_path / "v")}
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(spec))
    grid = plan_grid(load_spec(path))
    r = runner.invoke(get_app(), ["validate", str(path)])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    for n in sorted({t.N for t in grid}):
        row = next(line for line in lines if f"{n:,}" in line and "│" in line)
        assert f" {sum(t.N == n for t in grid)} " in row  # its trial count
    r = runner.invoke(get_app(), ["validate", str(path), "--trials"])
    assert r.exit_code == 0, r.output
    assert all(t.trial_id in r.stdout for t in grid)
    assert not (tmp_path / "v").exists()  # validate starts and writes nothing


@pytest.mark.parametrize("name", ["orchestrator.app.query", "orchestrator.app.api.auth", "orchestrator.app.api.schemas",
                                  "orchestrator.app.api.submission", "orchestrator.app.api.supervisor"])
def test_docstring_examples_hold(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, report=False)
    assert result.attempted > 0 and result.failed == 0, (name, result)
