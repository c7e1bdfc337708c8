"""The first line `scalesweep run` prints (the first line of a sweep's controller.log under
`scalesweep serve`): "starting the sweep in DIR" on a new directory and on one the API server
prepared (its spec.yaml and controller files, nothing run yet), "continuing the sweep in DIR (same
spec)" only once an earlier run left its state there (sweep.json). The sweep itself is not run:
`run_sweep` is replaced by a Ctrl-C before the start."""
from __future__ import annotations

from pathlib import Path

import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from orchestrator.app.cli import get_app

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "simulated.yaml"


def _first_line(spec: Path, monkeypatch) -> str:
    """The first line `scalesweep run SPEC` prints, with the run itself interrupted before it starts."""
    import orchestrator.app.capacity as capacity
    import orchestrator.app.session as controller

    def interrupted(s, spec_path, show_progress=True):
        raise KeyboardInterrupt

    monkeypatch.setattr(controller, "run_sweep", interrupted)
    monkeypatch.setattr(capacity, "local_capacity", lambda gpus=True: (2.0, 0.0))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    r = CliRunner().invoke(get_app(), ["run", str(spec), "--no-progress"])
    assert r.exit_code == 130, r.output
    return r.output.splitlines()[0]


def test_a_new_directory_starts_and_one_with_a_run_s_state_continues(tmp_path, monkeypatch):
    data = yaml.safe_load(EXAMPLE.read_text())
    data["output_dir"] = str(tmp_path / "sweep")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    assert _first_line(spec, monkeypatch) == f"starting the sweep in {tmp_path / 'sweep'}"
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "spec.yaml").write_text(yaml.safe_dump(data))  # as `run` records it before Ray starts
    assert _first_line(spec, monkeypatch) == f"starting the sweep in {tmp_path / 'sweep'}"
    (tmp_path / "sweep" / "sweep.json").write_text("{}")  # what every run writes before its first trial
    assert _first_line(spec, monkeypatch) == (f"continuing the sweep in {tmp_path / 'sweep'} (same spec); finished "
                                              "trials are not rerun")


def test_a_sweep_the_api_server_prepared_starts(tmp_path, monkeypatch):
    from orchestrator.app.api import create_app
    from orchestrator.app.api.supervisor import LOG_FILE

    root = tmp_path / "sweeps"
    root.mkdir()
    data = yaml.safe_load(EXAMPLE.read_text())
    data.pop("output_dir")
    with TestClient(create_app(root, launch=False)) as client:
        r = client.post("/sweeps", json=data)
    assert r.status_code == 202, r.text
    sweep_dir = root / data["name"]
    (sweep_dir / LOG_FILE).touch()  # where the server sends the controller's output (launch=False writes none)
    assert {p.name for p in sweep_dir.iterdir()} >= {"spec.yaml", "controller.json", LOG_FILE}
    # what the server's supervisor runs: `scalesweep run` on the spec it recorded
    assert _first_line(sweep_dir / "spec.yaml", monkeypatch) == f"starting the sweep in {sweep_dir}"
