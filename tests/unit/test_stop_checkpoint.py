"""Checkpoint on a user's stop, the pieces without Ray: the trial reporter raises StopRequested only
after a report was sent once the stop file exists; the simulated trainer saves its checkpoint at
the step just reported and a resumed run continues after it with the same reports; the stopper
waits for trials that checkpoint by themselves, up to its timeout.
(The whole path on a real Ray cluster: tests/integration/test_checkpoint_on_stop.py.)"""
from __future__ import annotations

import json
import time

import pytest

from orchestrator.tune.callback import ContractStopper
from orchestrator.tune.envelope import TrialEnvelope
from orchestrator.tune.trainable import _reporter
from trainers.contract import StopRequested, TrialConfig
from trainers.simulated import CHECKPOINT_FILE, train


def _config(tmp_path, **kw) -> TrialConfig:
    return TrialConfig(trial_id="t", n_params=20000, tokens=8192 * 40, lr=0.01, batch_tokens=8192, seq_len=128,
                       eval_every=4, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=1000, **kw)


def test_reporter_raises_after_the_report_once_the_stop_file_exists(tmp_path):
    stop_file = tmp_path / "stop-requested"
    sent = []
    report = _reporter(TrialEnvelope(_config(tmp_path), stop_file=str(stop_file)), sent.append)
    report({"step": 1.0})
    stop_file.write_text("SIGTERM\n")
    with pytest.raises(StopRequested):
        report({"step": 2.0})
    assert sent == [{"step": 1.0}, {"step": 2.0}]  # the report went out before the stop
    assert isinstance(StopRequested(), SystemExit)  # `except Exception` in a trainer does not swallow it


def test_simulated_trial_checkpoints_on_stop_and_resumes_after_it(tmp_path):
    cfg = _config(tmp_path)
    full = []
    train(_config(tmp_path / "full"), full.append)
    steps = [int(r["step"]) for r in full]
    assert steps == list(range(4, 41, 4))

    first = []

    def stop_after_three(r):
        first.append(r)
        if len(first) == 3:
            raise StopRequested("stop")

    with pytest.raises(StopRequested):
        train(cfg, stop_after_three)
    # checkpoints.every is past the end: only the stop wrote this one, at the last step reported
    assert json.loads((tmp_path / "ckpt" / CHECKPOINT_FILE).read_text()) == {"step": 12}

    rest = []
    train(cfg, rest.append)
    assert [int(r["step"]) for r in rest] == steps[3:]  # continued after step 12, not from 0
    assert first + rest == full  # the same reports as an uninterrupted run


class _Callback:
    def __init__(self):
        self.contract_errors: dict = {}
        self.checkpointing: set = {"a"}
        self.stopping = False

    def interrupted(self) -> bool:
        return self.stopping


def test_stopper_waits_for_checkpointing_trials_up_to_its_timeout():
    cb = _Callback()
    at = {"t": None}
    stopper = ContractStopper(cb, stop_timeout_s=30.0, requested_at=lambda: at["t"])
    assert not stopper.stop_all()
    cb.stopping, at["t"] = True, time.monotonic()
    assert not stopper.stop_all()  # trial "a" will checkpoint and end by itself
    cb.checkpointing.clear()
    assert stopper.stop_all()  # it has ended: Tune stops the rest
    cb.checkpointing.add("b")
    at["t"] = time.monotonic() - 31.0
    assert stopper.stop_all()  # past the timeout: stopped where they are
