"""SweepTracker against real MLflow: a SQLite store, and a real `mlflow server` that is
killed and restarted mid-sweep. Everything is read back with MlflowClient."""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from orchestrator.io.tracking import SweepTracker, read_sweep_runs
from tests.integration.conftest import MlflowServer, free_port

# Not `serial` (but for the mid-sweep outage below): the server it takes down is its own subprocess,
# and its waits are flushes with timeouts of 30-90 s (none is a time window), so other tests beside
# it only slow it down.
pytestmark = pytest.mark.integration

# The helper process that serves a SQLite store imports MLflow first (~20 s on a loaded 2-core
# machine): waiting longer than the default 10 s keeps the run ids these tests compare.
SYNC = 120
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPEC = {"name": "t", "model": {"family": "gpt", "n_params": [20_000, 80_000, 320_000]},
        "lrs": [1e-3, 3e-3], "note": "x" * 7000}


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """A migrated, empty MLflow SQLite store (creating one costs seconds: do it once)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def sqlite_uri(template_db, tmp_path) -> str:
    db = tmp_path / "sweep" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(template_db, db)
    return f"sqlite:///{db}"


def _report(trial: int, step: int) -> dict[str, float]:
    """A trial report in the contract's keys; eval_loss is NaN between evaluations."""
    return {"step": float(step), "tokens": 512.0 * step, "flops": 6e4 * 512 * step,
            "lr": 1e-3, "train_loss": 5.0 - 0.01 * step + trial,
            "eval_loss": 4.0 - 0.01 * step if step % 10 == 0 else float("nan"),
            "tokens_per_s": 1000.0 + step}


def _figure() -> Figure:
    fig = Figure()
    fig.add_subplot().plot([1, 2, 3], [3, 2, 1])
    return fig


def test_parent_children_metrics_params_artifacts(sqlite_uri, tmp_path):
    steps = {0: 40, 1: 40, 2: 1200}  # trial 2 needs several 1000-metric batches
    with SweepTracker(sqlite_uri, "scaling", "sweep-a", flush_interval_s=0.05, sync_timeout_s=SYNC) as tr:
        parent_id = tr.start(SPEC)
        assert parent_id
        ids = {}
        for t in steps:
            ids[t] = tr.start_trial(f"trial_{t}", {"n_params": 20_000 * 4**t, "lr": 1e-3,
                                                  "schedule": {"kind": "wsd", "decay": 0.2}})
            assert ids[t] and tr.start_trial(f"trial_{t}", {}) == ids[t]  # idempotent
        for s in range(max(steps.values())):
            for t, n in steps.items():
                if s < n:
                    tr.log_metrics(f"trial_{t}", _report(t, s), step=s)
        tr.end_trial("trial_0", "FINISHED")
        tr.end_trial("trial_1", "FAILED", tags={"reason": "diverged"})
        tr.log_sweep_results({"law": "chinchilla"}, {"fit.E": 1.69, "fit.alpha": 0.34},
                             {"proposals": [{"budget": 1e18, "N": 1e7, "predicted_loss": 2.5}]},
                             {"frontier": _figure()})
        assert tr.flush(timeout=60)
        assert tr.nonfinite_counts("trial_0") == {"eval_loss": 36}
        # trial_2 left open: close() ends it with the sweep's status
    assert tr.stats["dropped"] == 0 and tr.pending == 0

    parent, children = read_sweep_runs(sqlite_uri, "sweep-a")
    client = MlflowClient(sqlite_uri)
    assert parent.info.run_id == parent_id and parent.info.status == "FINISHED"
    assert parent.data.tags["scalesweep.kind"] == "sweep"
    assert parent.data.params["model.family"] == "gpt"
    assert json.loads(parent.data.params["model.n_params"]) == [20_000, 80_000, 320_000]
    assert len(parent.data.params["note"]) == 6000  # truncated to MLflow's limit, not rejected
    assert parent.data.params["law"] == "chinchilla"
    assert parent.data.metrics["fit.alpha"] == pytest.approx(0.34)
    # Artifacts land inside the sweep directory, not in ./mlruns of the CWD.
    sweep_dir = Path(sqlite_uri[len("sqlite:///"):]).parent
    assert parent.info.artifact_uri.startswith((sweep_dir / "mlartifacts").as_uri())
    assert not Path("mlruns").exists() or not any(Path("mlruns").iterdir())
    local = Path(client.download_artifacts(parent_id, "", str(tmp_path / "dl")))
    assert json.loads((local / "results" / "proposals.json").read_text())[0]["N"] == 1e7
    assert (local / "plots" / "frontier.png").read_bytes().startswith(PNG_MAGIC)
    assert "model:" in (local / "spec" / "spec.yaml").read_text()

    assert [c.data.tags["scalesweep.trial_id"] for c in children] == ["trial_0", "trial_1", "trial_2"]
    assert [c.info.status for c in children] == ["FINISHED", "FAILED", "FINISHED"]
    assert children[1].data.tags["reason"] == "diverged"
    assert json.loads(children[0].data.tags["scalesweep.nonfinite_metrics"]) == {"eval_loss": 36}
    for t, child in enumerate(children):
        assert child.info.run_id == ids[t]
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        assert child.data.params["n_params"] == str(20_000 * 4**t)
        assert child.data.params["schedule.kind"] == "wsd"
        hist = client.get_metric_history(child.info.run_id, "train_loss")
        assert [m.step for m in hist] == list(range(steps[t]))
        assert [m.value for m in hist] == [_report(t, s)["train_loss"] for s in range(steps[t])]
        evals = client.get_metric_history(child.info.run_id, "eval_loss")
        assert [m.step for m in evals] == list(range(0, steps[t], 10))  # NaNs skipped
        # `step` is MLflow's step axis, not a metric of its own
        assert set(child.data.metrics) == {"tokens", "flops", "lr", "train_loss", "eval_loss", "tokens_per_s"}


