"""Objects served by a helper process: same results, errors with their codes, a dead helper restarts;
the pruner in a helper decides exactly as the in-process one."""
from __future__ import annotations

import math
import os
import pickle

import pytest
from mlflow.exceptions import MlflowException

from orchestrator.io.helper_process import HelperProcess, HelperProcessError
from orchestrator.config.pruning import trial_meta
from orchestrator.core.pruning import PruneConfig, Pruner
from orchestrator.adapters.tune.pruner_process import ProcessPruner
from trainers.contract import Schedule, TrialConfig
from trainers.simulated import train
from trainers.worlds import load_world


def test_calls_results_errors_and_restart(tmp_path):
    helper = HelperProcess("mlflow.tracking:MlflowClient", f"sqlite:///{tmp_path}/m.db", name="mlflow-test")
    try:
        exp = helper.create_experiment("x", artifact_location=(tmp_path / "art").as_uri())
        run = helper.create_run(exp, run_name="r")
        assert helper.get_run(run.info.run_id).info.run_name == "r"
        with pytest.raises(MlflowException) as err:
            helper.get_run("0" * 32)
        assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"  # the tracker drops such an op, not retries it
        with pytest.raises(RuntimeError, match="AttributeError"):
            helper.call("no_such_method")
        pid = helper.pid
        helper._proc.kill()  # the helper dies between calls: the next call starts a new one
        helper._proc.wait()
        assert helper.get_experiment_by_name("x").experiment_id == exp and helper.pid != pid
    finally:
        helper.close()
    assert helper.pid is None
    with pytest.raises(TypeError):
        pickle.dumps(helper)


class Mortal:
    """Served by a helper in the test below."""

    def __init__(self, start: int):
        self.n = start

    def bump(self) -> int:
        self.n += 1
        return self.n

    def die(self) -> None:
        os._exit(3)


def test_a_helper_that_dies_mid_call_raises_and_the_next_call_starts_afresh():
    helper = HelperProcess("tests.unit.io.test_helper_process:Mortal", 10)
    try:
        assert helper.bump() == 11 and helper.bump() == 12
        with pytest.raises(HelperProcessError):
            helper.die()
        assert helper.bump() == 11  # a new object: state does not survive the helper
    finally:
        helper.close()


def _reports(name: str, lr: float):
    cfg = TrialConfig(trial_id=name, n_params=100_000, tokens=1_500_000, lr=lr, batch_tokens=2048,
                      schedule=Schedule(kind="cosine"), eval_every=10, seed=1)
    out = []
    train(cfg, out.append, load_world("tiny"))
    return trial_meta(cfg), out


def test_process_pruner_decides_as_the_in_process_pruner():
    trials = {f"t{i}": _reports(f"t{i}", lr) for i, lr in enumerate((0.004, 0.0004, 0.002, 0.00005, 0.04))}
    local, remote = Pruner(PruneConfig()), ProcessPruner(PruneConfig())
    try:
        for tid, (meta, reps) in trials.items():  # one after the other: the first ones become references
            for rep in reps:
                a, b = local.on_report(tid, meta, rep), remote.on_report(tid, meta, rep)
                assert (a.action, a.reason) == (b.action, b.reason)
                if a.stops:
                    break
            else:
                local.on_complete(tid, reps[-1]["eval_loss"])
                remote.on_complete(tid, reps[-1]["eval_loss"])
        assert remote.n_predictions == local.n_predictions > 0
        restored = pickle.loads(pickle.dumps(remote))  # Tune's experiment state: the helper's Pruner itself
        assert isinstance(restored, Pruner) and restored.n_predictions == local.n_predictions
        assert math.isclose(restored.config.margin, local.config.margin)
    finally:
        remote.close()


class _TuneTrial:
    def __init__(self, cfg: TrialConfig):
        self.trial_id = cfg.trial_id
        self.config = {"trial": cfg.to_dict()}


def test_scheduler_with_the_pruner_in_a_helper_stops_what_the_inline_one_stops():
    from ray.tune.schedulers import TrialScheduler

    from orchestrator.adapters.tune.scheduler import PrunerScheduler

    lrs = (0.004, 0.0004, 0.002, 0.00005, 0.04, 0.0001)
    cfgs = [TrialConfig(trial_id=f"t{i}", n_params=100_000, tokens=1_500_000, lr=lr, batch_tokens=2048,
                        schedule=Schedule(kind="cosine"), eval_every=10, seed=1) for i, lr in enumerate(lrs)]
    world = load_world("tiny")

    def run(sched):
        out = {}
        try:
            pairs = [cfgs[:2], cfgs[2:4], cfgs[4:]]  # two trials at a time, reports interleaved
            for pair in pairs:
                reps = {}
                for c in pair:
                    reps[c.trial_id] = []
                    train(c, reps[c.trial_id].append, world)
                    sched.on_trial_add(None, _TuneTrial(c))
                live = {c.trial_id: _TuneTrial(c) for c in pair}
                for k in range(max(len(r) for r in reps.values())):
                    for tid, t in list(live.items()):
                        if k >= len(reps[tid]):
                            continue
                        rep = {**reps[tid][k], "training_iteration": k + 1}
                        if k == len(reps[tid]) - 1:
                            sched.on_trial_complete(None, t, rep)
                            del live[tid]
                        elif sched.on_trial_result(None, t, rep) == TrialScheduler.STOP:
                            out[tid] = k
                            sched.on_trial_complete(None, t, rep)
                            del live[tid]
            if hasattr(sched, "drain"):
                sched.drain()
            return out, {tid: d.reason for tid, d in sched.decisions.items()}
        finally:
            close = getattr(sched.pruner, "close", None)
            if close:
                close()

    inline = run(PrunerScheduler(PruneConfig(), background=False))
    # Background, the pruner in a helper process. A stop it reaches is applied at a later report,
    # at most `max_backlog` reports late: 8 here, so that it lands before these 73-report trials end.
    helper = PrunerScheduler(PruneConfig(), max_backlog=8)
    assert type(helper.pruner).__name__ == "ProcessPruner"
    stopped, reasons = run(helper)
    assert reasons == inline[1] and reasons  # the same trials stopped for the same reasons
    # a stop reached in the background is applied at a later report of the trial (within the backlog)
    assert all(inline[0][t] <= stopped.get(t, 10**9) for t in inline[0])
