"""The Tune trial envelope: the dict Tune holds round-trips, and hand-written configs still read."""
from __future__ import annotations

import doctest

from orchestrator.adapters.tune import envelope as envelope_module
from orchestrator.adapters.tune.envelope import TrialEnvelope
from trainers.contract import Schedule, TrialConfig

TRIAL = TrialConfig("t7", n_params=20_000, tokens=81_920, lr=3e-3, batch_tokens=2048, seed=2,
                    schedule=Schedule(kind="wsd"), workers=2, checkpoint_steps=(10, 20), options={"a": 1})


def test_doctests():
    assert doctest.testmod(envelope_module).failed == 0


def test_a_full_envelope_round_trips_through_the_dict_tune_holds():
    env = TrialEnvelope(TRIAL, backend="command", world="tiny", storage="/s/ray", use_gpu=True, max_failures=3,
                        cell_D=80_000.0, own={"command": "python train.py", "env": {"X": "1"}}, run_dir="/s/runs/t7",
                        N=19_876.0, report_delay_s=0.5, stop_key="sweep/0123", run_mirror="s3://b/p/runs/t7",
                        branch_of="t3")
    config = env.to_config()
    assert set(config) == {"trial", "backend", "world", "storage", "use_gpu", "max_failures", "cell_D", "own",
                           "run_dir", "run_mirror", "N", "report_delay_s", "stop_key", "branch_of"}
    assert config["trial"] == TRIAL.to_dict() and config["N"] == 19_876.0
    assert TrialEnvelope.from_config(config) == env
    assert (env.trial_id, env.D, env.lr, env.batch, env.seed) == ("t7", 81_920, 3e-3, 2048, 2)


def test_the_built_in_trainers_config_leaves_out_what_only_a_users_trainer_reads():
    config = TrialEnvelope(TRIAL, backend="simulated", world="tiny", cell_D=80_000.0).to_config()
    assert set(config) == {"trial", "backend", "world", "storage", "use_gpu", "max_failures", "cell_D"}


def test_a_hand_written_tune_config_takes_the_defaults():
    """As tests and benchmarks write it: param_space={"trial": ..., "backend": "simulated", "world": "tiny"}."""
    env = TrialEnvelope.from_config({"trial": TRIAL.to_dict(), "backend": "simulated", "world": "tiny"})
    assert env.trial == TRIAL and env.backend == "simulated" and env.world == "tiny"
    assert (env.use_gpu, env.max_failures, env.cell_D, env.own, env.stop_key, env.report_delay_s) == \
        (False, 0, None, None, None, 0.0)
    assert TrialEnvelope.from_config({"trial": TRIAL}).backend == "deepspeed"


def test_the_pruners_plan_of_a_wsd_branch_names_its_trunk():
    """The scheduler reads a branch's trunk from the envelope: the pruner judges the branch with the trunk's curve."""
    from dataclasses import replace

    from ray.tune.experiment import Trial

    from orchestrator.adapters.tune.scheduler import PrunerScheduler

    sched = PrunerScheduler(background=False, process=False)
    branch = replace(TRIAL, trial_id="b7", branch_step=30, checkpoint_steps=())
    for trial, trunk, step in ((TRIAL, None, 0), (branch, "t7", 30)):
        config = TrialEnvelope(trial, backend="simulated", branch_of=trunk).to_config()
        meta = sched._meta(Trial("run_trial", config=config, stub=True))
        assert (meta.trunk, meta.start_step) == (trunk, step)
