"""Shared helpers of the integration tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from orchestrator.api import EXAMPLE_SPEC
from orchestrator.spec import parse_spec

# The API's example spec (a simulated sweep of 6 trials that ends in seconds), for the API and
# submission tests.
SIM_SPEC = {**EXAMPLE_SPEC, "name": "sim", "fit": {"bootstrap": 20}}


def run_real_sweep(root: Path, data: dict, name: str):
    """Write `data` as ROOT/spec.yaml, run it through the real controller on a fresh 2-CPU local
    Ray cluster (sweep dir ROOT/NAME), shut Ray down; return (spec, outcome)."""
    import ray

    from orchestrator.controller import run_sweep

    data = dict(data, output_dir=str(root / name))
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    spec = parse_spec(data)
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)
    try:
        outcome = run_sweep(spec, str(spec_path), show_progress=False)
    finally:
        ray.shutdown()
    return spec, outcome


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` subprocess on loopback, killable and restartable."""

    def __init__(self, db: Path, artifacts: Path, port: int, log: Path):
        self.cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                    f"sqlite:///{db}", "--artifacts-destination", str(artifacts),
                    "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> float:
        t0 = time.monotonic()
        with open(self.log, "ab") as out:
            # Own session: the server spawns uvicorn workers; killpg takes them all.
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        while time.monotonic() - t0 < timeout:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"mlflow server did not come up: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None
