"""Fault injection, all real (issue 7): nothing is mocked, every fault is a real one.

- worker death: a real DeepSpeed trial's process is SIGKILLed after its first checkpoint;
  Ray Tune restarts it and it resumes from that checkpoint (one row per (trial, step), no gap);
- controller death: `scalesweep run` is SIGKILLed (its whole process group: driver and
  local Ray cluster) mid-sweep; `scalesweep resume` finishes without rerunning what ended;
- MLflow down: a real `mlflow server` is killed for at least 10 s mid-sweep (reports go on
  meanwhile) and restarted on the same port and database; every metric of every trial reaches it;
- NaN loss: a real cause (lr 1e30 on the DeepSpeed trainer; an lr past the simulated world's
  divergence threshold) → the trial is marked diverged (store + MLflow) and the sweep fits;
- store writes: a store whose folder became a file, and a sweep directory under a file, give
  a clear StoreError / CLI error and leave the parts already written whole.

Simulated trials take no time, so `SCALESWEEP_REPORT_DELAY_S` (a test-only knob read by the
controller) makes each report sleep and a sweep last long enough to inject a fault mid-run.
Run under `flock /tmp/scalesweep-ray.lock` when other Ray clusters share the machine.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.config.trials import plan_grid
from orchestrator.config.spec import parse_spec
from orchestrator.io.store import ObservationStore, StoreError
from orchestrator.io.tracking import read_sweep_runs
from tests.integration.conftest import MlflowServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.serial]

# `done` and `step_time_s` are not charted (docs/mlflow.md): a flag, and a cumulative counter logged once as train_s
METRICS = ("tokens", "flops", "lr", "train_loss", "eval_loss", "tokens_per_s")


# ---------------------------------------------------------------- helpers
def _wait_for(predicate, timeout: float, what: str, poll: float = 0.05):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _raw_rows(sweep_dir: Path) -> list[dict]:
    """Every observation row ever written (parts, before deduplication)."""
    rows = []
    for part in sorted((sweep_dir / "store" / "observations").glob("part-*.parquet")):
        rows.extend(pq.read_table(part).to_pylist())
    return rows


def _logged_rows(sweep_dir: Path) -> list[dict]:
    """Rows in the store's write-ahead log (reported, not yet flushed into a part)."""
    rows = []
    for path in sorted((sweep_dir / "store" / "wal").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def _raw_events(sweep_dir: Path) -> list[dict]:
    rows = []
    for part in sorted((sweep_dir / "store" / "trials").glob("part-*.parquet")):
        rows.extend(pq.read_table(part).to_pylist())
    return rows


def _steps(store: ObservationStore, tid: str) -> list[int]:
    return [r["step"] for r in store.observations(tid).to_pylist()]


def _expected_steps(total: int, every: int) -> list[int]:
    return sorted(set(range(every, total + 1, every)) | {total})


@pytest.fixture(scope="module")
def ray_cluster():
    """One local 2-CPU Ray cluster for this module's in-process sweeps, run one after the other
    (each start and stop of a cluster costs ~9 s of CPU)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _run_in_ray(spec, spec_path: Path):
    """The sweep through the real controller, on the module's Ray cluster (`ray_cluster`)."""
    from orchestrator.app.session import run_sweep

    return run_sweep(spec, str(spec_path), show_progress=False)


def _write_spec(root: Path, data: dict) -> tuple:
    path = root / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_spec(data), path


def _assert_mlflow_matches_store(uri: str, spec, store: ObservationStore) -> dict:
    """Every finite metric of every store row is in MLflow, once, at its step, with its value."""
    parent, children = read_sweep_runs(uri, spec.name, spec.tracking.experiment)
    client = MlflowClient(uri)
    trials = store.trials()
    runs = {c.data.tags["scalesweep.trial_id"]: c for c in children}
    assert set(runs) == set(trials), "one MLflow child run per trial"
    for tid, run in runs.items():
        rows = store.observations(tid).to_pylist()
        for key in METRICS:
            want = [(r["step"], float(r[key])) for r in rows if math.isfinite(float(r[key]))]
            got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert [g[0] for g in got] == [w[0] for w in want], (tid, key)  # every step, once
            assert [g[1] for g in got] == pytest.approx([w[1] for w in want], rel=1e-12), (tid, key)
    return runs


# ---------------------------------------------------------------- 1 + 4: worker death, real NaN (DeepSpeed)
DS_STEPS = 24  # of 1024 tokens: an evaluation and a checkpoint every 4, the kill after the first
DS_SPEC = {
    "name": "faults-ds",
    "model": {"n_params": [20000], "seq_len": 64},
    "tokens": {"values": [DS_STEPS * 1024]},
    "learning_rates": [0.003, 1e30],  # 1e30: a real divergence (NaN loss within a few steps)
    "batch_sizes": [1024],
    "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.3},
    "eval": {"every": 4, "tokens": 2048},
    "fit": {"bootstrap": 0},
    "checkpoints": {"max_failures": 2},  # every: none = a checkpoint at every evaluation
    # one trial at a time: the second reuses the first's process (torch and DeepSpeed imported once)
    "resources": {"max_concurrent": 1},
}


@pytest.fixture(scope="module")
def killed_worker(ray_cluster, tmp_path_factory):
    """A DeepSpeed sweep whose healthy trial's process is SIGKILLed after its first checkpoint."""
    root = tmp_path_factory.mktemp("faults-ds")
    spec, spec_path = _write_spec(root, dict(DS_SPEC, output_dir=str(root / "sweep")))
    healthy = next(t for t in plan_grid(spec) if t.lr < 1)
    ckpt = spec.sweep_dir() / "checkpoints" / healthy.trial_id
    killed: dict = {}

    def killer():
        try:
            tag = _wait_for(lambda: (ckpt / "latest").exists() and (ckpt / "latest").read_text().strip(),
                            240, "the first checkpoint", poll=0.02)
            pid = int((ckpt / "worker-0.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            killed.update(pid=pid, tag=tag)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            killed["error"] = repr(exc)

    os.environ["SCALESWEEP_REPORT_DELAY_S"] = "0.5"  # ~3 s of reports: time to kill mid-run
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        outcome = _run_in_ray(spec, spec_path)
    finally:
        os.environ.pop("SCALESWEEP_REPORT_DELAY_S", None)
    thread.join(timeout=5)
    return spec, outcome, healthy, killed


def test_killed_worker_resumes_from_its_checkpoint(killed_worker):
    spec, outcome, healthy, killed = killed_worker
    assert "error" not in killed, killed
    tid = healthy.trial_id
    store = ObservationStore(outcome.sweep_dir)
    rec = store.trials()[tid]
    assert rec["status"] == "finished", rec
    assert rec["summary"]["restarts"] == 1
    # exactly one row per (trial, step), every evaluation step present (no gap)
    assert _steps(store, tid) == _expected_steps(DS_STEPS, 4)
    # resumed from the checkpoint, not from scratch: the steps up to the checkpoint were
    # reported once (a restart from step 0 would have reported them again)
    ckpt_step = int(killed["tag"].removeprefix("step"))
    raw = [r["step"] for r in _raw_rows(outcome.sweep_dir) if r["trial_id"] == tid]
    assert all(raw.count(s) == 1 for s in _expected_steps(DS_STEPS, 4) if s <= ckpt_step), (ckpt_step, raw)
    assert sorted(set(raw)) == _expected_steps(DS_STEPS, 4)
    # a new process ran the rest, and checkpointed to the end
    ckpt = outcome.sweep_dir / "checkpoints" / tid
    assert int((ckpt / "worker-0.pid").read_text()) != killed["pid"]
    assert (ckpt / "latest").read_text().strip() == f"step{DS_STEPS}"
    # the restart is visible in MLflow; each step logged once despite re-sent reports
    runs = _assert_mlflow_matches_store(spec.tracking_uri(), spec, store)
    assert runs[tid].data.tags["scalesweep.restarts"] == "1"
    assert runs[tid].info.status == "FINISHED"


def test_nan_loss_on_the_real_trainer_is_marked_diverged(killed_worker):
    spec, outcome, healthy, _ = killed_worker
    store = ObservationStore(outcome.sweep_dir)
    (tid,) = [t for t, rec in store.trials().items() if t != healthy.trial_id]
    rec = store.trials()[tid]
    assert rec["status"] == "diverged" and rec["summary"]["reason"] == "non-finite loss", rec
    last = store.observations(tid).to_pylist()[-1]
    assert last["done"] and not math.isfinite(last["train_loss"]) and last["step"] < DS_STEPS
    parent, children = read_sweep_runs(spec.tracking_uri(), spec.name)
    (child,) = [c for c in children if c.data.tags["scalesweep.trial_id"] == tid]
    assert child.data.tags["scalesweep.status"] == "diverged"
    assert outcome.statuses == {"finished": 1, "diverged": 1}


# ---------------------------------------------------------------- simulated sweeps (2, 3 + 4 below)
SIM = {
    "model": {"n_params": [20000, 50000, 125000]},
    "tokens": {"values": [262144, 524288]},  # 32 and 64 steps of 8192 tokens
    "learning_rates": [0.03],
    "batch_sizes": [8192],
    "trainer": {"backend": "simulated", "world": "tiny"},
    "eval": {"every": 8},
    "fit": {"bootstrap": 20},
}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.app.cli", *args]


# ---------------------------------------------------------------- 3 + 4: MLflow server down >= 10 s; NaN → diverged
OUTAGE_S = 10.0  # the tracker's retries back off 0.5, 1, 2, 4, 8 s meanwhile
# How long the sweep's end waits for the restarted server (`tracking.close_timeout_s`, default 30 s):
# on a loaded machine the restart (a new `mlflow server` process) can take longer than the rest of
# the sweep plus 30 s, and what the server has not taken would stay in the spool.
CLOSE_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def mlflow_outage(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults-mlflow")
    db = root / "server.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # migrate once: the server starts faster
    server = MlflowServer(db, root / "artifacts", free_port(), root / "server.log")
    server.start()
    # lr 2.0 is past the tiny world's divergence threshold (6 x lr*) for every size: those
    # trials' losses blow up and turn NaN mid-run; the 0.03 ones fit the law.
    data = dict(SIM, name="faults-mlflow", output_dir=str(root / "sweep"), learning_rates=[0.03, 2.0],
                tracking={"uri": server.url, "close_timeout_s": CLOSE_TIMEOUT_S})
    spec, spec_path = _write_spec(root, data)
    events: dict = {}

    def outage():
        try:
            reader = [None]

            def reports():
                if not (spec.sweep_dir() / "store").is_dir():
                    return False
                reader[0] = reader[0] or ObservationStore(spec.sweep_dir())
                return reader[0].observations().num_rows >= 3
            _wait_for(reports, 240, "the first reports", poll=0.2)
            server.kill()
            events["down"] = time.time()
            # Down until the sweep has gone on without it (more reports stored) and for at least
            # OUTAGE_S: long enough for failed deliveries and backoff, shorter than the sweep.
            at_kill = reader[0].observations().num_rows
            _wait_for(lambda: reader[0].observations().num_rows >= at_kill + 4, 240, "reports during the outage",
                      poll=0.2)
            time.sleep(max(0.0, OUTAGE_S - (time.time() - events["down"])))
            server.start()
            events["up"] = time.time()
        except BaseException as exc:  # noqa: BLE001
            events["error"] = repr(exc)

    handler = _Records()
    logging.getLogger("orchestrator.io.tracking").addHandler(handler)
    # ~20 s of reports on two CPUs: the outage starts after the first few and lasts past the sweep's
    # trials on a loaded machine; the sweep's end then delivers everything once the server is back.
    os.environ["SCALESWEEP_REPORT_DELAY_S"] = "0.5"
    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    try:
        outcome = _run_in_ray(spec, spec_path)
        thread.join(timeout=CLOSE_TIMEOUT_S)
        yield spec, outcome, server, events, handler.messages
    finally:
        os.environ.pop("SCALESWEEP_REPORT_DELAY_S", None)
        logging.getLogger("orchestrator.io.tracking").removeHandler(handler)
        server.kill()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_mlflow_outage_loses_no_metric(mlflow_outage):
    spec, outcome, server, events, messages = mlflow_outage
    assert "error" not in events and "up" in events, events
    store = ObservationStore(outcome.sweep_dir)
    # the sweep kept running while MLflow was down: reports arrived during the outage
    during = [r for r in store.observations().to_pylist() if events["down"] < r["wall_time"] < events["up"]]
    assert during, "no report while the server was down"
    _assert_mlflow_matches_store(server.url, spec, store)
    parent, children = read_sweep_runs(server.url, spec.name)
    assert parent.info.status == "FINISHED"
    client = MlflowClient(server.url)
    assert {"plots/loss_vs_compute.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert any("unreachable" in m for m in messages), messages
    assert any("reachable again" in m for m in messages), messages
    assert not list((outcome.sweep_dir / "mlflow-spool").glob("spool-*.jsonl")), "spool left behind"


def test_nan_trials_marked_diverged_and_sweep_fits(mlflow_outage):
    spec, outcome, server, _, _ = mlflow_outage
    store = ObservationStore(outcome.sweep_dir)
    trials = store.trials()
    diverged = {t for t, r in trials.items() if r["config"]["lr"] == 2.0}
    assert len(diverged) == 6 and all(trials[t]["status"] == "diverged" for t in diverged)
    assert all(r["status"] == "finished" for t, r in trials.items() if t not in diverged)
    for tid in diverged:
        last = store.observations(tid).to_pylist()[-1]
        assert last["done"] and math.isnan(last["eval_loss"]), last
    runs = {c.data.tags["scalesweep.trial_id"]: c for c in read_sweep_runs(server.url, spec.name)[1]}
    assert all(runs[t].data.tags["scalesweep.status"] == "diverged" for t in diverged)
    # the sweep went on and fitted the law on the finished trials
    fit = json.loads((outcome.sweep_dir / "fit.json").read_text())
    assert fit["law"] is not None and all(math.isfinite(v) for v in fit["law"]["params"].values())
    assert len(fit["proposals"]) == len(spec.budget.targets)


# ---------------------------------------------------------------- 2: controller death, `scalesweep resume`
def test_controller_killed_then_resumed(tmp_path):
    import ray

    ray.shutdown()  # the in-process sweeps' cluster (they ran before): not idle beside this sweep's own
    spec, spec_path = _write_spec(tmp_path, dict(SIM, name="faults-ctl", output_dir=str(tmp_path / "sweep")))
    sweep_dir = spec.sweep_dir()
    env = {**os.environ, "SCALESWEEP_REPORT_DELAY_S": "0.4", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen(_cli("run", str(spec_path), "--no-progress"), stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    reader = None
    try:
        def progressed():
            nonlocal reader
            if proc.poll() is not None:
                raise AssertionError(f"the sweep ended before it could be killed: {(tmp_path / 'run.log').read_text()[-3000:]}")
            if not (sweep_dir / "store").is_dir():
                return False
            reader = reader or ObservationStore(sweep_dir)
            states = [r["status"] for r in reader.trials().values()]
            return states.count("finished") >= 2 and "running" in states
        _wait_for(progressed, 240, "two finished trials", poll=0.1)
        time.sleep(0.7)  # a few more reports of the running trials (some not yet flushed)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == -signal.SIGKILL

    store = ObservationStore(sweep_dir)
    before = store.trials()
    ended = {t for t, r in before.items() if r["status"] in ("finished", "diverged", "stopped")}
    interrupted = {t for t, r in before.items() if r["status"] == "running"}
    assert len(ended) >= 2 and interrupted
    raw_before = _raw_rows(sweep_dir) + _logged_rows(sweep_dir)  # parts + the write-ahead log
    events_before = _raw_events(sweep_dir)
    ckpt_step = {}
    for tid in interrupted:  # where each interrupted trial will resume
        state = sweep_dir / "checkpoints" / tid / "simulated.json"
        ckpt_step[tid] = json.loads(state.read_text())["step"] if state.exists() else 0

    env.pop("SCALESWEEP_REPORT_DELAY_S")  # nothing is killed any more: the rest runs at full speed
    r = subprocess.run(_cli("resume", str(sweep_dir), "--no-progress"), capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "done" in r.stdout

    store = ObservationStore(sweep_dir)
    after = store.trials()
    planned = {t.trial_id: t for t in plan_grid(spec)}
    assert set(after) == set(planned) and {rec["status"] for rec in after.values()} == {"finished"}
    # completed trials were not rerun: no new event, no new row
    old_events = {e["seq"] for e in events_before}
    new_events = [e for e in _raw_events(sweep_dir) if e["seq"] not in old_events]
    assert not [e for e in new_events if e["trial_id"] in ended], new_events
    old_rows = {r["seq"] for r in raw_before}
    new_rows = [r for r in _raw_rows(sweep_dir) if r["seq"] not in old_rows]
    assert not [r for r in new_rows if r["trial_id"] in ended]
    # every trial: exactly one row per (trial, step), no gap -- including the interrupted
    # ones, which resumed from their checkpoints (steps up to it were not sent again; the
    # reports the killed controller had logged but not flushed were recovered)
    for tid, t in planned.items():
        assert _steps(store, tid) == _expected_steps(t.D // t.batch, 8), tid
    for tid in interrupted:
        final = _steps(store, tid)[-1]
        resent = [r["step"] for r in new_rows if r["trial_id"] == tid]
        assert resent and all(s > ckpt_step[tid] for s in resent if s != final), (tid, ckpt_step[tid], resent)
    # one MLflow parent run (reused by the resumed controller) and one child per trial
    parent, children = read_sweep_runs(spec.tracking_uri(), spec.name)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_id == json.loads((sweep_dir / "sweep.json").read_text())["mlflow_parent_run"]
    assert sorted(c.data.tags["scalesweep.trial_id"] for c in children) == sorted(planned)
    assert all(c.info.status == "FINISHED" for c in children)
    # the fit ran on every trial, the earlier ones included (planner state from the store)
    fit = json.loads((sweep_dir / "fit.json").read_text())
    assert fit["law"] is not None and all(math.isfinite(v) for v in fit["law"]["params"].values())


# ---------------------------------------------------------------- 5: store writes that fail
def test_store_write_failure_is_a_clear_error_and_corrupts_nothing(tmp_path):
    store = ObservationStore(tmp_path)
    for step in (10, 20):
        store.append("t", {"step": step, "train_loss": 3.0, "eval_loss": 3.1})
    store.set_status("t", "running", config={"N": 1})
    store.flush()
    # The observations folder becomes a file (what a vanished mount or a full disk does to a
    # write: it fails). Tests run as root, so chmod would not stop a write; this does.
    obs = tmp_path / "store" / "observations"
    obs.rename(tmp_path / "observations.saved")
    obs.write_text("not a folder")
    store.append("t", {"step": 30, "train_loss": 2.9, "eval_loss": 3.0})
    with pytest.raises(StoreError, match=r"(?i)cannot write to the store at \S*observations: .*not a directory"):
        store.flush()
    obs.unlink()
    (tmp_path / "observations.saved").rename(obs)
    # the parts written before are whole and no temporary file is left behind
    assert not list(obs.glob(".*.tmp"))
    assert [r["step"] for r in ObservationStore(tmp_path).observations().to_pylist()] == [10, 20]
    # the failed rows were kept: the next flush (the disk is back) writes them
    store.flush()
    assert [r["step"] for r in ObservationStore(tmp_path).observations().to_pylist()] == [10, 20, 30]

    # A store that cannot be created at all.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the store"):
        ObservationStore(blocker / "sweep")


def test_cli_run_into_an_unwritable_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(dict(SIM, name="faults-io", output_dir=str(blocker / "sweep"))))
    r = subprocess.run(_cli("run", str(spec_path), "--no-progress"), capture_output=True, text=True, timeout=120)
    # refused at validation now (issue 16), before Ray starts: exit 2 naming the field
    assert r.returncode == 2, r.stdout + r.stderr
    assert "output_dir:" in r.stderr and "is a file, not a directory" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert not blocker.is_dir()
    # a directory that becomes unwritable after validation: the controller's own clear error
    from orchestrator.app.session import prepare_dir

    with pytest.raises(StoreError, match="cannot write the sweep directory"):
        prepare_dir(parse_spec(dict(SIM, name="faults-io", output_dir=str(blocker / "sweep"))), None)
