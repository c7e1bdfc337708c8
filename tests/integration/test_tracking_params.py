"""A trial's MLflow params are its own planned config, each value once (issue 17: MLflow's column picker
listed every `trainer.*` param beside them, the trainer's config repeating the trial's values and the spec's).

The real Tune callback (`SweepCallback`) with a real `SweepTracker` on SQLite, driven with Tune trial
stand-ins that carry real envelopes; read back with MlflowClient.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from orchestrator.core.planning.trial import PlannedTrial
from orchestrator.app.progress import SweepProgress
from orchestrator.io.store import ObservationStore
from orchestrator.io.tracking import SweepTracker, read_sweep_runs
from orchestrator.io.tracking.layout import flatten_params, trial_params
from orchestrator.adapters.tune.callback import SweepCallback
from orchestrator.adapters.tune.envelope import TrialEnvelope
from trainers.contract import Schedule, TrialConfig

pytest.importorskip("mlflow")

SPEC = {"name": "cols", "model": {"n_params": [20000], "seq_len": 64}, "schedule": {"kind": "wsd", "warmup": 0.1}}


def _planned(i: int) -> PlannedTrial:
    return PlannedTrial(trial_id=f"t{i}", n_target=20000, N=19800, N_total=30000, D=409600, lr=0.003 * (i + 1),
                        batch=2048, seed=i, workers=1, zero_stage=0, flops=6 * 19800 * 409600, shape={"d_model": 64},
                        D_nominal=400000.0)


def _tune_trial(t: PlannedTrial) -> SimpleNamespace:
    """What Tune hands the callback: its own trial id and the envelope's config, as the controller builds it."""
    trial = TrialConfig(t.trial_id, n_params=t.n_target, tokens=t.D, lr=t.lr, batch_tokens=t.batch, seq_len=64,
                        schedule=Schedule(kind="wsd", warmup=0.1), seed=t.seed, options={"step_sleep_s": 0.05})
    config = TrialEnvelope(trial, backend="simulated", world="tiny", cell_D=t.D_nominal).to_config()
    return SimpleNamespace(trial_id=f"tune-{t.trial_id}", config=config, error_file=None, local_path=None)


def test_a_trials_params_are_its_planned_config_each_value_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    planned = [_planned(i) for i in range(2)]
    records = {t.trial_id: t.record() for t in planned}
    store = ObservationStore(tmp_path / "sweep", fsync=False)
    with SweepTracker(uri, None, "cols", client_process=False, flush_interval_s=0.05) as tracker:
        tracker.start(SPEC)
        cb = SweepCallback(store, tracker, SweepProgress("cols", 2, 1.0, None, enabled=False), records)
        for t in planned:
            trial = _tune_trial(t)
            cb.on_trial_start(0, [], trial)
            cb.on_trial_result(0, [], trial, {"step": 200, "tokens": float(t.D), "flops": 6.0 * t.N * t.D, "lr": t.lr,
                                              "train_loss": 3.0, "eval_loss": 3.1, "tokens_per_s": 1e4,
                                              "step_time_s": 2.0, "done": 1.0})
            cb.on_trial_complete(0, [], trial)
    parent, children = read_sweep_runs(uri, "cols")
    assert parent.data.params["model.seq_len"] == "64"  # what every trial shares: on the sweep's run
    assert {c.data.tags["scalesweep.trial_id"] for c in children} == set(records)
    for child in children:
        t = next(p for p in planned if p.trial_id == child.data.tags["scalesweep.trial_id"])
        params = child.data.params
        record = records[t.trial_id]
        assert params == flatten_params(trial_params(record))  # the planned config, nothing else
        # ... and only the fields with a value: no column of "None", "[]" or a branch point of a non-branch
        assert not {"None", "[]"} & set(params.values()) and not any(k.startswith("branch_") for k in params)
        assert {k for k, v in record.items() if v is None or v == []} and len(params) < len(flatten_params(record))
        assert not any(k.startswith("trainer.") for k in params), sorted(params)
        for value in (t.lr, t.D, t.batch):  # each of the trial's values under one name
            assert sum(v == str(value) for v in params.values()) == 1, (value, params)
        assert child.data.tags["scalesweep.status"] == "finished"


def test_the_sweeps_params_are_the_fields_the_user_set_and_stay_so_on_resume(tmp_path):
    """Issue 17: the sweep's run logged every spec field (~100, most of them defaults); now only the
    user's, with the whole resolved spec as the artifact spec/spec_resolved.yaml. A resume loads the
    recorded (resolved) spec.yaml, where every field reads as set: it must not add the defaults."""
    import yaml
    from mlflow.tracking import MlflowClient

    from orchestrator.app.tune_run import spec_set
    from orchestrator.config.spec import parse_spec

    user = {"name": "cols", "model": {"n_params": [20000, 50000], "seq_len": 64}, "tokens": {"values": [400000]},
            "learning_rates": [0.01], "batch_sizes": [8192], "trainer": {"backend": "simulated", "world": "tiny"}}
    spec = parse_spec(user)
    full = spec.model_dump(mode="json")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state_file = tmp_path / "sweep.json"
    with SweepTracker(uri, None, "cols", client_process=False, flush_interval_s=0.05) as tracker:
        parent_id = tracker.start(spec_set(spec, state_file), resolved=full)
    parent, _ = read_sweep_runs(uri, "cols")
    logged = dict(parent.data.params)
    assert logged == flatten_params(spec.model_dump(mode="json", exclude_unset=True))
    assert set(logged) == set(flatten_params(user)) and logged["model.seq_len"] == "64"
    assert len(flatten_params(full)) > 3 * len(logged)  # the defaults that are no longer columns
    MlflowClient(uri).download_artifacts(parent_id, "spec", str(tmp_path / "dl"))
    assert yaml.safe_load((tmp_path / "dl" / "spec" / "spec_resolved.yaml").read_text()) == full  # nothing lost
    assert yaml.safe_load((tmp_path / "dl" / "spec" / "spec.yaml").read_text()) == spec.model_dump(
        mode="json", exclude_unset=True)

    resumed = parse_spec(yaml.safe_load(yaml.safe_dump(full)))  # what `resume` loads: the recorded spec.yaml
    assert len(flatten_params(resumed.model_dump(mode="json", exclude_unset=True))) == len(flatten_params(full))
    with SweepTracker(uri, None, "cols", client_process=False, flush_interval_s=0.05) as tracker:
        assert tracker.start(spec_set(resumed, state_file), resume_run_id=parent_id,
                             resolved=resumed.model_dump(mode="json")) == parent_id
    parent, _ = read_sweep_runs(uri, "cols")
    assert dict(parent.data.params) == logged
