"""The driver keeps nothing per ended trial (issue 16: memory that does not grow with trials).

After many trials have ended, our scheduler and callback hold no per-trial entries, and
`ForgetEndedTrials` has emptied what Ray Tune keeps of each ended trial and taken it out of the
controller's trial list. Counts and sizes, not RSS or time.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from ray.tune.experiment import Trial

from orchestrator.app.progress import SweepProgress
from orchestrator.core.pruning import PruneConfig, Pruner
from orchestrator.io.store import ObservationStore
from orchestrator.adapters.tune.callback import SweepCallback
from orchestrator.adapters.tune.envelope import TrialEnvelope
from orchestrator.adapters.tune.forget import ForgetEndedTrials
from orchestrator.adapters.tune.scheduler import PrunerScheduler
from trainers.contract import TrialConfig

TRIALS = 30
STEPS = 8  # 8 reports of 1024 tokens: each trial runs to its planned tokens


class _Trial:
    def __init__(self, tid: str, n: int):
        self.trial_id = f"tune-{tid}"
        self.config = {"trial": TrialConfig(tid, n_params=n, tokens=STEPS * 1024, lr=0.01, batch_tokens=1024).to_dict()}


def _report(step: int, loss: float) -> dict:
    return {"step": float(step), "train_loss": loss, "eval_loss": loss, "flops": 6.0 * 1e4 * 1024 * step}


@pytest.mark.parametrize("background", [False, True])
def test_scheduler_keeps_nothing_per_ended_trial(background):
    sched = PrunerScheduler(PruneConfig(), pruner=Pruner(PruneConfig()), background=background, process=False)
    crashed = 0
    for i in range(TRIALS):
        t = _Trial(f"t{i:03d}", 10_000 * (1 + i % 4))
        sched.on_trial_add(None, t)
        ended = False
        for step in range(1, STEPS):
            if sched.on_trial_result(None, t, _report(step, 4.0 - 0.1 * step + 0.01 * i)) == "STOP":
                sched.on_trial_complete(None, t, _report(step, 4.0))
                ended = True
                break
        if ended:
            continue
        if i % 10 == 9:  # a crash with no restart left, and a trial Tune removed before it ran
            sched.on_trial_error(None, t)
            crashed += 1
        elif i % 10 == 8:
            sched.on_trial_remove(None, t)
        else:
            sched.on_trial_complete(None, t, _report(STEPS, 4.0 - 0.1 * STEPS + 0.01 * i))
    assert sched.drain(timeout=60)
    assert sched.metas == {} and sched.last == {} and sched._ready == {}
    assert len(sched._order) == crashed  # only the crashed ones, which Tune may add again
    assert len(sched.decisions) < TRIALS  # kept only for trials it stopped (the callback labels them)


def test_sweep_callback_keeps_nothing_per_ended_trial(tmp_path):
    store = ObservationStore(tmp_path, fsync=False)
    records = {f"t{i:03d}": {"trial_id": f"t{i:03d}", "N": 1000, "D": 4096, "flops": 1.0} for i in range(TRIALS)}
    cb = SweepCallback(store, None, SweepProgress("s", TRIALS, 1.0, None, enabled=False), records)
    for tid in records:
        config = TrialEnvelope(TrialConfig(tid, n_params=1000, tokens=4096, lr=1e-3, batch_tokens=1024)).to_config()
        trial = SimpleNamespace(trial_id=f"tune-{tid}", config=config, error_file=None, local_path=None)
        cb.on_trial_start(0, [], trial)
        for step in (1, 2, 4):
            cb.on_trial_result(0, [], trial, {"step": step, "tokens": 1024 * step, "flops": 1.0, "lr": 1e-3,
                                              "train_loss": 3.0, "eval_loss": 3.1, "done": float(step == 4)})
        cb.on_trial_complete(0, [], trial)
    assert cb.last == {} and cb.logged == {} and cb.checkpointing == set()
    assert {r["status"] for r in store.trials().values()} == {"finished"}  # recorded before being forgotten


def _tune_trial(i: int) -> Trial:
    config = {"trial": {"trial_id": f"t{i}", "n_params": 10_000, "lr": 0.01}}
    trial = Trial("__fake", stub=True, config=config)
    for step in range(1, 21):  # 20 results, each with Tune's copy of the config, as a function trainable sends
        trial.update_last_result({"step": step, "eval_loss": 3.0 - step / 100, "train_loss": 3.0,
                                  "tokens": 1024 * step, "training_iteration": step, "time_this_iter_s": 0.01,
                                  "config": config})
    return trial


def test_forget_ended_trials_empties_and_drops_them():
    forget = ForgetEndedTrials()
    trials = [_tune_trial(i) for i in range(TRIALS)]
    kept_before = [len(j) for j in trials[0].get_json_state()]
    ended = trials[: TRIALS - 2]  # the last two are still running
    for t in ended:
        forget.on_trial_complete(0, trials, t)
    forget.on_step_end(0, trials)  # Tune has not stopped their actors yet: slimmed, not dropped
    assert len(trials) == TRIALS and forget.forgotten == 0
    for t in ended:
        t.set_status(Trial.TERMINATED)
    forget.on_step_end(1, trials)
    assert len(trials) == 2 and forget.forgotten == TRIALS - 2 and forget.ended == []
    assert all(t.status == Trial.PENDING for t in trials)  # only the live ones are left in Tune's list
    for i, t in enumerate(ended):
        meta = t.run_metadata
        assert meta.metric_analysis == {} and meta.metric_n_steps == {}
        assert "config" not in meta.last_result and meta.last_result["step"] == 20
        assert t.config == {"trial": {"trial_id": f"t{i}"}} and t.evaluated_params == {}
        state, runtime = t.get_json_state()  # what Tune's experiment snapshot then records of it
        assert json.loads(runtime)["last_result"]["eval_loss"] == pytest.approx(2.8)
        assert len(runtime) < kept_before[1] / 4 and len(state) < kept_before[0]
    assert trials[0].config["trial"]["lr"] == 0.01  # a live trial keeps everything


class _Controller:
    """What Ray Tune's controller keeps of a trial besides its list (Ray 2.6x names); calls the callback as Tune does."""

    def __init__(self, trials):
        self._trials = trials
        self._live_trials = set(trials)
        self._stopped_trials, self._failed_trials, self._trials_to_cache = set(), set(), set()
        self._trial_metadata = {t.trial_id: t.get_json_state() for t in trials}
        self._cached_trial_decisions, self._queued_trial_decisions = {}, {}
        from ray.tune.progress_reporter import TrialProgressCallback  # Tune adds it (legacy output engine)

        self._callbacks = SimpleNamespace(_callbacks=[TrialProgressCallback()])

    def step(self, callback):
        callback.on_step_end(iteration=0, trials=self._trials)