def test_tags_ride_with_metrics_and_a_later_value_wins(sqlite_uri):
    """A trial's tags and metrics queued together go in one log_batch per run, in op order."""
    with SweepTracker(sqlite_uri, "scaling", "sweep-tags", flush_interval_s=60, sync_timeout_s=SYNC) as tr:
        tr.start(SPEC)
        run_id = tr.start_trial("t0", {"lr": 1e-3})
        for s in range(3):
            tr.log_metrics("t0", {"train_loss": 5.0 - s}, step=s)
            tr.set_tags("t0", {"phase": f"step-{s}", f"seen.{s}": "yes"})
        tr.set_tags(None, {"sweep.note": "parent tags too"})
        batches = tr.stats["batches"]
        tr.end_trial("t0", "FINISHED", tags={"reason": "done"})
        assert tr.flush(timeout=60)
        assert tr.stats["batches"] - batches == 2  # one per run (trial, parent), not one per op
    run = MlflowClient(sqlite_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["phase"] == "step-2" and run.data.tags["reason"] == "done"
    assert {run.data.tags[f"seen.{s}"] for s in range(3)} == {"yes"}
    assert [m.value for m in MlflowClient(sqlite_uri).get_metric_history(run_id, "train_loss")] == [5.0, 4.0, 3.0]
    assert MlflowClient(sqlite_uri).get_run(tr.parent_run_id).data.tags["sweep.note"] == "parent tags too"


def test_outcomes_branch_links_and_real_metrics(sqlite_uri):
    """Each store status ends its run with a distinct outcome tag and the documented MLflow status;
    a WSD branch names its trunk's run and its branch point; `done` and `step` are not charted and
    the cumulative `step_time_s` becomes one `train_s` point; the sweep has its own experiment."""
    want = {"finished": ("FINISHED", "finished"), "failed": ("FAILED", "failed"),
            "diverged": ("FAILED", "diverged"), "stopped": ("KILLED", "pruned"),
            "stopped-by-user": ("KILLED", "stopped-by-user")}
    with SweepTracker(sqlite_uri, None, "sweep-o", flush_interval_s=0.05, sync_timeout_s=SYNC,
                      client_process=False) as tr:
        tr.start(SPEC)
        trunk = tr.start_trial("trunk", {"N": 20_000, "D": 80_000, "checkpoint_steps": [10, 20]})
        branch = tr.start_trial("trunk-b10", {"N": 20_000, "D": 40_000, "branch_of": "trunk", "branch_step": 10,
                                              "branch_flops": 4.8e10})
        for s in range(1, 4):
            tr.log_metrics("trunk-b10", {**_report(0, 10 + s), "done": float(s == 3), "step_time_s": 0.5 * s},
                           step=10 + s)
        for status in want:
            tr.start_trial(status, {"lr": 1e-3})
            # the callback's (pre-mapping) MLflow status: everything but finished/failed was KILLED
            tr.end_trial(status, "FINISHED" if status == "finished" else "KILLED", {"scalesweep.status": status})
        tr.end_trial("trunk-b10", "FINISHED", {"scalesweep.status": "finished"})
        assert tr.flush(timeout=60)
    client = MlflowClient(sqlite_uri)
    parent, children = read_sweep_runs(sqlite_uri, "sweep-o", "sweep-o")  # the experiment is the sweep's
    assert parent.info.status == "FINISHED" and parent.data.tags["scalesweep.outcome"] == "finished"
    runs = {c.data.tags["scalesweep.trial_id"]: c for c in children}
    for status, (mlflow_status, outcome) in want.items():
        assert (runs[status].info.status, runs[status].data.tags["scalesweep.outcome"]) == (mlflow_status, outcome)
    assert len({runs[s].data.tags["scalesweep.outcome"] for s in want}) == len(want)
    tags = runs["trunk-b10"].data.tags
    assert tags["scalesweep.trunk_run_id"] == trunk and tags["scalesweep.trunk_trial_id"] == "trunk"
    assert tags["scalesweep.branch_step"] == "10" and float(tags["scalesweep.branch_flops"]) == 4.8e10
    assert "scalesweep.trunk_run_id" not in runs["trunk"].data.tags
    metrics = runs["trunk-b10"].data.metrics
    assert not {"done", "step", "step_time_s"} & set(metrics)
    assert [(m.step, m.value) for m in client.get_metric_history(branch, "train_s")] == [(13, 1.5)]
    assert [m.step for m in client.get_metric_history(branch, "train_loss")] == [11, 12, 13]

    # a sweep resumed from an older layout (a shared experiment) keeps its runs where they are
    with SweepTracker(sqlite_uri, "scaling", "sweep-old", flush_interval_s=0.05, sync_timeout_s=SYNC,
                      client_process=False) as old:
        old_parent = old.start(SPEC)
        old.start_trial("a", {"lr": 1})
    with SweepTracker(sqlite_uri, None, "sweep-old", flush_interval_s=0.05, sync_timeout_s=SYNC,
                      client_process=False) as tr:
        assert tr.start(SPEC, resume_run_id=old_parent) == old_parent
        tr.start_trial("a", {"lr": 1})
        tr.start_trial("b", {"lr": 2})
        tr.close("KILLED")
    parent, children = read_sweep_runs(sqlite_uri, "sweep-old", "scaling")
    assert parent.info.run_id == old_parent and len(children) == 2
    assert client.get_experiment_by_name("sweep-old") is None
    assert parent.data.tags["scalesweep.outcome"] == "stopped-by-user"
    assert {c.data.tags["scalesweep.outcome"] for c in children} == {"interrupted"}


def _crash(tracker: SweepTracker) -> None:
    """The controller dies after the tracker delivered what it had: no end is ever sent."""
    assert tracker.flush(timeout=30)
    assert tracker._queue.stop(timeout=10)


def test_resumed_tracker_ends_runs_a_crash_left_running(sqlite_uri):
    """Trials that ended while their end never reached MLflow (a killed controller) are closed on
    resume with their store status; a run this tracker restarts, and other sweeps' runs, are left alone."""
    other = SweepTracker(sqlite_uri, "scaling", "other", flush_interval_s=0.05, sync_timeout_s=SYNC)
    other.start(SPEC)
    other_a = other.start_trial("a", {"lr": 1})
    _crash(other)
    crashed = SweepTracker(sqlite_uri, "scaling", "sweep-c", flush_interval_s=0.05, sync_timeout_s=SYNC)
    parent = crashed.start(SPEC)
    ids = {t: crashed.start_trial(t, {"lr": 1}) for t in ("a", "b", "c")}
    _crash(crashed)

    with SweepTracker(sqlite_uri, "scaling", "sweep-c", flush_interval_s=0.05, sync_timeout_s=SYNC) as tr:
        assert tr.start(SPEC, resume_run_id=parent) == parent
        tr.start_trial("c", {"lr": 1})  # interrupted: rerun by the resumed sweep
        tr.end_stale_trials({"a": ("FINISHED", {"scalesweep.status": "finished"}),
                             "b": ("KILLED", {"scalesweep.status": "stopped", "scalesweep.reason": "pruned"})})
        assert tr.flush(timeout=30)
        client = MlflowClient(sqlite_uri)
        runs = {t: client.get_run(ids[t]) for t in ids}
        assert runs["a"].info.status == "FINISHED" and runs["a"].data.tags["scalesweep.status"] == "finished"
        assert runs["b"].info.status == "KILLED" and runs["b"].data.tags["scalesweep.reason"] == "pruned"
        assert runs["c"].info.status == "RUNNING"  # still running in this tracker
        assert client.get_run(other_a).info.status == "RUNNING"  # another sweep's trial "a"


def test_restart_reuses_parent_and_trial_runs(sqlite_uri):
    with SweepTracker(sqlite_uri, "scaling", "sweep-b", flush_interval_s=0.05, sync_timeout_s=SYNC) as tr:
        parent_id = tr.start(SPEC)
        run_id = tr.start_trial("trial_0", {"lr": 1e-3})
        for s in range(5):
            tr.log_metrics("trial_0", {"train_loss": 10.0 - s}, s)
    # A new process (controller resumed): the same parent and child runs continue.
    with SweepTracker(sqlite_uri, "scaling", "sweep-b", flush_interval_s=0.05, sync_timeout_s=SYNC) as tr2:
        assert tr2.start(SPEC, resume_run_id=parent_id) == parent_id
        assert tr2.start_trial("trial_0", {"lr": 1e-3}) == run_id
        for s in range(5, 8):
            tr2.log_metrics("trial_0", {"train_loss": 10.0 - s}, s)
        tr2.end_trial("trial_0", "FAILED")
        assert tr2.flush(timeout=30)
        assert MlflowClient(sqlite_uri).get_run(run_id).info.status == "FAILED"
        # Tune retries the trial from its checkpoint: same run, running again.
        assert tr2.start_trial("trial_0", {"lr": 1e-3}) == run_id
        assert tr2.flush(timeout=30)
        assert MlflowClient(sqlite_uri).get_run(run_id).info.status == "RUNNING"
        tr2.log_metrics("trial_0", {"train_loss": 2.0}, 8)
        tr2.end_trial("trial_0")
    # Logging after close never raises: it is spooled for the next tracker.
    tr2.log_metrics("trial_0", {"late_metric": 1.5}, 9)
    tr2.set_tags(None, {"late": "yes"})
    assert tr2.spool_path.exists()
    with SweepTracker(sqlite_uri, "scaling", "sweep-b", flush_interval_s=0.05, sync_timeout_s=SYNC) as tr3:
        assert tr3.stats["replayed"] == 2 and tr3.flush(timeout=30)
    assert not tr3.spool_path.exists()
    parent, children = read_sweep_runs(sqlite_uri, "sweep-b")
    assert parent.data.tags["late"] == "yes"
    assert children[0].data.metrics["late_metric"] == 1.5
    assert parent.info.run_id == parent_id and len(children) == 1
    assert children[0].info.status == "FINISHED"
    hist = MlflowClient(sqlite_uri).get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in hist] == [(s, 10.0 - s) for s in range(9)]


