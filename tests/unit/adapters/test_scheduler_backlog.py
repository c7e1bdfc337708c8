"""The PrunerScheduler's worker thread: same decisions as inline, and a bounded backlog."""
from __future__ import annotations

import time

from ray.tune.schedulers import TrialScheduler

from orchestrator.core.pruning import Decision, PruneConfig, Pruner
from orchestrator.adapters.tune.scheduler import PrunerScheduler
from trainers.contract import TrialConfig


class _Trial:
    def __init__(self, tid: str):
        self.trial_id = tid
        self.config = {"trial": TrialConfig(tid, n_params=10_000, tokens=400 * 1024, lr=0.01,
                                            batch_tokens=1024).to_dict()}


class _SlowPruner(Pruner):
    """Takes 2 ms a report and stops every trial at step 50."""

    def on_report(self, trial_id, meta, report):
        time.sleep(0.002)
        return Decision("stop", "planted", {}) if report["step"] >= 50 else Decision()


def _report(step):
    return {"step": float(step), "train_loss": 3.0, "eval_loss": 3.0, "flops": 1.0}


def test_backlog_is_bounded_and_stops_still_land():
    sched = PrunerScheduler(PruneConfig(), pruner=_SlowPruner(PruneConfig()), max_backlog=16)
    trials = [_Trial(f"t{i}") for i in range(4)]
    for t in trials:
        sched.on_trial_add(None, t)
    worst, stopped_at = 0, {}
    for step in range(1, 101):
        for t in trials:
            if t.trial_id in stopped_at:
                continue
            if sched.on_trial_result(None, t, _report(step)) == TrialScheduler.STOP:
                stopped_at[t.trial_id] = step
            worst = max(worst, sched.pending())
    assert worst <= 16 + 1  # Tune's loop waited for the worker instead of piling up reports
    assert set(stopped_at) == {t.trial_id for t in trials}
    # the stop decided at step 50 is applied within the backlog's reach, not after the trial ended
    assert all(50 < s <= 50 + 16 for s in stopped_at.values())
    assert all(sched.decisions[t].reason == "planted" for t in stopped_at)


def test_background_and_inline_reach_the_same_decisions():
    def run(background):
        sched = PrunerScheduler(PruneConfig(), pruner=_SlowPruner(PruneConfig()), background=background)
        t = _Trial("a")
        sched.on_trial_add(None, t)
        for step in range(1, 400):
            if sched.on_trial_result(None, t, _report(step)) == TrialScheduler.STOP:
                return step, sched.decisions["a"].reason
        return None, None

    (bg_step, bg_reason), (inline_step, inline_reason) = run(True), run(False)
    assert bg_reason == inline_reason == "planted"
    backlog = PrunerScheduler(PruneConfig(), pruner=_SlowPruner(PruneConfig())).max_backlog
    assert inline_step == 50 and 50 < bg_step <= 50 + backlog  # applied at a later result, within the backlog


def test_choose_trial_to_run_is_fifos_choice_among_live_trials():
    import random

    from ray.tune.experiment import Trial
    from ray.tune.schedulers import FIFOScheduler

    class _T:
        def __init__(self, tid):
            self.trial_id, self.status, self.config = tid, Trial.PENDING, {}

    class _Controller:
        def __init__(self, trials):
            self.trials = trials

        def get_trials(self):
            return self.trials

        def get_live_trials(self):  # Tune's set of trials not terminated (order not kept)
            live = [t for t in self.trials if t.status != Trial.TERMINATED]
            random.shuffle(live)
            return set(live)

    rng = random.Random(0)
    ours = PrunerScheduler(PruneConfig(), background=False)
    trials = []
    for step in range(300):
        t = _T(f"t{step}")
        trials.append(t)
        ours.on_trial_add(None, t)
        for u in rng.sample(trials, min(len(trials), 3)):  # statuses move on as in a sweep
            u.status = rng.choice([Trial.PENDING, Trial.RUNNING, Trial.PAUSED, Trial.TERMINATED, Trial.ERROR])
        ctrl = _Controller(trials)
        assert ours.choose_trial_to_run(ctrl) is FIFOScheduler().choose_trial_to_run(ctrl)
