"""Objects served by a helper process: same results, errors with their codes, a dead helper restarts;
the pruner in a helper decides exactly as the in-process one."""
from __future__ import annotations

import math
import os
import pickle

import pytest
from mlflow.exceptions import MlflowException

from orchestrator.helper_process import HelperProcess, HelperProcessError
from orchestrator.pruner import PruneConfig, Pruner, TrialMeta
from orchestrator.tune.pruner_process import ProcessPruner
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
    helper = HelperProcess("tests.unit.test_helper_process:Mortal", 10)
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
    return TrialMeta.from_trial_config(cfg), out


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