def test_forget_ended_trials_drops_them_from_the_controller():
    forget = ForgetEndedTrials()
    trials = [_tune_trial(i) for i in range(TRIALS)]
    controller = _Controller(trials)
    ended = trials[:-2]
    for i, t in enumerate(ended):
        forget.on_trial_complete(0, trials, t)
        t.set_status(Trial.TERMINATED if i % 5 else Trial.ERROR)
        (controller._stopped_trials if i % 5 else controller._failed_trials).add(t)
        controller._trials_to_cache.add(t)
        controller._cached_trial_decisions[t.trial_id] = "STOP"
        printer = controller._callbacks._callbacks[0]
        printer._last_print[t], printer._last_print_iteration[t] = 1.0, 20
        printer._completed_trials.add(t)
    controller.step(forget)
    assert forget._controller is controller  # found from the frames that called the callback
    live = set(trials[-2:])
    assert set(controller._trials) == live and controller._live_trials == live
    assert controller._stopped_trials == controller._failed_trials == controller._trials_to_cache == set()
    assert set(controller._trial_metadata) == {t.trial_id for t in live}
    assert controller._cached_trial_decisions == {}
    assert printer._last_print == printer._last_print_iteration == {} and printer._completed_trials == set()
    assert forget.__getstate__()["_controller"] is None  # Tune pickles its callbacks: not the controller
