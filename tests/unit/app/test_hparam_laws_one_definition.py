"""One definition of a sweep's lr*(N, D) and batch*(D): the HTTP API's /laws, the CLI's proposals, the
sweep's summary and MLflow metrics, and the report give the same law (`query.hparam_laws`), on the
recorded sweep tests/data/sweep_plots (was: /laws fitted the Step-Law protocol, lr D exponent 0.524,
while the rest used the joint surface, 0.222)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

SWEEP = Path(__file__).resolve().parents[2] / "data" / "sweep_plots"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The recorded sweep as an API root holds it: ROOT/plots/{spec.yaml, store}."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(SWEEP / "store", root / "plots" / "store")
    shutil.copy(SWEEP / "spec.yaml", root / "plots" / "spec.yaml")
    return root


@pytest.mark.timeout(300)
def test_api_cli_summary_and_report_state_one_hparam_law(recorded):
    from orchestrator.app.api import create_app
    from orchestrator.app.cli import get_app
    from orchestrator.app.outcome import _hparam_laws
    from orchestrator.app.query import SweepData
    from orchestrator.app.report import hparam_laws as report_laws
    from orchestrator.app.sweep_summary import HPARAM_PARAMS, hparam_formulas, law_metrics, summary_markdown
    from orchestrator.config.spec import load_spec
    from orchestrator.io.store import ObservationStore

    with TestClient(create_app(recorded, launch=False)) as client:
        r = client.get("/sweeps/plots/laws", params={"bootstrap": 0})
    assert r.status_code == 200, r.text
    api = r.json()["hparams"]
    assert api is not None, r.json()["hparams_reason"]
    assert api["method"] == "SurfaceFit"  # 5 lr x 3 batches per cell: the joint surface fits

    spec = load_spec(recorded / "plots" / "spec.yaml")
    store = ObservationStore(recorded / "plots")
    summary = _hparam_laws(SweepData.read(store), spec.fit.level)  # what summary.md and MLflow get
    report = report_laws(store.trials(), store, spec.fit.level)
    for other in (summary, report):
        for group, names in HPARAM_PARAMS.items():
            for name in names:
                assert other[group][name] == pytest.approx(api[group][name], rel=1e-9), (group, name)
    metrics = law_metrics({}, summary)
    assert metrics["hparam.lr.D_exp"] == pytest.approx(api["lr"]["D_exp"], rel=1e-9)
    md = summary_markdown(spec.name, {"law": None, "proposals": []}, {"finished": 1}, None, summary)
    assert hparam_formulas(api)["lr"] in md

    # the CLI's proposals (fit.json's path) take lr and batch from that law at (N*, D*)
    out = CliRunner().invoke(get_app(), ["propose", str(recorded / "plots"), "--budget", "1e13", "--bootstrap", "0",
                                   "--json"])
    assert out.exit_code == 0, out.output
    (p,) = json.loads(out.output)
    lr, b = api["lr"], api["batch"]
    assert p["lr"] == pytest.approx(lr["coef"] * p["N"] ** lr["N_exp"] * p["D"] ** lr["D_exp"], rel=1e-6)
    assert p["batch"] == pytest.approx(b["coef"] * p["D"] ** b["D_exp"], rel=1e-6)
