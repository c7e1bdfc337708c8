"""Real DeepSpeed trials on CPU: learning, reports, checkpoints + resume, divergence, 2-rank ZeRO-3."""
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp_mp

from tests.integration.conftest import free_port
from trainers.contract import OPTIONAL_REPORT_KEYS, REPORT_KEYS, Schedule, TrialConfig
from trainers.deepspeed_trainer import train
from trainers.model import build_model, count_params, shape_for

pytestmark = pytest.mark.integration
LN256 = math.log(256)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("corpus"))


def _config(cache, **kw):
    base = dict(trial_id="t", n_params=20_000, tokens=30 * 2048, lr=3e-3, batch_tokens=2048, seq_len=64,
                schedule=Schedule(kind="wsd", warmup=0.1, decay=0.2), eval_every=10, eval_tokens=2048,
                zero_stage=1, data_cache=cache, micro_batch=16)
    base.update(kw)
    return TrialConfig(**base)


def test_trial_learns_reports_checkpoints_and_resumes(cache, tmp_path):
    ckpt = tmp_path / "ckpt"
    cfg = _config(cache, checkpoint_dir=str(ckpt), checkpoint_every=5, checkpoint_steps=(15,))
    reports = []
    hook = sys.excepthook
    summary = train(cfg, reports.append)
    assert not dist.is_initialized()  # the group this trainer created is gone
    assert "RANK" not in os.environ and "LOCAL_RANK" not in os.environ

    assert [r["step"] for r in reports] == [10, 20, 30]
    assert all(tuple(r) == REPORT_KEYS + OPTIONAL_REPORT_KEYS for r in reports)  # no task: no task metrics
    n = count_params(shape_for(20_000)).non_embedding
    assert summary.n_params == n and summary.steps == 30 and summary.tokens == 30 * 2048
    for r in reports:
        assert r["tokens"] == r["step"] * 2048
        assert r["flops"] == pytest.approx(6 * n * r["tokens"])
        assert r["tokens_per_s"] > 0 and math.isfinite(r["train_loss"])
    assert [r["done"] for r in reports] == [0.0, 0.0, 1.0]
    assert reports[0]["step_time_s"] < reports[1]["step_time_s"] < reports[2]["step_time_s"]
    assert reports[-1]["lr"] == pytest.approx(0.1 * 3e-3)  # WSD ends at final_lr_frac·peak
    evals = [r["eval_loss"] for r in reports]
    assert evals[-1] < evals[0] < LN256 and evals[-1] < LN256 - 1.5  # from uniform 5.55 to < 4.05
    assert summary.final_eval_loss == evals[-1] and not summary.diverged

    # Older periodic checkpoints are deleted as newer ones land; the kept step (a branch point) stays.
    assert sorted(p.name for p in ckpt.glob("step*")) == ["step15", "step30"]
    assert (ckpt / "latest").read_text().strip() == "step30" and summary.checkpoint == str(ckpt / "step30")

    # Resume from the step-15 checkpoint: weights and AdamW state are restored and batches are a
    # function of the step, so the resumed run reproduces the uninterrupted one.
    (ckpt / "latest").write_text("step15")
    resumed = []
    summary2 = train(cfg, resumed.append)
    assert [r["step"] for r in resumed] == [20, 30]
    assert resumed[-1]["tokens"] == reports[-1]["tokens"]
    assert resumed[-1]["flops"] == pytest.approx(reports[-1]["flops"])
    assert summary2.final_eval_loss == pytest.approx(summary.final_eval_loss, abs=1e-4)
    assert resumed[0]["eval_loss"] == pytest.approx(reports[1]["eval_loss"], abs=1e-4)

    # A WSD cooldown branch: a new checkpoint dir seeded with the stable-phase step-15 checkpoint,
    # trained to a longer budget; it continues at step 15 and decays at its own end.
    branch = tmp_path / "branch"
    shutil.copytree(ckpt / "step15", branch / "step15")
    (branch / "latest").write_text("step15")
    branched = []
    train(_config(cache, tokens=40 * 2048, checkpoint_dir=str(branch)), branched.append)
    assert [r["step"] for r in branched] == [20, 30, 40]
    assert branched[0]["lr"] == pytest.approx(3e-3) and branched[-1]["lr"] == pytest.approx(3e-4)
    assert branched[-1]["eval_loss"] < summary.final_eval_loss + 0.05
    # three trials in this process: torch's `[rank0]: ` traceback wrapper went with each one's group
    assert sys.excepthook is hook


