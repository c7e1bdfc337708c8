"""Graceful stop, the parts without Ray (the real sweep: tests/integration/test_graceful_stop.py):
real signals to this process, a real store, the real Tune callback driven with trial stand-ins."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")

from orchestrator.app.stopping import EXIT_CODES, StopRequest, SweepInterrupted, stop_requested  # noqa: E402
from orchestrator.app.tune_run import tune_env  # noqa: E402
from orchestrator.io.store import ended_trials  # noqa: E402
from orchestrator.app.progress import SweepProgress  # noqa: E402
from orchestrator.config.spec import parse_spec  # noqa: E402
from orchestrator.io.store import STOPPED_BY_USER, ObservationStore  # noqa: E402
from orchestrator.adapters.tune.callback import ContractStopper, SweepCallback  # noqa: E402
from orchestrator.adapters.tune.envelope import TrialEnvelope  # noqa: E402
from trainers.contract import TrialConfig  # noqa: E402


def _report(step: int, done: float, tokens: float) -> dict:
    return {"step": step, "tokens": tokens, "flops": 6.0 * 1000 * tokens, "lr": 1e-3, "train_loss": 3.0,
            "eval_loss": 3.1, "tokens_per_s": 1.0, "step_time_s": 0.1, "done": done}


def _callback(tmp_path: Path, interrupted):
    store = ObservationStore(tmp_path)
    records = {t: {"trial_id": t, "N": 1000, "D": 4096, "flops": 1.0} for t in ("a", "b", "c")}
    cb = SweepCallback(store, None, SweepProgress("s", 3, 3.0, None, enabled=False), records,
                       interrupted=interrupted)
    trials = {t: SimpleNamespace(trial_id=f"tune-{t}", error_file=None, local_path=None, config=TrialEnvelope(
        TrialConfig(t, n_params=1000, tokens=4096, lr=1e-3, batch_tokens=1024)).to_config()) for t in records}
    return store, cb, trials


def test_trials_ended_by_a_stop_request_are_stopped_by_user_and_resume_reruns_them(tmp_path):
    flag = {"on": False}
    store, cb, trials = _callback(tmp_path, lambda: flag["on"])
    assert not ContractStopper(cb).stop_all()
    for t in trials.values():
        cb.on_trial_start(0, [], t)
    cb.on_trial_result(0, [], trials["a"], _report(4, 1.0, 4096))  # ran to its planned tokens
    cb.on_trial_result(0, [], trials["b"], _report(2, 0.0, 2048))  # half way
    flag["on"] = True
    assert ContractStopper(cb).stop_all()  # Tune then stops every trial
    for t in trials.values():
        cb.on_trial_complete(0, [], t)
    states = {t: r["status"] for t, r in store.trials().items()}
    # a finished trial stays finished; one ended early, or before its first report, is the user's stop
    assert states == {"a": "finished", "b": STOPPED_BY_USER, "c": STOPPED_BY_USER}
    assert set(ended_trials(store)) == {"a"}  # resume reruns b and c


def test_without_a_stop_request_an_early_end_is_a_scheduler_stop(tmp_path):
    store, cb, trials = _callback(tmp_path, None)
    cb.on_trial_start(0, [], trials["b"])
    cb.on_trial_result(0, [], trials["b"], _report(2, 0.0, 2048))
    cb.on_trial_complete(0, [], trials["b"])
    cb.on_trial_start(0, [], trials["c"])
    cb.on_trial_error(0, [], trials["c"])
    states = {t: r["status"] for t, r in store.trials().items()}
    assert states == {"b": "stopped", "c": "failed"}


def test_a_trial_error_while_stopping_is_not_a_failure(tmp_path):
    store, cb, trials = _callback(tmp_path, lambda: True)
    cb.on_trial_start(0, [], trials["c"])
    cb.on_trial_error(0, [], trials["c"])
    assert store.trials()["c"]["status"] == STOPPED_BY_USER


def test_callback_pickles_with_its_stop_flag(tmp_path):
    import pickle

    _, cb, _ = _callback(tmp_path, stop_requested)
    assert pickle.loads(pickle.dumps(cb)).interrupted is stop_requested


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_asks_second_stops_at_once(sig):
    before = signal.getsignal(sig)
    stop = StopRequest()
    stop.install()
    try:
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.signame == sig.name and not stop.hard
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
        assert stop.hard
        os.kill(os.getpid(), sig)  # a third one while the stop is recorded: ignored
    finally:
        stop.restore()
    assert signal.getsignal(sig) is before


def test_interrupted_line_and_exit_codes(tmp_path):
    exc = SweepInterrupted(2, 5, "SIGINT", tmp_path)
    assert str(exc) == f"interrupted after 2 of 5 trials; `scalesweep resume {tmp_path}` continues"
    assert exc.exit_code == 130 and SweepInterrupted(0, 1, "SIGTERM", tmp_path).exit_code == 143
    assert EXIT_CODES == {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


def test_tune_own_sigint_handler_is_off():
    spec = parse_spec({"name": "s", "model": {"n_params": [20000]}, "tokens": {"values": [65536]},
                       "learning_rates": [0.01], "batch_sizes": [8192],
                       "trainer": {"backend": "simulated", "world": "tiny"}})
    assert tune_env(spec)["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
