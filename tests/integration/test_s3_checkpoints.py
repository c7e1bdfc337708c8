"""Trial checkpoints and Ray Tune's files in the bucket (issue 16: a cluster with no shared path),
against moto's S3 server (a real HTTP S3 API in its own process) on loopback, nothing mocked:

- the simulated and the DeepSpeed trainer with `checkpoint_mirror`: a trial whose process dies
  mid-run continues on a "fresh node" (an empty local checkpoint folder) from the checkpoint in the
  bucket, reporting nothing twice; a node whose local folder is older follows the bucket; the
  bucket keeps what the local folder keeps (DeepSpeed's pruned tags go there too); a WSD branch
  on another node starts from its trunk's checkpoint in the bucket;
- a whole sweep through the real controller with `store: s3://...` (a 1-worker and a 2-worker
  Ray Train trial, Train's storage in the bucket as well): a running trial's process is
  SIGKILLed right after its local checkpoint folder was deleted (so only the bucket holds its
  checkpoint) and Tune's restart continues from the bucket's; the sweep is then stopped (SIGTERM),
  its sweep directory DELETED, and the same spec run from an empty directory (a controller on
  another machine) finishes every trial from the bucket alone: no step reported twice after the
  stop, every step in the store once, Tune's experiment state in the bucket, none on local disk.

Skipped only when moto's server or boto3 is not installed (both in the `test` extra).
Run under `flock /tmp/scalesweep-ray.lock` when other Ray clusters share the machine.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import replace

import pytest

from orchestrator.config.trials import plan_grid
from orchestrator.config.spec import parse_spec
from orchestrator.io.store import ObservationStore, drop_checkpoints_past_reports
from tests.integration.conftest import run_real_sweep
from tests.integration.test_s3_store import BUCKET, _keys, s3  # noqa: F401  (s3: the moto server fixture)
from trainers.contract import Schedule, TrialConfig

pytestmark = pytest.mark.integration


def _object(s3, key: str):
    try:
        return s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except s3.client().exceptions.NoSuchKey:
        return None


class NodeLost(RuntimeError):
    """The trial's process dies here (its node is gone)."""


def _dies_at(step: int, into: list):
    def report(metrics):
        if metrics["step"] == step:
            raise NodeLost(step)
        into.append(metrics)
    return report


def test_simulated_trial_continues_from_the_bucket_on_any_node(s3, tmp_path):
    from trainers.simulated import train

    mirror = f"s3://{BUCKET}/sweeps/sim/checkpoints/t0"
    cfg = TrialConfig("t0", n_params=20_000, tokens=32 * 1024, lr=1e-3, batch_tokens=1024, eval_every=2,
                      checkpoint_every=8, checkpoint_mirror=mirror, checkpoint_dir=str(tmp_path / "a" / "t0"))
    whole: list = []
    train(replace(cfg, checkpoint_dir=None, checkpoint_mirror=None), whole.append, "tiny")  # never interrupted

    got: list = []
    with pytest.raises(NodeLost):  # node a: checkpoints at 8 and 16, dies at the report of step 20
        train(cfg, _dies_at(20, got), "tiny")
    assert json.loads(_object(s3, "sweeps/sim/checkpoints/t0/simulated.json")) == {"step": 16}
    b = replace(cfg, checkpoint_dir=str(tmp_path / "b" / "t0"))  # a fresh node: nothing local
    with pytest.raises(NodeLost):  # continues after 16 (18 and 20 again), checkpoints at 24, dies at 26
        train(b, _dies_at(26, got), "tiny")
    assert json.loads((tmp_path / "b" / "t0" / "simulated.json").read_text()) == {"step": 24}
    train(cfg, got.append, "tiny")  # node a again, its local checkpoint at 16: the bucket's (24) wins
    steps = [int(r["step"]) for r in got]
    assert steps == list(range(2, 20, 2)) + [18, 20, 22, 24] + list(range(26, 33, 2)), steps
    by_step = {int(r["step"]): r for r in got}
    assert [by_step[int(r["step"])] for r in whole] == whole  # the same losses an uninterrupted run reports
    assert json.loads(_object(s3, "sweeps/sim/checkpoints/t0/simulated.json")) == {"step": 32}