def test_a_wsd_branch_from_its_trunk_reproduces_the_from_scratch_run(cache, tmp_path):
    """The planner's branch plan on real checkpoints: the trunk (40 steps) saves at the 20-step run's
    branch point; the branch restores it and trains only its decay; its curve and final loss are
    those of the 20-step run trained from scratch with the same schedule."""
    from dataclasses import dataclass

    from orchestrator.core.planning.branching import plan_branches

    @dataclass(frozen=True)
    class P:
        trial_id: str
        D: int
        n_target: int = 20_000
        lr: float = 3e-3
        batch: int = 2048
        seed: int = 0

    plan = plan_branches([P("short", 20 * 2048), P("trunk", 40 * 2048)], warmup=0.1, decay=0.2)
    b = plan.branches["short"]
    assert (b.trunk_id, b.step, plan.checkpoint_steps["trunk"]) == ("trunk", 16, (16,))

    def sched(tid):
        return Schedule(kind="wsd", warmup=plan.warmup[tid], decay=0.2)

    trunk_dir = tmp_path / "trunk"
    train(_config(cache, trial_id="trunk", tokens=40 * 2048, schedule=sched("trunk"), checkpoint_dir=str(trunk_dir),
                  checkpoint_every=0, checkpoint_steps=(16,)), lambda r: None)
    assert (trunk_dir / "step16").is_dir()

    branch, scratch = [], []
    summary = train(_config(cache, trial_id="short", tokens=20 * 2048, schedule=sched("short"),
                            checkpoint_dir=str(tmp_path / "short"), branch_from=str(trunk_dir / "step16"),
                            branch_step=16, eval_every=2), branch.append)
    full = train(_config(cache, trial_id="scratch", tokens=20 * 2048, schedule=sched("short"), eval_every=2),
                 scratch.append)
    assert [r["step"] for r in branch] == [18, 20]  # only the decay is trained (and reported)
    assert branch[-1]["tokens"] == 20 * 2048 and branch[-1]["flops"] == pytest.approx(scratch[-1]["flops"])
    assert [r["lr"] for r in branch] == pytest.approx([r["lr"] for r in scratch[-2:]])
    assert summary.final_eval_loss == pytest.approx(full.final_eval_loss, abs=1e-4)
    assert branch[0]["eval_loss"] == pytest.approx(scratch[-2]["eval_loss"], abs=1e-4)
    # The branch's own checkpoint dir holds its end state; the trunk's step-16 state is untouched.
    assert (tmp_path / "short" / "step20").is_dir() and (trunk_dir / "step16").is_dir()


def test_divergence_stops_the_trial(cache):
    reports = []
    summary = train(_config(cache, lr=1e30, tokens=20 * 2048, schedule=Schedule(kind="constant", warmup=0.0)),
                    reports.append)
    assert summary.diverged and summary.steps < 20 and math.isnan(summary.final_eval_loss)
    assert reports[-1]["done"] == 1.0 and not math.isfinite(reports[-1]["train_loss"])


def test_tasks_run_at_checkpoint_evaluations_and_their_flops_are_counted_apart(cache, tmp_path):
    """eval.tasks_at: checkpoints: the task runs at the evaluations on checkpoint steps (here every
    2nd) and the last; eval_flops grows by the validation and task forward passes, never into the
    training flops; a resumed trial carries eval_flops on from its checkpoint."""
    ckpt = tmp_path / "ckpt"
    cfg = _config(cache, tokens=20 * 2048, eval_every=5, checkpoint_every=10, checkpoint_dir=str(ckpt),
                  checkpoint_steps=(10,), tasks=("cloze", "next_line"), tasks_at="checkpoints", task_items=16)
    reports = []
    train(cfg, reports.append)
    assert [r["step"] for r in reports] == [5, 10, 15, 20]
    with_tasks = [int(r["step"]) for r in reports if "task/cloze/acc" in r]
    assert with_tasks == [10, 20]
    n = count_params(shape_for(20_000)).non_embedding
    val = 2 * n * 2048  # 32 windows of 64 tokens per evaluation, forward only
    ev = [r["eval_flops"] for r in reports]
    assert ev[0] == pytest.approx(val)  # no task at step 5
    assert ev[1] - ev[0] > val and ev[2] - ev[1] == pytest.approx(val)  # a task ran at step 10, none at 15
    for r in reports:
        assert r["flops"] == pytest.approx(6 * n * r["tokens"])  # training only
    last = reports[-1]
    assert {k for k in last if k.startswith("task/")} == {
        "task/cloze/acc", "task/cloze/acc_norm", "task/cloze/loss", "task/cloze/chance",
        "task/next_line/acc", "task/next_line/loss", "task/next_line/chance"}
    assert last["task/cloze/chance"] == 0.25 and 0 <= last["task/cloze/acc"] <= 1 and last["task/cloze/loss"] > 0
    # resume from step 10 (kept: a branch point): eval_flops continues from the checkpoint's count
    (ckpt / "latest").write_text("step10")
    resumed = []
    train(cfg, resumed.append)
    assert [r["step"] for r in resumed] == [15, 20]
    assert resumed[-1]["eval_flops"] == pytest.approx(ev[-1])
    assert resumed[-1]["task/cloze/acc"] == pytest.approx(last["task/cloze/acc"])


