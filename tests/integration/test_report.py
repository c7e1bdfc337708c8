"""`scalesweep report` on a real small sweep: conftest.py's `viewed_sweep` (simulated trainer, Ray
Tune on a 2-CPU local cluster, MLflow on SQLite; 18 trials, one learning rate of three diverging),
which test_sweep_view.py reads too. The sweep's end logs its figures to the parent run; the report
is one self-contained HTML page beside the sweep, logged to the same parent run. Nothing is mocked.
"""
from __future__ import annotations

import re

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.app.cli import get_app
from orchestrator.io.store import ObservationStore

pytestmark = pytest.mark.integration


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for a in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def _statuses(sweep_dir) -> dict[str, int]:
    out: dict[str, int] = {}
    for rec in ObservationStore(sweep_dir).trials().values():
        out[rec["status"]] = out.get(rec["status"], 0) + 1
    return out


def test_sweep_end_logs_the_figures_to_the_parent_run(viewed_sweep):
    spec, parent_run = viewed_sweep["spec"], viewed_sweep["parent_run"]
    assert _statuses(viewed_sweep["dir"]) == {"diverged": 6, "finished": 12}
    logged = _artifacts(MlflowClient(spec.tracking_uri()), parent_run)
    # what this sweep has to show: its runs and fit, and the pruner's record of the diverged lr (no branches)
    for name in ("loss_vs_compute", "isoflop", "pruner"):
        assert f"plots/{name}.png" in logged, logged
    assert "plots/wsd_branches.png" not in logged


def test_report_is_one_self_contained_page_logged_to_the_parent_run(viewed_sweep):
    spec, parent_run, sweep_dir = viewed_sweep["spec"], viewed_sweep["parent_run"], viewed_sweep["dir"]
    result = CliRunner().invoke(get_app(), ["report", str(sweep_dir), "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    page_path = sweep_dir / "report" / "index.html"
    assert f"report: {page_path}" in result.stdout
    page = page_path.read_text()
    for section in ("What ran", "Stopped early, diverged or failed, and why", "Laws", "Proposals", "Warnings",
                    "Figures", "Spec"):
        assert f"<h2>{section}</h2>" in page
    # what ran and why the others ended: 18 trials, the six diverged ones each with its recorded reason
    assert "18 trials: 6 diverged, 12 finished" in page
    assert page.count("non-finite loss") == 6
    # the law, the proposal at the spec's target with its interval and unit
    assert "Chosen law: <b>" in page and "At C = 1e+13 FLOPs: N* = " in page and "nats/token" in page
    # self-contained: every image is embedded, nothing is fetched from elsewhere
    images = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(images) >= 3 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    for png in (sweep_dir / "report" / "plots").iterdir():
        assert png.read_bytes().startswith(b"\x89PNG")
    logged = _artifacts(MlflowClient(spec.tracking_uri()), parent_run)
    assert "report/index.html" in logged and "report/plots/loss_vs_compute.png" in logged, logged
    assert f"logged to MLflow run {parent_run}" in result.stdout


def test_report_refuses_a_directory_that_is_not_a_sweep(tmp_path):
    result = CliRunner().invoke(get_app(), ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a sweep directory" in result.output
