"""How the CLI reports a sweep that failed after it started, and the one-line error form
(the failure itself, on a real sweep: tests/integration/test_failed_sweep.py)."""
from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from orchestrator.app.cli import get_app
from orchestrator.app.session import SweepFailed, one_line

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "simulated.yaml"


def test_one_line_is_one_line_and_bounded():
    assert one_line(ValueError("first\nsecond")) == "ValueError: first"
    assert one_line(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert len(one_line(RuntimeError("x" * 1000))) == 300


def test_cli_prints_one_line_and_exits_1(tmp_path, monkeypatch):
    import orchestrator.app.capacity as capacity
    import orchestrator.app.session as controller

    data = yaml.safe_load(EXAMPLE.read_text())
    data["output_dir"] = str(tmp_path / "sweep")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    log = tmp_path / "sweep" / "error.log"

    def failing(s, spec_path, show_progress=True):
        # what run_sweep raises once it has ended the parent run FAILED and written the log
        raise SweepFailed("KeyError: \"missing column 'C'\"", log)

    monkeypatch.setattr(controller, "run_sweep", failing)
    monkeypatch.setattr(capacity, "local_capacity", lambda gpus=True: (2.0, 0.0))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    r = CliRunner().invoke(get_app(), ["run", str(spec), "--no-progress"])
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0] == f"starting the sweep in {tmp_path / 'sweep'}", r.output
    assert lines[1].startswith("error: sweep simulated failed: KeyError")
    assert f"traceback in {log}" in lines[1] and f"scalesweep resume {tmp_path / 'sweep'}" in lines[1]


def test_an_error_before_the_start_is_one_line_too(tmp_path, monkeypatch):
    import orchestrator.app.capacity as capacity
    import orchestrator.app.session as controller

    data = yaml.safe_load(EXAMPLE.read_text())
    data["output_dir"] = str(tmp_path / "sweep")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))

    def failing(s, spec_path, show_progress=True):
        raise RuntimeError("Failed to start the GCS\nmore detail")  # e.g. Ray cannot start

    monkeypatch.setattr(controller, "run_sweep", failing)
    monkeypatch.setattr(capacity, "local_capacity", lambda gpus=True: (2.0, 0.0))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("SCALESWEEP_TRACEBACK", raising=False)
    r = CliRunner().invoke(get_app(), ["run", str(spec), "--no-progress"])
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert lines == [f"starting the sweep in {tmp_path / 'sweep'}",
                     "error: sweep simulated could not start: RuntimeError: Failed to start the GCS (nothing was "
                     "run; set SCALESWEEP_TRACEBACK=1 for the traceback)"], r.output
