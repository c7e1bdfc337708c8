"""The built-in trainer's 1-process group (`trainers.deepspeed_trainer.trial_process_group`) leaves the
process as it found it: torch's `init_process_group` wraps `sys.excepthook` to prefix `[rank0]: ` to
each traceback line and never unwraps it, so trials run one after another in one process (a reused
Ray actor) stacked one more prefix per trial. A real gloo group, twice in this process."""
from __future__ import annotations

import io
import sys

import pytest
import torch
import torch.distributed as dist

from trainers.deepspeed_trainer import trial_process_group


def _traceback_via_excepthook() -> str:
    """What the current excepthook writes to stderr for an uncaught exception."""
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        err, sys.stderr = sys.stderr, io.StringIO()
        try:
            sys.excepthook(type(exc), exc, exc.__traceback__)
            return sys.stderr.getvalue()
        finally:
            sys.stderr = err


@pytest.mark.skipif(not dist.is_available(), reason="torch without torch.distributed")
def test_two_trials_in_one_process_print_one_rank_prefix():
    assert not dist.is_initialized()
    original = sys.excepthook
    for trial in range(2):
        with trial_process_group(torch.device("cpu")) as created:
            assert created and dist.is_initialized() and dist.get_world_size() == 1
            lines = [line for line in _traceback_via_excepthook().splitlines() if line]
        assert lines and lines[-1].endswith("RuntimeError: boom"), lines
        assert all(line.startswith("[rank0]: ") and not line.startswith("[rank0]: [rank0]") for line in lines), \
            (trial, lines)
        assert not dist.is_initialized() and sys.excepthook is original
    assert "[rank" not in _traceback_via_excepthook()


def test_a_group_that_exists_is_left_alone(monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # someone else's group (Ray Train's)
    hook = sys.excepthook
    with trial_process_group(torch.device("cpu")) as created:
        assert created is False
    assert sys.excepthook is hook
