"""Downstream tasks and a trainer's own metrics through your own trainer (issues 14 and 18), for real:
a local Ray cluster runs `examples/own-trainer/train_lm.py` through `backend: command`; its
config names a built-in task (`cloze`, evaluated on the script's model in its process) and a
command task (`examples/own-trainer/eval_task.py`, a separate program run on the script's own
checkpoint). Both reach the store's task table as `task/<name>/<metric>`, like the built-in
trainer's; the script's extra metrics (`grad_norm`, ...) reach the store's `extra` column.
The built-in DeepSpeed trainer runs the same command task on the checkpoint it writes for it.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from orchestrator.config.spec import parse_spec
from orchestrator.io.store import ObservationStore

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EVERY, STEPS = 6, 12
HARNESS = (f"command:next_byte={{python}} {REPO / 'examples' / 'own-trainer' / 'eval_task.py'} "
           "--checkpoint {checkpoint} --out {out} --windows 8")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, local_ray):
    from orchestrator.app.session import run_sweep

    root = tmp_path_factory.mktemp("own-tasks")
    data = {"name": "own-tasks", "model": {"n_params": [20000], "seq_len": 64},
            "tokens": {"values": [STEPS * 2048]}, "learning_rates": [3e-3], "batch_sizes": [2048],
            "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.2},
            "eval": {"every": EVERY, "tokens": 4096, "tasks": ["cloze", HARNESS], "task_items": 16},
            "checkpoints": {"enabled": False}, "fit": {"bootstrap": 0},
            "trainer": {"backend": "command", "cwd": str(REPO),
                        "command": ["{python}", "examples/own-trainer/train_lm.py", "--config", "{config}"]},
            "output_dir": str(root / "sweep")}
    (root / "spec.yaml").write_text(yaml.safe_dump(data))
    spec = parse_spec(data)
    local_ray(2)  # the session's 2-CPU local Ray instance (conftest.py)
    return spec, run_sweep(spec, str(root / "spec.yaml"), show_progress=False)


def test_a_command_trainers_tasks_reach_the_task_table_at_every_evaluation(sweep):
    spec, outcome = sweep
    store = ObservationStore(outcome.sweep_dir)
    (tid, rec), = store.trials().items()
    assert rec["status"] == "finished", rec
    rows = store.task_metrics(tid).to_pylist()
    got = {(r["step"], r["task"], r["metric"]): r["value"] for r in rows}
    steps = list(range(EVERY, STEPS + 1, EVERY))
    assert {(s, t) for s, t, _ in got} == {(s, t) for s in steps for t in ("cloze", "next_byte")}
    for s in steps:
        assert got[(s, "cloze", "chance")] == 0.25 and 0 <= got[(s, "cloze", "acc")] <= 1
        assert got[(s, "next_byte", "chance")] == 1 / 256 and 0 <= got[(s, "next_byte", "acc")] <= 1
    # the harness's loss is the model's next-byte loss: it falls as the model trains
    first, last = (got[(s, "next_byte", "loss")] for s in (steps[0], steps[-1]))
    assert last < first < math.log(256)
    assert got[(steps[-1], "next_byte", "acc")] > 1 / 256


def test_a_command_trainers_extra_metrics_reach_the_store(sweep):
    spec, outcome = sweep
    store = ObservationStore(outcome.sweep_dir)
    (tid, extras), = store.extras().items()
    assert sorted(extras) == list(range(EVERY, STEPS + 1, EVERY))
    for step, metrics in extras.items():
        assert set(metrics) == {"grad_norm", "n_params_realised", "world_size"}  # train_lm.py's own
        assert metrics["grad_norm"] > 0 and metrics["world_size"] == 1.0
        assert not any(k.startswith("task/") for k in metrics)  # task metrics have their own table


def test_the_built_in_trainer_runs_a_command_task_on_its_checkpoint(tmp_path):
    from trainers.contract import Schedule, TrialConfig
    from trainers.deepspeed_trainer import train

    cfg = TrialConfig(trial_id="t", n_params=20_000, tokens=8 * 1024, lr=3e-3, batch_tokens=1024, seq_len=64,
                      schedule=Schedule(kind="wsd", warmup=0.1, decay=0.2), eval_every=8, eval_tokens=1024,
                      tasks=(HARNESS,))
    reports = []
    train(cfg, reports.append)
    (r,) = reports  # one evaluation: the harness runs once (a fresh interpreter importing torch)
    assert r["step"] == 8 and r["task/next_byte/chance"] == 1 / 256 and 0 <= r["task/next_byte/acc"] <= 1
    # the harness scored the trained model: its next-byte loss is the trial's validation loss (other windows)
    assert r["task/next_byte/loss"] < math.log(256) and abs(r["task/next_byte/loss"] - r["eval_loss"]) < 0.3, r
    assert r["eval_flops"] > 0
