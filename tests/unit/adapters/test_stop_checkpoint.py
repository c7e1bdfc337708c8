"""Checkpoint on a user's stop, the pieces without Ray: the trial reporter raises StopRequested only
after a report was sent once the stop flag is up (read at most every poll_s); the simulated trainer saves its checkpoint at
the step just reported and a resumed run continues after it with the same reports; the stopper
waits for trials that checkpoint by themselves, up to its timeout.
(The whole path on a real Ray cluster: tests/integration/test_checkpoint_on_stop.py.)"""
from __future__ import annotations

import doctest
import json
import time

import pytest

from orchestrator.adapters.tune.callback import ContractStopper
from orchestrator.adapters.tune import stop_signal
from orchestrator.adapters.tune.envelope import TrialEnvelope
from orchestrator.adapters.tune.stop_signal import Watcher
from orchestrator.adapters.tune.trainable import _reporter
from trainers.contract import StopRequested, TrialConfig
from trainers.simulated import CHECKPOINT_FILE, train


def _config(tmp_path, **kw) -> TrialConfig:
    return TrialConfig(trial_id="t", n_params=20000, tokens=8192 * 40, lr=0.01, batch_tokens=8192, seq_len=128,
                       eval_every=4, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=1000, **kw)


def test_reporter_raises_after_the_report_once_the_stop_flag_is_up(tmp_path):
    flags: set = set()
    sent = []
    watch = Watcher("sweep/1", read=flags.__contains__, poll_s=0.0)
    report = _reporter(TrialEnvelope(_config(tmp_path), stop_key="sweep/1"), sent.append, stopped=watch)
    report({"step": 1.0})
    flags.add("sweep/2")  # another run's flag: not this one's
    report({"step": 2.0})
    flags.add("sweep/1")
    with pytest.raises(StopRequested):
        report({"step": 3.0})
    assert sent == [{"step": 1.0}, {"step": 2.0}, {"step": 3.0}]  # the report went out before the stop
    assert isinstance(StopRequested(), SystemExit)  # `except Exception` in a trainer does not swallow it


def test_the_flag_is_read_at_most_every_poll_s_and_stays_up():
    reads = []
    flag = {"up": False}
    watch = Watcher("k", read=lambda k: reads.append(k) or flag["up"], poll_s=3600.0)
    assert not watch() and not watch() and reads == []  # within poll_s of its creation: no GCS read
    watch.poll_s = 0.0
    assert not watch() and reads == ["k"]
    flag["up"] = True
    assert watch()
    flag["up"] = False
    assert watch() and len(reads) == 2  # once up, up: no further read


def test_stop_signal_doctests():
    assert doctest.testmod(stop_signal).failed == 0


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
