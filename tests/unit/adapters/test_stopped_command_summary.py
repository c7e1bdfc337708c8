"""A stopped `command` trial's store summary records how its program really ended.

Tune calls the callback's `on_trial_complete` before it asks the trial process to stop, so the
program is still running (then within its grace period after SIGTERM) when the end is first
written: the summary says STILL_ENDING, and the callback writes it again with exit.json's status
once the program has exited (`on_step_end`, or at the latest `on_experiment_end`). Real programs
(cold and forked warm) run by `trainers.command.run_command` in a thread, as in a trial process;
no Ray (the sweep wiring: tests/integration/test_own_trainer.py, test_warm_start_sweep.py).
"""
from __future__ import annotations

import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.core.pruning.decision import Decision
from orchestrator.app.progress import SweepProgress
from orchestrator.io.store import ObservationStore
from orchestrator.adapters.tune.callback import STILL_ENDING, SweepCallback
from orchestrator.adapters.tune.envelope import TrialEnvelope
from trainers.command import CommandSettings, run_command
from trainers.contract import TrialConfig

CFG = TrialConfig(trial_id="t1", n_params=1000, tokens=1000 * 256, lr=1e-3, batch_tokens=256, seq_len=64)
# reports until SIGTERM, then "finishes its step" (0.3 s, inside the grace period) and exits 0
PROGRAM = """\
import json, signal, sys, time
cfg = json.load(open(sys.argv[1]))
out = open(cfg['metrics_file'], 'a')
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
for s in range(1, 1000):
    out.write(json.dumps(dict(step=s, tokens=256 * s, lr=1e-3, train_loss=5.0, eval_loss=5.0)) + '\\n'); out.flush()
    time.sleep(0.05)
    if stop:
        time.sleep(0.3)
        print('stopped at step', s, file=sys.stderr)
        sys.exit(0)
"""


def _wait(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("warm, completed_by", [((), "on_step_end"), (("json",), "on_experiment_end")],
                         ids=["cold-on_step_end", "warm-on_experiment_end"])
def test_a_stopped_programs_true_exit_reaches_the_trial_summary(tmp_path, warm, completed_by):
    (tmp_path / "prog.py").write_text(textwrap.dedent(PROGRAM))
    settings = CommandSettings(command=(sys.executable, "prog.py", "{config}"), cwd=str(tmp_path), grace_s=5.0,
                               warm_start=warm)
    run_dir = tmp_path / "run"
    own = {"command": list(settings.command), "cwd": str(tmp_path), "grace_period_s": settings.grace_s}
    trial = SimpleNamespace(trial_id="tune-t1", local_path=None, error_file=None,
                            config=TrialEnvelope(CFG, backend="command", own=own, run_dir=str(run_dir)).to_config())
    store = ObservationStore(tmp_path / "sweep", fsync=False)
    stop = Decision("stop", "predicted worse than the best")
    cb = SweepCallback(store, None, SweepProgress("t", 1, 1.0, None, enabled=False), {"t1": {"N": 1e3, "D": CFG.tokens}},
                       stops={"t1": stop})
    cb.on_trial_start(0, [], trial)
    reports, stopping, out = [], threading.Event(), {}

    def trial_process():  # the trial's thread: reports reach the callback, Tune's stop comes later
        def report(r):
            reports.append(r)
            cb.on_trial_result(0, [], trial, dict(r))
        try:
            out["info"] = run_command(CFG, report, settings, run_dir, n_params=1000, should_stop=stopping.is_set)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            out["error"] = exc

    thread = threading.Thread(target=trial_process)
    thread.start()
    try:
        _wait(lambda: len(reports) >= 3)
        cb.on_trial_complete(0, [], trial)  # the pruner's stop: Tune's callback first ...
        first = store.trials()["t1"]
        assert first["status"] == "stopped" and first["summary"]["process"]["status"] == STILL_ENDING
        cb.on_step_end(0, [])  # nothing to complete yet: the program runs on
        assert "t1" in cb.ending
    finally:
        stopping.set()  # ... then it stops the trial process: SIGTERM, the program ends its step
        if completed_by == "on_step_end":
            _wait(lambda: (cb.on_step_end(1, []), "t1" not in cb.ending)[1])
        else:
            cb.on_experiment_end([])
        thread.join(30)
    assert "error" not in out and out["info"]["ended"] == "stopped"
    rec = store.trials()["t1"]
    assert rec["status"] == "stopped" and rec["summary"]["reason"] == stop.reason
    process = rec["summary"]["process"]
    assert process["status"] == "exit status 0" and process["ended"] == "stopped", process
    assert process["attempt_dir"] == str(run_dir / "attempt-0") and process["last_step"] >= 3
    assert not cb.ending
