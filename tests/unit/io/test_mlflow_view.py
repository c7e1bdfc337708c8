"""The sweep's saved runs-table view in MLflow: an experiment tag the UI opens as a view
(`?viewStateShareKey=`), whose filter, order and columns name what the trial runs really carry."""
from __future__ import annotations

import json
from dataclasses import fields

import pytest

from orchestrator.core.planning.trial import PlannedTrial
from orchestrator.io.tracking import SweepTracker
from orchestrator.io.tracking.layout import (NOTE_MARK, NOTE_TAG, VIEW_COLUMNS, VIEW_TAG_PREFIX, runs_table_view,
                                          saved_view_key, view_key)

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


def _record(i: int) -> dict:
    """A trial's config as the Tune callback logs it (PlannedTrial.record())."""
    trial = PlannedTrial(trial_id=f"t{i}", n_target=20000, N=19800 + i, N_total=30000, D=400000, lr=0.01 * (i + 1),
                         batch=2048, seed=0, workers=1, zero_stage=0, flops=6 * 19800 * 400000, shape={"d_model": 64})
    return trial.record()


def _sweep(uri: str, name: str, experiment: str | None = None, trials: int = 2) -> str:
    with SweepTracker(uri, experiment, name, client_process=False, flush_interval_s=0.05) as tracker:
        tracker.start({"name": name, "model": {"n_params": [20000]}})
        for i in range(trials):
            tid = f"{name}-t{i}"
            tracker.start_trial(tid, _record(i), wait=False, run_name=f"N19.8k lr{0.01 * (i + 1):g}")
            tracker.log_metrics(tid, {"eval_loss": 3.0 - 0.1 * i, "flops": 1e10, "tokens": 4e5, "step_time_s": 2.0},
                                step=10)
            tracker.end_trial(tid, "FINISHED", {"scalesweep.status": "finished"})
        return tracker.parent_run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store (its schema set-up is most of the time): sweep `tiny` in its own experiment,
    `first` and `second` in one experiment, `kept` in an experiment whose description a user wrote."""
    where = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{where / 'mlflow.db'}"
    client = MlflowClient(uri)
    mine = client.create_experiment("mine", artifact_location=(where / "art").as_uri())
    client.set_experiment_tag(mine, NOTE_TAG, "my notes")
    parent = _sweep(uri, "tiny", trials=3)
    _sweep(uri, "first", experiment="shared", trials=1)
    _sweep(uri, "second", experiment="shared", trials=1)
    _sweep(uri, "kept", experiment="mine", trials=1)
    return client, parent, mine


def test_saved_view_names_real_columns_and_its_filter_finds_the_trials(store):
    client, parent, _ = store
    exp = client.get_experiment(client.get_run(parent).info.experiment_id)
    view = json.loads(exp.tags[VIEW_TAG_PREFIX + view_key("tiny")])
    assert view["selectedColumns"] == list(VIEW_COLUMNS)
    # the view's filter and order are MLflow search syntax: they select the 3 trials, not the sweep's run
    runs = client.search_runs([exp.experiment_id], view["searchFilter"],
                              order_by=[f"{view['orderByKey']} {'ASC' if view['orderByAsc'] else 'DESC'}"])
    assert len(runs) == 3 and parent not in {r.info.run_id for r in runs}
    assert all(r.info.end_time >= r.info.start_time for r in runs)  # no negative duration in the table
    assert [r.data.metrics["eval_loss"] for r in runs] == sorted(r.data.metrics["eval_loss"] for r in runs)
    # every column the view shows is a key the trial runs carry (a misspelt key shows an empty column)
    planned = {f.name for f in fields(PlannedTrial)}
    for column in view["selectedColumns"]:
        kind, key = column.split(".", 1)
        key = key.strip("`")
        if kind == "params":
            assert key in planned and all(key in r.data.params for r in runs), column
        elif kind == "metrics":
            assert all(key in r.data.metrics for r in runs), column
        elif kind == "tags":
            assert all(key in r.data.tags for r in runs), column
        else:
            pytest.fail(f"unexpected column {column}")
    note = exp.tags[NOTE_TAG]
    assert note.startswith(NOTE_MARK)
    assert f"(#/experiments/{exp.experiment_id}?viewStateShareKey={view_key('tiny')})" in note


def test_two_sweeps_in_one_experiment_each_get_a_view_and_the_note_links_both(store):
    client, *_ = store
    exp = client.get_experiment_by_name("shared")
    for name in ("first", "second"):
        view = json.loads(exp.tags[VIEW_TAG_PREFIX + view_key(name)])
        assert [r.data.tags["scalesweep.sweep"] for r in client.search_runs([exp.experiment_id], view["searchFilter"])] == [name]
        assert f"viewStateShareKey={view_key(name)})" in exp.tags[NOTE_TAG]


def test_a_description_someone_wrote_is_kept(store):
    client, _, mine = store
    tags = client.get_experiment(mine).tags
    assert tags[NOTE_TAG] == "my notes" and VIEW_TAG_PREFIX + view_key("kept") in tags


def _envelope(value: str) -> dict:
    """A saved-view tag value read as MLflow 3.17's UI reads it (savedViewEnvelope.ts: decodeSavedViewEnvelope
    refuses a value without a string name, a number createdAt and a string state; the menu lists the rest)."""
    doc = json.loads(value)
    assert isinstance(doc["name"], str) and isinstance(doc["createdAt"], int) and isinstance(doc["state"], str)
    return doc


def test_the_view_is_also_a_named_saved_view_that_keeps_its_date_on_resume(store, tmp_path):
    """MLflow 3.17 lists named saved views (an envelope) in the runs tab's "Saved views" menu; older 3.x UIs
    open only the bare view the description links. Both are saved; the note links the bare one only."""
    client, parent, _ = store
    exp = client.get_experiment(client.get_run(parent).info.experiment_id)
    named = _envelope(exp.tags[VIEW_TAG_PREFIX + saved_view_key("tiny")])
    assert named["name"] == "Trials of sweep tiny"
    assert json.loads(named["state"]) == json.loads(exp.tags[VIEW_TAG_PREFIX + view_key("tiny")]) == runs_table_view("tiny")
    assert saved_view_key("tiny") not in exp.tags[NOTE_TAG]  # one link per sweep
    assert saved_view_key("x") not in {view_key(n) for n in ("x.trials", "x-trials", "x_trials")}  # no clash
    shared = client.get_experiment_by_name("shared")  # one named view per sweep of the experiment
    names = []
    for key, value in shared.tags.items():
        try:
            names.append(_envelope(value)["name"])
        except (ValueError, KeyError, AssertionError):
            continue
    assert sorted(names) == ["Trials of sweep first", "Trials of sweep second"]

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = _sweep(uri, "again", trials=1)
    local = MlflowClient(uri)
    exp_id = local.get_run(run_id).info.experiment_id
    first = _envelope(local.get_experiment(exp_id).tags[VIEW_TAG_PREFIX + saved_view_key("again")])
    with SweepTracker(uri, None, "again", client_process=False, flush_interval_s=0.05) as tracker:
        assert tracker.start({"name": "again"}, resume_run_id=run_id) == run_id
    again = _envelope(local.get_experiment(exp_id).tags[VIEW_TAG_PREFIX + saved_view_key("again")])
    assert again["createdAt"] == first["createdAt"] and again["updatedAt"] >= first["updatedAt"]