def test_spool_replayed_by_next_tracker(sqlite_uri, tmp_path, caplog):
    """MLflow never reachable in process 1: nothing lost, process 2 delivers it all."""
    spool = tmp_path / "spool"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="orchestrator.io.tracking"):
        tr = SweepTracker(dead, "scaling", "sweep-c", flush_interval_s=0.05, buffer_dir=spool,
                          sync_timeout_s=5)
        assert tr.start(SPEC) == ""  # pending, not an exception
        assert tr.start_trial("trial_0", {"lr": 1e-3}) == ""
        for s in range(30):
            tr.log_metrics("trial_0", {"train_loss": 3.0 - s / 100}, s)
        tr.log_sweep_results({}, {"fit.E": 1.7}, {"fit": {"E": 1.7}}, {"frontier": _figure()})
        assert not tr.flush(timeout=1.0)
        left = tr.close(timeout=1.0)
    assert left > 0 and tr.spool_path.exists()
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1  # warned once, not per retry

    tr2 = SweepTracker(sqlite_uri, "scaling", "sweep-c", flush_interval_s=0.05, buffer_dir=spool)
    assert tr2.stats["replayed"] == left
    assert tr2.flush(timeout=60)
    assert tr2.close() == 0 and not tr2.spool_path.exists()
    parent, (child,) = read_sweep_runs(sqlite_uri, "sweep-c")
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    hist = MlflowClient(sqlite_uri).get_metric_history(child.info.run_id, "train_loss")
    assert [m.step for m in hist] == list(range(30))
    names = {a.path for a in MlflowClient(sqlite_uri).list_artifacts(parent.info.run_id, "plots")}
    assert names == {"plots/frontier.png"}