def test_simulated_branch_starts_from_its_trunks_point_in_the_bucket(s3, tmp_path):
    """A WSD trunk's branch point reaches the bucket; its branch, on a node with none of the trunk's
    files, reads it from there (and fails without it)."""
    from trainers.simulated import train

    root = f"s3://{BUCKET}/sweeps/simbranch/checkpoints"
    trunk = TrialConfig("t", n_params=20_000, tokens=40 * 1024, lr=1e-3, batch_tokens=1024, eval_every=10,
                        schedule=Schedule("wsd", warmup=0.1, decay=0.2), checkpoint_every=1000,
                        checkpoint_steps=(16,), checkpoint_mirror=f"{root}/t", checkpoint_dir=str(tmp_path / "a" / "t"))
    train(trunk, lambda r: None, "tiny")
    assert json.loads(_object(s3, "sweeps/simbranch/checkpoints/t/step16/state.json"))["step"] == 16
    node_b = tmp_path / "b"
    branch = replace(trunk, trial_id="b", tokens=20 * 1024, checkpoint_steps=(), checkpoint_mirror=f"{root}/b",
                     checkpoint_dir=str(node_b / "b"), branch_from=str(node_b / "t" / "step16"), branch_step=16)
    got: list = []
    train(branch, got.append, "tiny")
    assert [int(r["step"]) for r in got] == [20]
    assert json.loads((node_b / "b" / "restored.json").read_text())["trial_id"] == "t"
    with pytest.raises(FileNotFoundError, match="no trunk checkpoint"):
        train(replace(branch, trial_id="c", checkpoint_mirror=f"{root}/c", checkpoint_dir=str(node_b / "c"),
                      branch_from=str(node_b / "none" / "step16")), got.append, "tiny")


def test_deepspeed_trial_and_its_branch_restore_from_the_bucket(s3, tmp_path, tmp_path_factory):
    from trainers.deepspeed_trainer import train

    cache = str(tmp_path_factory.mktemp("corpus"))
    root = f"s3://{BUCKET}/sweeps/ds/checkpoints"
    cfg = TrialConfig("t", n_params=20_000, tokens=30 * 2048, lr=3e-3, batch_tokens=2048, seq_len=64,
                      schedule=Schedule(kind="wsd", warmup=0.1, decay=0.2), eval_every=10, eval_tokens=2048,
                      zero_stage=1, data_cache=cache, micro_batch=16, checkpoint_every=5, checkpoint_steps=(15,),
                      checkpoint_dir=str(tmp_path / "a" / "t"), checkpoint_mirror=f"{root}/t")
    got: list = []
    with pytest.raises(NodeLost):  # saves at 5, 10, 15 (5 and 10 pruned); dies at the report of step 20
        train(cfg, _dies_at(20, got))
    keys = _keys(s3, "sweeps/ds/checkpoints/t/")
    assert _object(s3, "sweeps/ds/checkpoints/t/latest") == b"step15"
    assert {k.split("/")[0] for k in keys} == {"latest", "step15"}, keys  # pruned in the bucket too
    assert any(k.endswith("model_states.pt") for k in keys) and any(k.endswith("optim_states.pt") for k in keys)

    on_b = replace(cfg, checkpoint_dir=str(tmp_path / "b" / "t"))  # a fresh node
    summary = train(on_b, got.append)
    assert [int(r["step"]) for r in got] == [10, 20, 30]  # resumed at 15: 10 was not reported again
    assert summary.steps == 30 and got[-1]["tokens"] == 30 * 2048
    assert {k.split("/")[0] for k in _keys(s3, "sweeps/ds/checkpoints/t/")} == {"latest", "step15", "step30"}

    # A WSD cooldown branch from the trunk's step-15 checkpoint, on a node that has none of the trunk's files.
    c = tmp_path / "c"
    branch = replace(cfg, trial_id="b", tokens=40 * 2048, checkpoint_steps=(), checkpoint_dir=str(c / "b"),
                     checkpoint_mirror=f"{root}/b", branch_from=str(c / "t" / "step15"), branch_step=15)
    branched: list = []
    train(branch, branched.append)
    assert [int(r["step"]) for r in branched] == [20, 30, 40]
    assert branched[0]["lr"] == pytest.approx(3e-3) and branched[-1]["lr"] == pytest.approx(3e-4)
    assert _object(s3, "sweeps/ds/checkpoints/b/latest") == b"step40"