def test_a_task_that_fails_fails_the_trial_before_training(cache, tmp_path, monkeypatch):
    from trainers.tasks import TaskError

    (tmp_path / "broken_task_mod.py").write_text("def make_task():\n    raise RuntimeError('no data here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reports = []
    with pytest.raises(TaskError, match="broken_task_mod:make_task.*the factory failed: no data here"):
        train(_config(cache, tasks=("broken_task_mod:make_task",)), reports.append)
    assert reports == [] and not dist.is_initialized()


def _worker(rank, port, cfg, out_dir):
    # Like a Ray Train worker: the gloo group exists before the trainer runs.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    reports = []
    summary = train(cfg, reports.append)
    torch.save({"reports": reports, "summary": summary.__dict__, "still_init": dist.is_initialized()},
               Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


# a lab's harness as a program: logs each run's pid and the saved model's parameter count
HARNESS = """
import json, os, sys, torch
ckpt, out, log = sys.argv[1:4]
n = sum(v.numel() for v in torch.load(os.path.join(ckpt, "model.pt")).values())
open(log, "a").write(f"{os.getppid()} {n}\\n")
json.dump({"acc": 0.5, "task_loss": 1.0, "tokens": 64.0}, open(out, "w"))
"""


def test_two_ranks_zero3(cache, tmp_path):
    harness, log = tmp_path / "harness.py", tmp_path / "harness.log"
    harness.write_text(HARNESS)
    command = f"command:harness={sys.executable} {harness} {{checkpoint}} {{out}} {log}"
    cfg = _config(cache, workers=2, zero_stage=3, tokens=12 * 2048, eval_every=6, micro_batch=8,
                  checkpoint_dir=str(tmp_path / "ckpt"), tasks=("cloze", command), task_items=8)
    tmp_mp.spawn(_worker, args=(free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["still_init"] and r1["still_init"]  # a group we did not create is left alone
    assert [r["step"] for r in r0["reports"]] == [6, 12]
    for a, b in zip(r0["reports"], r1["reports"]):
        assert a == b  # identical (reduced) reports on both ranks
    last = r0["reports"][-1]
    assert math.isfinite(last["eval_loss"]) and last["eval_loss"] < LN256 - 0.5
    assert last["tokens"] == 12 * 2048  # global tokens: 32 sequences split 16/16 over the ranks
    assert r0["summary"]["final_eval_loss"] == r1["summary"]["final_eval_loss"]
    # the task ran on the ZeRO-3 partitioned model on both ranks (collective parameter gathers)
    assert all(0 <= r["task/cloze/acc"] <= 1 and r["task/cloze/loss"] > 0 for r in r0["reports"])
    # the command task ran once per evaluation (on rank 0), on the whole gathered model, its metrics on both ranks
    runs = [line.split() for line in log.read_text().splitlines()]
    assert len(runs) == len(r0["reports"]) == 2 and len({pid for pid, _ in runs}) == 1
    whole = sum(v.numel() for v in build_model(20_000, 64).state_dict().values())
    assert all(int(n) == whole for _, n in runs)
    assert all(r["task/harness/acc"] == 0.5 and r["task/harness/loss"] == 1.0 for r in r0["reports"])
    assert (tmp_path / "ckpt" / "step12").is_dir()
