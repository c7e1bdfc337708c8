"""Command tasks (a lab's harness as a program: checkpoint + tokenizer in, metrics JSON out), the
task report keys every trainer shares, and a user trainer's task and extra metrics on their way
to the store (trainers.tasks, trainers.contract, orchestrator.io.store)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from orchestrator.io.store import ObservationStore
from trainers.contract import normalise_report
from trainers.tasks import (CommandTask, TaskError, absolute_task_ref, check_task, evaluate_tasks, load_task,
                            load_task_model, run_task, save_task_checkpoint, task_name, task_report)

REPO = Path(__file__).resolve().parents[3]
HARNESS = """
import json, os, sys
from pathlib import Path
ckpt, out = sys.argv[1], sys.argv[2]
names = sorted(p.name for p in Path(ckpt).iterdir())
Path(out).write_text(json.dumps({"acc": 0.75, "task_loss": 1.5, "n_items": len(names), "chance": 0.25,
                                 "tokens": 10.0, "seen_tokenizer": float(bool(os.environ["SCALESWEEP_TASK_TOKENIZER"]))}))
"""


def _harness(tmp_path, body=HARNESS) -> str:
    path = tmp_path / "harness.py"
    path.write_text(body)
    return f"command:myeval={sys.executable} {path} {{checkpoint}} {{out}}"


def test_a_command_task_runs_on_a_checkpoint_and_reports_the_shared_keys(tmp_path):
    ref = _harness(tmp_path)
    assert task_name(ref) == "myeval" and check_task(ref) == "myeval"
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "weights.bin").write_bytes(b"x")
    task = load_task(ref)
    assert isinstance(task, CommandTask)
    metrics = run_task("myeval", lambda model, tok: task.run(str(tmp_path / "ckpt"), "tok.json"), None)
    assert metrics["acc"] == 0.75 and metrics["n_items"] == 1.0 and metrics["seen_tokenizer"] == 1.0
    keys = evaluate_tasks([ref], checkpoint=str(tmp_path / "ckpt"))
    assert keys == {"task/myeval/acc": 0.75, "task/myeval/loss": 1.5, "task/myeval/chance": 0.25}
    assert keys == task_report("myeval", metrics)


@pytest.mark.parametrize("body, match", [
    ("import sys; sys.stderr.write('no such dataset'); sys.exit(3)", "exit status 3.*no such dataset"),
    ("pass", "wrote no metrics"),
    ("import sys; open(sys.argv[2], 'w').write('acc=1')", "not JSON"),
    ("import sys, json; open(sys.argv[2], 'w').write(json.dumps({'acc': 1.5}))", r"acc = 1.5 is outside \[0, 1\]"),
])
def test_a_failing_command_task_names_the_task_and_the_problem(tmp_path, body, match):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(TaskError, match="(?s)task .myeval.*" + match):
        evaluate_tasks([_harness(tmp_path, body)], checkpoint=str(tmp_path / "ckpt"))


@pytest.mark.parametrize("ref, match", [
    ("command:=python x.py", "expected 'command:NAME=PROGRAM ARGS"),
    ("command:bad name=python x.py", "expected 'command:NAME=PROGRAM ARGS"),
    ("command:x=no-such-program-xyz {checkpoint}", "not found on PATH"),
    ("command:x={python} no_such_script_xyz.py", "does not exist"),
])
def test_bad_command_task_references_are_refused_at_validation(ref, match):
    with pytest.raises(TaskError, match=match):
        check_task(ref)


def test_a_command_tasks_files_are_made_absolute_for_the_trial(tmp_path):
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "arc.py").write_text("")
    ref = "command:arc={python} evals/arc.py --checkpoint {checkpoint} --out={out} --split val"
    fixed = absolute_task_ref(ref, str(tmp_path))
    assert fixed == f"command:arc={{python}} {tmp_path / 'evals' / 'arc.py'} --checkpoint {{checkpoint}} --out={{out}} --split val"
    assert absolute_task_ref("cloze", str(tmp_path)) == "cloze"


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_the_built_in_models_checkpoint_round_trips_for_a_harness(tmp_path, family):
    import torch

    from trainers.model import build_model

    model = build_model(53_440, 64, vocab_size=300, seed=1, family=family)
    save_task_checkpoint(model, tmp_path / "ckpt")
    again = load_task_model(tmp_path / "ckpt")
    idx = torch.randint(0, 300, (2, 16))
    model.eval()
    assert torch.allclose(model(idx), again(idx), atol=1e-5)
    assert (tmp_path / "ckpt" / "hf" / "config.json").exists() == (family == "llama")


def test_a_command_task_called_on_a_model_gets_the_saved_checkpoint(tmp_path):
    from trainers.model import build_model

    body = ("import json, sys; from trainers.tasks import load_task_model; m = load_task_model(sys.argv[1]); "
            "json.dump({'acc': 0.5, 'vocab': m.vocab_size}, open(sys.argv[2], 'w'))")
    task = load_task(_harness(tmp_path, body))
    metrics = run_task("myeval", task, build_model(20_000, 64, vocab_size=256))
    assert metrics == {"acc": 0.5, "vocab": 256.0}


def test_a_user_trainers_task_and_extra_metrics_reach_the_store(tmp_path):
    raw = {"step": 4, "tokens": 4096, "lr": 1e-3, "train_loss": 3.0, "eval_loss": 3.1, "grad_norm": 0.5,
           "eval_flops": 1e6, "task/myeval/acc": 0.75, "task/myeval/chance": 0.25}
    r = normalise_report(raw, planned_tokens=8192, n_params=1000)
    assert r["extra"] == {"grad_norm": 0.5}  # only what the store has no column for
    assert r["task/myeval/acc"] == 0.75 and r["eval_flops"] == 1e6
    store = ObservationStore(tmp_path / "sweep")
    store.append("t0", r)
    store.append("t0", {**normalise_report({**raw, "step": 8, "grad_norm": 0.25}, 8192, 1000)})
    store.append("t1", normalise_report({k: raw[k] for k in ("step", "tokens", "lr", "train_loss", "eval_loss")}, 8192, 1000))
    assert store.extras() == {"t0": {4: {"grad_norm": 0.5}, 8: {"grad_norm": 0.25}}}
    rows = store.task_metrics("t0").to_pylist()
    assert {(r["step"], r["task"], r["metric"], r["value"]) for r in rows} == {
        (s, "myeval", m, v) for s in (4, 8) for m, v in (("acc", 0.75), ("chance", 0.25))}
    assert math.isnan(store.observations("t1").to_pylist()[0]["eval_flops"])


def test_extras_survive_the_write_ahead_log_and_old_parts_read_as_null(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = ObservationStore(tmp_path / "sweep", flush_every_s=1e9)
    store.append("t0", {"step": 1, "tokens": 10, "flops": 1.0, "lr": 1e-3, "train_loss": 2.0, "eval_loss": 2.0,
                        "extra": {"grad_norm": 0.5, "loss_scale": math.nan}})
    store._wal.close()  # the controller died before a flush: only the log holds the row
    again = ObservationStore(tmp_path / "sweep")
    assert again.recover() == 1
    (row,) = again.observations().to_pylist()
    assert row["extra"][0] == ("grad_norm", 0.5) and math.isnan(dict(row["extra"])["loss_scale"])
    # a part written before the column existed
    old = pa.table({"trial_id": ["t9"], "step": [1], "tokens": [10], "seq": [0]})
    pq.write_table(old, tmp_path / "sweep" / "store" / "observations" / "part-00000000000000000000-old.parquet")
    assert ObservationStore(tmp_path / "sweep").observations("t9").to_pylist()[0]["extra"] is None


def test_the_example_harness_scores_a_train_lm_checkpoint(tmp_path):
    """examples/own-trainer/eval_task.py on train_lm.py's own checkpoint format (as the command task
    of tests/integration/test_own_trainer_tasks.py runs it inside a sweep)."""
    import torch

    sys.path.insert(0, str(REPO / "examples" / "own-trainer"))
    try:
        from train_lm import GPT
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    model = GPT(256, 32, 16, 1, 1)
    (tmp_path / "ckpt").mkdir()
    torch.save({"model": model.state_dict(), "shape": [256, 32, 16, 1, 1]}, tmp_path / "ckpt" / "model.pt")
    ref = f"command:next_byte={sys.executable} {REPO}/examples/own-trainer/eval_task.py --checkpoint {{checkpoint}} --out {{out}} --windows 4"
    keys = evaluate_tasks([ref], checkpoint=str(tmp_path / "ckpt"))
    assert set(keys) == {"task/next_byte/acc", "task/next_byte/loss", "task/next_byte/chance"}
    assert 0 <= keys["task/next_byte/acc"] <= 1 and keys["task/next_byte/chance"] == 1 / 256
    assert abs(keys["task/next_byte/loss"] - math.log(256)) < 0.5  # an untrained model: about uniform