def test_a_checkpoint_past_the_stores_last_report_is_dropped(s3, tmp_path):
    """A controller lost with its disk (its write-ahead log) lost the reports after step 8 while the
    trial checkpointed at 16: the next controller drops that checkpoint, so the trial reruns from 0
    rather than leave steps 10-16 out of the store; one within what the store recorded stays."""
    from trainers.simulated import train

    uri = f"s3://{BUCKET}/sweeps/lost"
    store = ObservationStore(uri)
    cfg = {tid: TrialConfig(tid, n_params=20_000, tokens=32 * 1024, lr=1e-3, batch_tokens=1024, eval_every=2,
                            checkpoint_every=8, checkpoint_dir=str(tmp_path / tid),
                            checkpoint_mirror=f"{uri}/checkpoints/{tid}") for tid in ("ahead", "behind")}
    for tid, c in cfg.items():
        store.set_status(tid, "stopped-by-user", config={"N": 2e4})
        with pytest.raises(NodeLost):
            train(c, _dies_at(18, []), "tiny")  # checkpoints at 8 and 16 (local and in the bucket)
    for step in (2, 4, 6, 8):
        store.append("ahead", {"step": step, "tokens": 1024 * step, "lr": 1e-3, "train_loss": 3.0})
    for step in range(2, 18, 2):
        store.append("behind", {"step": step, "tokens": 1024 * step, "lr": 1e-3, "train_loss": 3.0})
    store.flush()

    assert drop_checkpoints_past_reports(ObservationStore(uri), f"{uri}/checkpoints") == {"ahead": 16}
    assert _keys(s3, "sweeps/lost/checkpoints/ahead/") == []
    assert json.loads(_object(s3, "sweeps/lost/checkpoints/behind/simulated.json")) == {"step": 16}
    got: dict = {tid: [] for tid in cfg}
    for tid, c in cfg.items():  # the same node, its local folder still at 16: the bucket's word wins
        train(c, got[tid].append, "tiny")
    assert [int(r["step"]) for r in got["ahead"]] == list(range(2, 33, 2))  # from 0: no gap
    assert [int(r["step"]) for r in got["behind"]] == list(range(18, 33, 2))


PROGRAM = """\
import json, os, sys
cfg = json.load(open(sys.argv[1]))
ckpt = cfg["checkpoint_dir"]
start = int(open(os.path.join(ckpt, "step")).read()) if cfg["resume"] else 0
for name in os.listdir(ckpt):
    if name.startswith("old-"):
        os.remove(os.path.join(ckpt, name))  # a checkpoint the program prunes: gone from the bucket too
with open(cfg["metrics_file"], "a") as out:
    for s in range(start + 1, 5):
        with open(os.path.join(ckpt, ".tmp"), "w") as fh:
            fh.write(str(s))
        os.replace(os.path.join(ckpt, ".tmp"), os.path.join(ckpt, "step"))
        open(os.path.join(ckpt, f"old-{s}"), "w").write("x" * 100_000)
        out.write(json.dumps({"step": s, "tokens": 256 * s, "lr": 1e-3, "train_loss": 5.0 - s, "eval_loss": None}) + "\\n")
        out.flush()
        if s == 2 and cfg["attempt"] == 0:
            sys.exit(3)  # the first attempt crashes after its step-2 checkpoint
"""


