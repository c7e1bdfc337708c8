"""The sweep's end on its MLflow parent run, from a recorded real sweep (tests/data/sweep_plots: 5 lr x 3
batches per cell, so the lr*(N, D) and batch*(D) laws fit): `summarise` run twice, as a sweep and its
resume do, then the store opened with MlflowClient. Every law, L(N, D) and the hyperparameter laws, is
a metric per refit with its interval (`law.<p>.low/.high`, `hparam.<law>.<p>.low/.high`), and the latest
point is what fit.json and summary.md say. Figures are left out here (test_plots.py checks them).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

SWEEP = Path(__file__).resolve().parents[2] / "data" / "sweep_plots"


@pytest.fixture(scope="module")
def summarised(tmp_path_factory):
    from orchestrator.app import outcome
    from orchestrator.app.plots import evidence
    from orchestrator.config.spec import load_spec
    from orchestrator.io.store import ObservationStore
    from orchestrator.io.tracking import SweepTracker

    where = tmp_path_factory.mktemp("summary") / "plots"
    shutil.copytree(SWEEP, where)
    spec = load_spec(where / "spec.yaml").model_copy(update={"output_dir": str(where)})
    store = ObservationStore(where)
    uri = f"sqlite:///{where / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setattr(evidence, "sweep_figures", lambda *a, **k: {})  # drawing is test_plots.py's; not needed here
    try:
        with SweepTracker(uri, None, spec.name, flush_interval_s=0.05, client_process=False) as tracker:
            parent = tracker.start({"name": spec.name})
            for _ in range(2):  # the sweep's end, then its resume's
                outcome.summarise(spec, store, tracker, parent, time.monotonic() - 1.0)
            assert tracker.flush(timeout=60)
    finally:
        mp.undo()
    return where, uri, parent, spec


def test_every_law_and_its_intervals_are_metrics_per_refit(summarised):
    from orchestrator.app.sweep_summary import HPARAM_PARAMS

    where, uri, pid, spec = summarised
    client = MlflowClient(uri)
    run = client.get_run(pid)
    law = json.loads((where / "fit.json").read_text())["law"]
    ivs = {p: iv for p, iv in law["intervals"].items() if p in law["params"]}
    assert ivs  # fit.bootstrap 20: the chosen form's parameters have intervals
    for p in law["params"]:
        keys = [f"law.{p}"] + ([f"law.{p}.low", f"law.{p}.high"] if p in ivs else [])
        for key in keys:
            assert sorted(m.step for m in client.get_metric_history(pid, key)) == [0, 1], key
        if p in ivs:
            assert run.data.metrics[f"law.{p}.low"] == pytest.approx(ivs[p]["low"])
            assert run.data.metrics[f"law.{p}.high"] == pytest.approx(ivs[p]["high"])
    # the hyperparameter laws the bowls draw and the proposals use (no search chose them here), per refit
    for group, names in HPARAM_PARAMS.items():
        for name in names:
            for key in (f"hparam.{group}.{name}", f"hparam.{group}.{name}.low", f"hparam.{group}.{name}.high"):
                assert sorted(m.step for m in client.get_metric_history(pid, key)) == [0, 1], key
            low, mid, high = (run.data.metrics[f"hparam.{group}.{name}{s}"] for s in (".low", "", ".high"))
            assert low < mid < high, (group, name)
    # the proposals' lr and batch are these laws at (N*, D*)
    m = run.data.metrics
    for p in json.loads((where / "fit.json").read_text())["proposals"]:
        assert p["hparams_from"].startswith("learned")
        lr = m["hparam.lr.coef"] * p["N"] ** m["hparam.lr.N_exp"] * p["D"] ** m["hparam.lr.D_exp"]
        assert p["lr"] == pytest.approx(lr, rel=1e-6)
        assert p["batch"] == pytest.approx(m["hparam.batch.coef"] * p["D"] ** m["hparam.batch.D_exp"], rel=1e-6)


def test_summary_md_states_the_laws_with_their_interval_level(summarised):
    from orchestrator.app.sweep_summary import hparam_formulas

    where, uri, pid, spec = summarised
    client = MlflowClient(uri)
    md = Path(client.download_artifacts(pid, "summary.md", str(where))).read_text()
    m = client.get_run(pid).data.metrics
    hp = {"lr": {k: m[f"hparam.lr.{k}"] for k in ("coef", "N_exp", "D_exp")},
          "batch": {k: m[f"hparam.batch.{k}"] for k in ("coef", "D_exp")}}
    formulas = hparam_formulas(hp)
    assert "## Hyperparameter laws" in md and formulas["lr"] in md and formulas["batch"] in md
    level = f"{spec.fit.level:.0%}"
    # both parameter tables (L(N, D)'s, the hyperparameter laws') name their level
    assert md.count(f"| parameter | value | {level} interval |") == 2, md
    iv = (m["hparam.lr.N_exp.low"], m["hparam.lr.N_exp.high"])
    assert f"| lr.N_exp | {m['hparam.lr.N_exp']:.4g} | [{iv[0]:.4g}, {iv[1]:.4g}] |" in md


def test_sweep_summary_doctests():
    import doctest

    from orchestrator.app import sweep_summary

    result = doctest.testmod(sweep_summary)
    assert result.failed == 0 and result.attempted >= 10, result
