"""A `command` trainer's attempt folders (config, metrics, logs, exit.json) copied to the bucket
(a sweep whose store is on S3: `runs/<trial>/attempt-k`), against moto's S3 server on loopback: an
attempt that crashes on one node and its restart on another leave both folders in the bucket, and
the restart is numbered after the first (attempt-1), though its node has no local run folder; the
same through the real controller with `store: s3://...` (Tune's restart after the crash).

Skipped only when moto's server or boto3 is not installed (both in the `test` extra).
"""
from __future__ import annotations

import json
import sys

import pytest

from orchestrator.io.store import ObservationStore
from tests.integration.services import s3_bucket
from tests.integration.test_s3_checkpoints import PROGRAM, _object
from tests.integration.test_s3_store import BUCKET, _keys
from trainers.contract import TrialConfig

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(tmp_path, monkeypatch):
    with s3_bucket(tmp_path / "moto.log", BUCKET, monkeypatch) as server:
        yield server


def test_command_attempt_folders_reach_the_bucket_from_every_node(s3, tmp_path):
    from trainers.command import CommandSettings, TrainerProcessError, run_command

    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)  # crashes in attempt 0 after its step-2 checkpoint, then continues from it
    settings = CommandSettings(command=(sys.executable, str(prog), "{config}"), cwd=str(tmp_path))
    root = f"s3://{BUCKET}/sweeps/runs"
    runs = f"{root}/runs/c1"

    def on(node: str) -> TrialConfig:
        return TrialConfig("c1", n_params=1000, tokens=4 * 256, lr=1e-3, batch_tokens=256, seq_len=64,
                           checkpoint_dir=str(tmp_path / node / "ck"), checkpoint_mirror=f"{root}/checkpoints/c1")

    got: list = []
    with pytest.raises(TrainerProcessError, match="exit status 3"):
        run_command(on("a"), got.append, settings, tmp_path / "a" / "run", n_params=1000, run_mirror=runs)
    run_command(on("b"), got.append, settings, tmp_path / "b" / "run", n_params=1000, run_mirror=runs)
    assert [int(r["step"]) for r in got] == [1, 2, 3, 4]
    assert [p.name for p in (tmp_path / "b" / "run").iterdir()] == ["attempt-1"]  # numbered after node a's

    names = _keys(s3, "sweeps/runs/runs/c1/")
    for k in (0, 1):
        assert {f"attempt-{k}/{f}" for f in ("config.json", "metrics.jsonl", "stdout.log", "stderr.log",
                                             "exit.json")} <= set(names), names
    first = json.loads(_object(s3, "sweeps/runs/runs/c1/attempt-0/exit.json"))
    again = json.loads(_object(s3, "sweeps/runs/runs/c1/attempt-1/exit.json"))
    assert (first["returncode"], again["returncode"]) == (3, 0)
    assert json.loads(_object(s3, "sweeps/runs/runs/c1/attempt-1/config.json"))["attempt"] == 1
    metrics = _object(s3, "sweeps/runs/runs/c1/attempt-1/metrics.jsonl").decode().splitlines()
    assert [json.loads(m)["step"] for m in metrics] == [3, 4]  # the restart's own reports, from its checkpoint


@pytest.mark.serial  # its own Ray cluster
def test_a_command_sweep_on_s3_keeps_every_attempt_folder_in_the_bucket(s3, tmp_path):
    """Through the real controller (`store: s3://...`): the first attempt crashes after step 2, Tune
    restarts the trial, and both attempts' folders are in the bucket under runs/<trial>/."""
    from tests.integration.conftest import run_real_sweep

    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    data = {"name": "cmd-runs", "model": {"n_params": [20000], "seq_len": 64}, "tokens": {"values": [1024]},
            "learning_rates": [1e-3], "batch_sizes": [256], "fit": {"bootstrap": 0},
            "store": f"s3://{BUCKET}/sweeps/cmd-runs",
            "trainer": {"backend": "command", "cwd": str(tmp_path), "command": ["{python}", str(prog), "{config}"]}}
    _, outcome = run_real_sweep(tmp_path, data, "cmd-runs")
    assert outcome.statuses == {"finished": 1}, outcome.statuses
    (tid,) = ObservationStore(f"s3://{BUCKET}/sweeps/cmd-runs").trials()
    prefix = f"sweeps/cmd-runs/runs/{tid}/"
    names = _keys(s3, prefix)
    assert {"attempt-0/exit.json", "attempt-1/exit.json", "attempt-1/metrics.jsonl"} <= set(names), names
    assert json.loads(_object(s3, prefix + "attempt-0/exit.json"))["returncode"] == 3
    assert json.loads(_object(s3, prefix + "attempt-1/exit.json"))["returncode"] == 0