def test_command_trial_continues_from_the_bucket_on_another_node(s3, tmp_path):
    from trainers.command import CommandSettings, TrainerProcessError, run_command

    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    settings = CommandSettings(command=(sys.executable, str(prog), "{config}"), cwd=str(tmp_path))
    cfg = TrialConfig("c1", n_params=1000, tokens=4 * 256, lr=1e-3, batch_tokens=256, seq_len=64,
                      checkpoint_dir=str(tmp_path / "a" / "ck"), checkpoint_mirror=f"s3://{BUCKET}/sweeps/cmd/checkpoints/c1")
    got: list = []
    with pytest.raises(TrainerProcessError, match="ended with exit status 3"):
        run_command(cfg, got.append, settings, tmp_path / "a" / "run", n_params=1000)
    assert _keys(s3, "sweeps/cmd/checkpoints/c1/") == ["old-1", "old-2", "step"]  # what it left, after it exited
    on_b = replace(cfg, checkpoint_dir=str(tmp_path / "b" / "ck"))  # a restart on another node: a new attempt
    run_command(on_b, got.append, settings, tmp_path / "b" / "run", n_params=1000)
    assert [int(r["step"]) for r in got] == [1, 2, 3, 4] and got[-1]["done"] == 1.0
    doc = json.loads((tmp_path / "b" / "run" / "attempt-0" / "config.json").read_text())
    assert doc["resume"] is True and doc["checkpoint_mirror"] == cfg.checkpoint_mirror
    assert _keys(s3, "sweeps/cmd/checkpoints/c1/") == ["old-3", "old-4", "step"]
    assert _object(s3, "sweeps/cmd/checkpoints/c1/step") == b"4"


def test_python_trainer_wrapped_by_mirrored_continues_from_the_bucket(s3, tmp_path):
    """`mirrored` (what the python backend's trial process would wrap the user's function with):
    the folder goes up when the function raises, and comes down on a fresh node."""
    from trainers.checkpoint_mirror import mirrored

    def user_train(config, report):
        path = os.path.join(config.checkpoint_dir, "state.json")
        start = json.load(open(path))["step"] if os.path.exists(path) else 0
        os.makedirs(config.checkpoint_dir, exist_ok=True)
        for step in range(start + 1, 5):
            json.dump({"step": step}, open(path, "w"))
            report({"step": step})
            if step == 2 and start == 0:
                raise NodeLost(step)

    cfg = TrialConfig("p1", n_params=1000, tokens=1024, lr=1e-3, batch_tokens=256,
                      checkpoint_dir=str(tmp_path / "a" / "p1"), checkpoint_mirror=f"s3://{BUCKET}/sweeps/py/p1")
    got: list = []
    with pytest.raises(NodeLost):
        mirrored(user_train)(cfg, got.append)
    assert json.loads(_object(s3, "sweeps/py/p1/state.json")) == {"step": 2}
    mirrored(user_train)(replace(cfg, checkpoint_dir=str(tmp_path / "b" / "p1")), got.append)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert json.loads(_object(s3, "sweeps/py/p1/state.json")) == {"step": 4}


STEPS = list(range(8, 65, 8))  # 64 steps of 8192 tokens, a report (and a checkpoint) every 8
SPEC = {
    "name": "s3-checkpoints",
    "model": {"n_params": [20000, 50000]},
    "tokens": {"values": [524288]},
    "learning_rates": [0.03],
    "batch_sizes": [8192],
    "trainer": {"backend": "simulated", "world": "tiny"},
    "eval": {"every": 8},  # few reports: a Ray Train trial's report costs ~a second here
    "checkpoints": {"every": 8, "max_failures": 2},
    "fit": {"bootstrap": 0},
    # the larger model: a 2-worker Ray Train trial, whose Train storage is in the bucket too (it
    # needs both CPUs, so the trials run one after the other, the smaller first)
    "resources": {"rules": [{"min_n_params": 50000, "workers": 2}]},
}


def _wait_for(predicate, timeout: float, what: str):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _raw_rows(uri: str) -> list[dict]:
    """Every report row in the bucket's parts, before deduplication (a re-sent report is a second row)."""
    loc = ObservationStore(uri).location
    return [r for p in loc.parts("observations") for r in loc.read_table(p).to_pylist()]