# `serial` (the file's other tests are not): on a clean-clone CI run with four test processes it
# failed once beside them, where it had passed in every run in the serial process.
@pytest.mark.serial
@pytest.mark.timeout(400)
def test_server_down_mid_sweep_loses_nothing(template_db, tmp_path):
    db = tmp_path / "server.db"
    shutil.copy(template_db, db)  # already migrated: the server starts faster
    server = MlflowServer(db, tmp_path / "art", free_port(), tmp_path / "server.log")
    startup = server.start()
    try:
        # SYNC: the first requests to a fresh server can take more than the default 10 s on a
        # loaded machine (CI once failed this first sync); a live server answers sooner.
        tr = SweepTracker(server.url, "scaling", "sweep-d", flush_interval_s=0.1,
                          buffer_dir=tmp_path / "spool", sync_timeout_s=SYNC)
        assert tr.start(SPEC)
        for t in range(2):
            assert tr.start_trial(f"trial_{t}", {"lr": 1e-3 * (t + 1)})
        for s in range(20):
            for t in range(2):
                tr.log_metrics(f"trial_{t}", _report(t, s), step=s)
        assert tr.flush(timeout=SYNC)

        server.kill()
        slowest = 0.0
        for s in range(20, 60):
            for t in range(2):
                t0 = time.perf_counter()
                tr.log_metrics(f"trial_{t}", _report(t, s), step=s)
                slowest = max(slowest, time.perf_counter() - t0)
            if s == 30:
                assert tr.start_trial("trial_2", {"lr": 3e-3}) == ""  # created later
            if s >= 30:
                tr.log_metrics("trial_2", _report(2, s), step=s)
            time.sleep(0.01)
        tr.end_trial("trial_0", "FINISHED")
        tr.log_sweep_results({"law": "chinchilla"}, {"fit.E": 1.7},
                             {"proposals": [{"budget": 1e18}]}, {"frontier": _figure()})
        assert not tr.flush(timeout=1.0)
        assert tr.stats["outages"] == 1 and tr.spool_path.exists()
        spooled = tr.spool_path.read_text().splitlines()
        assert len(spooled) >= 80  # every call since the outage is on disk

        restart = server.start()
        assert tr.flush(timeout=90)
        assert not tr.spool_path.exists()
        assert tr.close() == 0
        print(f"\nserver start {startup:.1f} s, restart {restart:.1f} s, "
              f"slowest log_metrics while down {1e3 * slowest:.2f} ms")

        parent, children = read_sweep_runs(server.url, "sweep-d")
        client = MlflowClient(server.url)
        assert [c.data.tags["scalesweep.trial_id"] for c in children] == \
            ["trial_0", "trial_1", "trial_2"]
        first = {0: 0, 1: 0, 2: 30}
        for t, child in enumerate(children):
            assert child.info.status == "FINISHED"
            assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
            for key in ("train_loss", "tokens"):
                hist = client.get_metric_history(child.info.run_id, key)
                # every step exactly once, with its value
                assert [(m.step, m.value) for m in hist] == \
                    [(s, _report(t, s)[key]) for s in range(first[t], 60)]
        arts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
        assert arts == {"plots/frontier.png"}
        assert parent.data.metrics["fit.E"] == pytest.approx(1.7)
        assert tr.stats["dropped"] == 0

        # The driver ends while the server is down; the resumed controller's tracker
        # replays the spool into the runs the first one created.
        spool = tmp_path / "spool-e"
        tr_b = SweepTracker(server.url, "scaling", "sweep-e", flush_interval_s=0.1,
                            buffer_dir=spool, sync_timeout_s=SYNC)
        parent_e = tr_b.start(SPEC)
        run_x = tr_b.start_trial("trial_x", {"lr": 1e-3})
        assert parent_e and run_x
        server.kill()
        tr_b.log_metrics("trial_x", {"train_loss": 2.0}, 0)
        assert tr_b.start_trial("trial_y", {"lr": 2e-3}) == ""
        for s in range(10):
            tr_b.log_metrics("trial_y", {"train_loss": 3.0 - s / 10}, s)
        tr_b.end_trial("trial_y", "KILLED")
        assert tr_b.close(timeout=1.0) > 0
        server.start()
        with SweepTracker(server.url, "scaling", "sweep-e", flush_interval_s=0.1,
                          buffer_dir=spool) as tr_c:
            assert tr_c.flush(timeout=60) and tr_c.stats["dropped"] == 0
        parent, children = read_sweep_runs(server.url, "sweep-e")
        assert parent.info.run_id == parent_e
        x, y = children
        assert x.info.run_id == run_x and y.data.tags["mlflow.parentRunId"] == parent_e
        assert y.info.status == "KILLED"
        assert [m.step for m in client.get_metric_history(y.info.run_id, "train_loss")] == \
            list(range(10))
        assert [m.value for m in client.get_metric_history(run_x, "train_loss")] == [2.0]
    finally:
        server.kill()