@pytest.mark.serial  # a process kill, SIGTERM to this process, its own Ray cluster
def test_sweep_restores_from_the_bucket_after_a_kill_and_without_its_directory(s3, tmp_path, monkeypatch, request):
    import ray

    from orchestrator.app.stopping import SweepInterrupted

    uri = f"s3://{BUCKET}/sweeps/ckpt"
    data = {**SPEC, "store": uri}
    head_a = tmp_path / "head-a"
    victim = plan_grid(parse_spec({**data, "output_dir": str(head_a)}))[0].trial_id
    local = head_a / "checkpoints" / victim
    key = f"sweeps/ckpt/checkpoints/{victim}/simulated.json"
    seen: dict = {}

    def fault():
        try:
            seen["killed_after"] = _wait_for(lambda: (b := _object(s3, key)) and json.loads(b)["step"], 120,
                                              "the first checkpoint in the bucket")
            pid = int((local / "worker-0.pid").read_text())
            shutil.rmtree(local)  # only the bucket holds the checkpoint now: a restart elsewhere
            os.kill(pid, signal.SIGKILL)
            seen["killed_pid"] = pid
            # the restarted trial checkpoints again, past the bucket's checkpoint at the kill
            _wait_for(lambda: json.loads(_object(s3, key))["step"] > seen["killed_after"] + 8, 120,
                      "a checkpoint of the restarted trial")
            os.kill(os.getpid(), signal.SIGTERM)  # `scalesweep stop`: trials checkpoint at their next report
        except BaseException as exc:  # noqa: BLE001 -- reported by the test
            seen["error"] = repr(exc)

    monkeypatch.setenv("SCALESWEEP_REPORT_DELAY_S", "0.5")
    # One Ray cluster for both controllers (a cluster outlives its controller's machine; a start and
    # stop costs ~9 s of CPU); the dashboard serves the State API Ray Train's cleanup needs.
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)
    request.addfinalizer(ray.shutdown)
    thread = threading.Thread(target=fault, daemon=True)
    thread.start()
    with pytest.raises(SweepInterrupted):
        run_real_sweep(tmp_path, data, "head-a")
    thread.join(timeout=10)
    assert "error" not in seen, seen

    store = ObservationStore(uri)
    stopped = {t: r for t, r in store.trials().items() if r["status"] == "stopped-by-user"}
    assert victim in stopped, store.trials()
    raw = [int(r["step"]) for r in _raw_rows(uri) if r["trial_id"] == victim]
    # restored from the bucket's checkpoint, not from step 0: what it covered was reported once
    assert all(raw.count(s) == 1 for s in STEPS if s <= seen["killed_after"]), (seen, raw)
    at_stop = {victim: json.loads(_object(s3, key))["step"]}
    # the stop's checkpoint is in the bucket, at the last step the store recorded
    assert at_stop[victim] == max(int(r["step"]) for r in store.observations(victim).to_pylist()), at_stop

    keys = _keys(s3, "sweeps/ckpt/")
    assert any(k.startswith(f"ray/{SPEC['name']}/") for k in keys), keys  # Tune's experiment state, in the bucket
    assert not (head_a / "ray").exists()
    shutil.rmtree(head_a)  # the controller's machine is gone, with every local file

    t_resume = time.time()
    monkeypatch.setenv("SCALESWEEP_REPORT_DELAY_S", "0")
    _, outcome = run_real_sweep(tmp_path, data, "head-b")  # the same spec, an empty directory elsewhere
    assert outcome.statuses == {"finished": 2}, outcome.statuses
    store = ObservationStore(uri)
    trials = store.trials()
    for t in trials:
        assert [int(r["step"]) for r in store.observations(t).to_pylist()] == STEPS, t
        assert json.loads(_object(s3, f"sweeps/ckpt/checkpoints/{t}/simulated.json")) == {"step": 64}
    (pair,) = [t for t, r in trials.items() if r["config"]["workers"] == 2]
    assert any(k.startswith(f"ray/train-{pair}/") for k in _keys(s3, "sweeps/ckpt/")), "Ray Train's storage"
    for t, step in at_stop.items():  # continued after its checkpoint in the bucket: nothing before it again
        again = [int(r["step"]) for r in _raw_rows(uri) if r["trial_id"] == t and r["wall_time"] >= t_resume]
        assert again and min(again) > step, (t, step, again)
    assert not list((outcome.sweep_dir / "checkpoints").glob("*/step*"))
