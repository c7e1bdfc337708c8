"""The real trial: a GPT-family model trained with a DeepSpeed engine on the trial contract.

`train(config, report)` runs in one of two settings:
- a single process where torch.distributed is not initialised (a Ray Tune function trainable):
  it creates a 1-process group on an in-process `HashStore` — no TCP port, so concurrent
  trials on one machine cannot clash — and destroys it at the end;
- each worker of a Ray Train `TorchTrainer` (or any launcher) where the process group already
  exists with world size = config.workers: it is used as it is and left alone.

Every rank samples its own share of the global batch (batch_tokens // seq_len sequences split
evenly across ranks, windows seeded by (seed, rank, step)), so ranks see different data.
Reported numbers are reduced across ranks (losses averaged, times maxed), so every rank
reports the same dict. The lr is set on the optimizer's param groups before every step from
`trainers.schedules.lr_at` (no DeepSpeed scheduler), so the schedule is exactly ours.
Optimizer: torch.optim.AdamW (betas 0.9/0.95, weight decay 0.1 on matrices and embeddings,
none on biases and LayerNorms) handed to DeepSpeed as a client optimizer; gradient clipping
1.0; fp32 on CPU, bf16 on CUDA when precision is auto/bf16.
Downstream tasks (`config.tasks`, trainers/tasks.py) run on the model at the evaluations
`config.tasks_at` names and are reported as `task/<name>/<metric>`; every report carries the
evaluations' cumulative `eval_flops` and `eval_time_s`, kept out of `flops` and `step_time_s`
(docs/downstream.md, "Tasks in a sweep").
With `config.checkpoint_mirror` (a sweep whose store is on S3) every saved checkpoint is copied to
that object-store prefix, each rank its own shards, and a trial first copies the mirror's
checkpoint into its local `checkpoint_dir` (trainers.checkpoint_mirror): it resumes on any node.

Long because it is one trial: the DeepSpeed engine's setup, the training loop (`_run`), evaluation,
checkpoints and the rank reduction they share run in one process.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist

from trainers import checkpoint_mirror
from trainers.contract import REPORT_KEYS, Reporter, StopRequested, TrialConfig, TrialSummary
from trainers.corpus import TokenData, eval_windows, load_data, sample_batch
from trainers.flops import flops_per_token
from trainers.model import Shape, build_model, count_params, shape_for
from trainers.schedules import lr_at
from trainers.tasks import CommandTask, TaskError, load_tasks, run_task, task_report

ADAM_BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0


@dataclass(frozen=True)
class Plan:
    """What one trial does, derived from its config and the world size."""

    shape: Shape
    vocab_size: int
    seqs_per_step: int  # global batch in sequences
    seqs_per_rank: int
    micro_batch: int  # sequences per rank per micro-step
    grad_accum: int
    tokens_per_step: int
    total_steps: int
    flops_per_token: float
    n_params: int
    n_params_total: int


def make_plan(config: TrialConfig, world: int, vocab_size: int) -> Plan:
    """Derive shape, batch split and step count; raises ValueError on an impossible config."""
    if config.seq_len <= 0 or config.batch_tokens < config.seq_len:
        raise ValueError(f"batch_tokens={config.batch_tokens} must hold at least one sequence of {config.seq_len}")
    seqs = config.batch_tokens // config.seq_len
    if seqs % world:
        raise ValueError(f"{seqs} sequences per batch do not split evenly over {world} workers")
    per_rank = seqs // world
    micro = config.micro_batch or per_rank
    if micro <= 0 or per_rank % micro:
        raise ValueError(f"micro_batch={micro} does not divide the per-worker share of {per_rank} sequences")
    shape = shape_for(config.n_params, config.family)
    counts = count_params(shape, vocab_size, config.seq_len)
    tokens_per_step = seqs * config.seq_len
    return Plan(
        shape=shape, vocab_size=vocab_size, seqs_per_step=seqs, seqs_per_rank=per_rank,
        micro_batch=micro, grad_accum=per_rank // micro, tokens_per_step=tokens_per_step,
        total_steps=max(1, math.ceil(config.tokens / tokens_per_step)),
        flops_per_token=flops_per_token(shape, config.seq_len, vocab_size, config.exact_flops),
        n_params=counts.non_embedding, n_params_total=counts.total,
    )


def param_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    """AdamW groups: decay on ≥2-D tensors (matrices, embeddings), none on biases and norms."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}]


def pick_device() -> torch.device:
    """CUDA device of this rank when there is one, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def use_bf16(config: TrialConfig, device: torch.device) -> bool:
    """bf16 on CUDA for auto; what the config says otherwise."""
    return config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")


def fill_rank_env() -> list[str]:
    """Set RANK/LOCAL_RANK/WORLD_SIZE from the process group where missing (DeepSpeed reads them).

    LOCAL_RANK falls back to the global rank (one node). Returns the names it set.
    """
    rank, world = str(dist.get_rank()), str(dist.get_world_size())
    added = []
    for k, v in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", world)):
        if k not in os.environ:
            os.environ[k] = v
            added.append(k)
    return added


@contextmanager
def trial_process_group(device: torch.device) -> Iterator[bool]:
    """A 1-process group for the trial when none exists (yields whether it made one), destroyed after.

    `init_process_group` wraps `sys.excepthook` to prefix `[rank<r>]: ` to tracebacks and never
    unwraps it; restored here, so trials run one after another in one process (a reused Ray actor)
    do not stack one more prefix per trial.
    """
    if dist.is_initialized():
        yield False
        return
    hook = sys.excepthook
    try:
        if device.type == "cuda":
            dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=device)
        else:
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        yield True
    finally:
        try:
            # Through deepspeed.comm (when DeepSpeed is loaded) so it also drops its cached groups;
            # a later trial in this process then starts from a clean slate.
            ds_comm = sys.modules.get("deepspeed.comm")
            if ds_comm is not None and ds_comm.is_initialized():
                ds_comm.destroy_process_group()
            elif dist.is_initialized():
                dist.destroy_process_group()
        finally:
            sys.excepthook = hook


class RankReducer:
    """Cross-rank reductions of a few floats (no-ops on one rank)."""

    def __init__(self, device: torch.device) -> None:
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.device = device

    def _reduce(self, values: list[float], op: "dist.ReduceOp") -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def mean(self, *values: float) -> list[float]:
        """Average over ranks."""
        return [v / self.world for v in self._reduce(list(values), dist.ReduceOp.SUM)]

    def sum(self, *values: float) -> list[float]:
        """Sum over ranks."""
        return self._reduce(list(values), dist.ReduceOp.SUM)

    def max(self, *values: float) -> list[float]:
        """Maximum over ranks."""
        return self._reduce(list(values), dist.ReduceOp.MAX)


def eval_shard(config: TrialConfig, data: TokenData, rank: int, world: int) -> torch.Tensor:
    """This rank's fixed validation windows; every rank gets the same count (ZeRO-3 needs it)."""
    n = max(1, config.eval_tokens // config.seq_len)
    n = world * math.ceil(n / world)
    windows = eval_windows(data.val, config.seq_len, n * config.seq_len)
    return windows[rank::world]


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, micro: int, device: torch.device,
             reducer: RankReducer) -> float:
    """Mean validation cross-entropy (nats/token) over all ranks' windows."""
    total, count = 0.0, 0
    for i in range(0, len(windows), micro):
        w = windows[i:i + micro].to(device)
        loss = model(w[:, :-1], w[:, 1:])
        total += loss.item() * len(w)
        count += len(w)
    s, c = reducer.sum(total, float(count))
    return s / c


def make_report(step: int, tokens: int, flops: float, lr: float, train_loss: float, eval_loss: float,
                tokens_per_s: float, step_time_s: float, done: bool) -> dict[str, float]:
    """A report dict with exactly the contract's keys."""
    r = {"step": float(step), "tokens": float(tokens), "flops": float(flops), "lr": float(lr),
         "train_loss": float(train_loss), "eval_loss": float(eval_loss),
         "tokens_per_s": float(tokens_per_s), "step_time_s": float(step_time_s), "done": float(done)}
    assert tuple(r) == REPORT_KEYS
    return r


def deepspeed_config(config: TrialConfig, plan: Plan, bf16: bool, n_params: int = 0) -> dict[str, Any]:
    """The DeepSpeed JSON config for this trial."""
    zero: dict[str, Any] = {"stage": int(config.zero_stage)}
    if n_params:
        # DeepSpeed's default buckets hold 5e8 elements (2 GB in fp32) whatever the model's
        # size; cap them at the model so small trials don't each reserve gigabytes.
        bucket = int(min(max(n_params, 1 << 20), 5e8))
        zero.update(reduce_bucket_size=bucket, allgather_bucket_size=bucket)
        if config.zero_stage == 3:
            zero.update(stage3_prefetch_bucket_size=bucket, stage3_param_persistence_threshold=min(bucket, 100_000))
    ds: dict[str, Any] = {
        "train_batch_size": plan.seqs_per_step,
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.grad_accum,
        "gradient_clipping": GRAD_CLIP,
        "zero_optimization": zero,
        # ZeRO wraps our torch AdamW; DeepSpeed only tests its own optimizers by default.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if bf16:
        ds["bf16"] = {"enabled": True}
    return ds


def latest_checkpoint(checkpoint_dir: Optional[str]) -> Optional[str]:
    """Tag of the newest DeepSpeed checkpoint in the directory, if any."""
    if not checkpoint_dir:
        return None
    latest = Path(checkpoint_dir) / "latest"
    return latest.read_text().strip() if latest.exists() else None


def prune_checkpoints(checkpoint_dir: str, keep: set[int]) -> None:
    """Delete the trial's older periodic checkpoints: a restart needs only the newest, and a WSD
    trunk's branch points stay for its branches (a 1B-parameter trial's checkpoint is ~16 GB)."""
    for tag in Path(checkpoint_dir).glob("step*"):
        step = tag.name[4:]
        if tag.is_dir() and step.isdigit() and int(step) not in keep:
            shutil.rmtree(tag, ignore_errors=True)  # every rank may try: ignore what another removed


def mirror_checkpoint(config: TrialConfig, tag: str, at_step: int, rank: int, reducer: "RankReducer") -> None:
    """Copy a checkpoint just saved to the trial's mirror (trainers.checkpoint_mirror): each rank its
    own ZeRO shards (on a cluster with no shared path only its node has them), rank 0 the rest; then,
    once every rank's upload is done, rank 0 the `latest` pointer, and drops the tags pruned here."""

    def mine(name: str) -> bool:
        return f"zero_pp_rank_{rank}_" in name if "zero_pp_rank_" in name else rank == 0

    checkpoint_mirror.push(config.checkpoint_dir, config.checkpoint_mirror, [tag], only=mine)
    reducer.max(0.0)  # a collective: every rank's shards are up before the pointer names them
    if rank == 0:
        checkpoint_mirror.push(config.checkpoint_dir, config.checkpoint_mirror, pointer="latest")
        keep = {f"step{s}" for s in (at_step, *config.checkpoint_steps)}
        checkpoint_mirror.remove(config.checkpoint_mirror, [n for n in checkpoint_mirror.listing(
            config.checkpoint_mirror) if n.startswith("step") and n[4:].isdigit() and n not in keep])


@contextmanager
def _hidden(*names: str):
    """Inside, `import NAME` raises ImportError for these modules (unless already imported).

    For an optional import DeepSpeed tries and this trainer never uses: its autotuner's
    `try: import mlflow`, 5.1 of `import deepspeed`'s 11.8 s in a fresh process (python -X
    importtime; a command trial's program is one). (Its Muon optimizer, 3.2 s more in
    `deepspeed.initialize`, is imported unconditionally by the ZeRO step as well: not avoidable.)
    """
    import sys

    hidden = [n for n in names if n not in sys.modules]
    for n in hidden:
        sys.modules[n] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for n in hidden:
            if n in sys.modules and sys.modules[n] is None:
                del sys.modules[n]


def import_deepspeed():
    """`import deepspeed` without MLflow (see `_hidden`); deferred to the trial, as it probes the accelerator."""
    with _hidden("mlflow"):
        import deepspeed
    return deepspeed


def preload() -> None:
    """Import what a trial imports on its way to its first step, running nothing (`trainer.warm_start`).

    For a warm-start process (trainers.warm_start) that forks this trainer as a command program
    (`python -m trainers.as_command trainers.deepspeed_trainer:train`): besides DeepSpeed, the lazy
    imports of a trial's set-up (python -X importtime, a fresh process: `torch._dynamo` when
    torch.optim adds a param group, ~2.9 s; DeepSpeed's Muon optimizer in `deepspeed.initialize`,
    ~1.1 s; pandas when pyarrow reads the corpus, ~0.6 s). Imports only: no thread pool, no CUDA.
    """
    import importlib

    import_deepspeed()
    for name in ("trainers.as_command", "torch._dynamo", "deepspeed.runtime.zero.muon.muon_optimizer",
                 "deepspeed.comm.torch", "pandas"):
        try:
            importlib.import_module(name)
        except ImportError:  # another DeepSpeed or no pandas: that import is then paid by the trial
            pass


def preload_builtin_corpus() -> None:
    """Read the built-in byte corpus into this process's memo (`trainers.corpus.load_data`), as a trial of
    a `data: builtin` sweep would (cache: $SCALESWEEP_CACHE, as the controller passes it): for
    `trainer.warm_start`, so forked trials find it read (~0.5 s each otherwise). Other data: no use."""
    load_data("builtin", os.environ.get("SCALESWEEP_CACHE"))


@contextmanager
def _no_shm_op():
    """DeepSpeed's communication backend without its CPU shared-memory all-reduce op.

    On every new backend (every fresh process) DeepSpeed JIT-loads that op through
    `torch.utils.cpp_extension.load`: a ninja run at best, a rebuild of minutes when the cache
    in ~/.cache/torch_extensions is stale or shared, a wait on another process's build lock.
    Training never uses it: in DeepSpeed 0.19 only `inference_all_reduce` (tensor-parallel
    inference) calls it, while `all_reduce` and ZeRO's collectives go through torch.distributed.
    """
    import importlib

    # by module name: the package attribute `deepspeed.comm.torch` is the torch module (a star import)
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    saved = ds_torch.build_shm_op
    ds_torch.build_shm_op = lambda: None
    try:
        yield
    finally:
        ds_torch.build_shm_op = saved


def train(config: TrialConfig, report: Reporter) -> TrialSummary:
    """Run one trial with DeepSpeed, calling `report` at every evaluation and at the end."""
    deepspeed = import_deepspeed()

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    device = pick_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, config.threads))
    try:
        with trial_process_group(device):
            env_added = fill_rank_env()
            try:
                return _train(deepspeed, config, report, device)
            finally:
                for k in env_added:
                    os.environ.pop(k, None)
    finally:
        torch.set_num_threads(old_threads)


def _train(deepspeed, config: TrialConfig, report: Reporter, device: torch.device) -> TrialSummary:
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != config.workers:
        raise ValueError(f"config.workers={config.workers} but the process group has {world} ranks")
    data = load_data(config.data, config.data_cache)
    plan = make_plan(config, world, data.vocab_size)
    # before the engine: a task that does not load fails the trial at once, not after training
    tasks = load_tasks(config.tasks, stream=data.val, seq_len=config.seq_len, n_items=config.task_items)
    bf16 = use_bf16(config, device)
    model = build_model(config.n_params, config.seq_len, data.vocab_size, seed=config.seed, family=config.family)
    optimizer = torch.optim.AdamW(param_groups(model), lr=config.lr, betas=ADAM_BETAS, eps=1e-8)
    with _no_shm_op():
        engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer,
            config=deepspeed_config(config, plan, bf16, sum(p.numel() for p in model.parameters())))
    return _run(engine, config, plan, data, report, device, rank, world, tasks)


def _run(engine, config: TrialConfig, plan: Plan, data: TokenData, report: Reporter,
         device: torch.device, rank: int, world: int, tasks=()) -> TrialSummary:
    reducer = RankReducer(device)
    windows = eval_shard(config, data, rank, world)
    step, tokens, flops, step_time = 0, 0, 0.0, 0.0
    eval_flops, eval_time = 0.0, 0.0  # evaluations' cost, kept apart from training's
    checkpoint: Optional[str] = None
    if config.checkpoint_dir and config.checkpoint_mirror:  # the authority: the trial may have run on elsewhere
        checkpoint_mirror.pull_trial(config.checkpoint_dir, config.checkpoint_mirror, config.branch_from)
    tag = latest_checkpoint(config.checkpoint_dir)
    load_dir = config.checkpoint_dir
    if tag is None and config.branch_from:
        # A WSD cooldown branch: the trunk's full state (weights, optimizer, counters) at the
        # branch point; from there this trial's own schedule is its decay.
        load_dir, tag = str(Path(config.branch_from).parent), Path(config.branch_from).name
    if tag is not None:
        _, client = engine.load_checkpoint(load_dir, tag=tag)
        if client is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} in {load_dir}")
        step, tokens = int(client["step"]), int(client["tokens"])
        flops, step_time = float(client["flops"]), float(client["step_time_s"])
        eval_flops, eval_time = float(client.get("eval_flops", 0.0)), float(client.get("eval_time_s", 0.0))
        checkpoint = str(Path(load_dir) / tag)
        if load_dir != config.checkpoint_dir:
            if step != config.branch_step:
                raise ValueError(f"branch checkpoint {config.branch_from} is at step {step}, not {config.branch_step}")
            step_time = 0.0  # the trunk's time is the trunk's: a branch reports its own
            eval_flops, eval_time = 0.0, 0.0  # ... and so are its evaluations

    def save(at_step: int) -> str:
        t = f"step{at_step}"
        engine.save_checkpoint(config.checkpoint_dir, tag=t, client_state={
            "step": at_step, "tokens": tokens, "flops": flops, "step_time_s": step_time,
            "eval_flops": eval_flops, "eval_time_s": eval_time, "trial_id": config.trial_id})
        prune_checkpoints(config.checkpoint_dir, keep={at_step, *config.checkpoint_steps})
        if config.checkpoint_mirror:
            mirror_checkpoint(config, t, at_step, rank, reducer)
        return str(Path(config.checkpoint_dir) / t)

    # forward FLOPs per token (training counts forward + backward: 3x); validation tokens of all ranks
    fwd_per_token = plan.flops_per_token / 3.0
    val_tokens = world * len(windows) * config.seq_len
    task_metrics: dict[str, float] = {}

    def evaluate_now(with_tasks: bool = False) -> float:
        nonlocal eval_flops, eval_time, task_metrics
        t0 = time.perf_counter()
        engine.eval()
        value = evaluate(engine, windows, plan.micro_batch, device, reducer)
        eval_flops += fwd_per_token * val_tokens
        task_metrics = _evaluate_tasks(tasks, engine, reducer) if with_tasks else {}
        # every rank runs every task in full (ZeRO-3 gathers parameters collectively): world x the tokens
        eval_flops += fwd_per_token * world * task_metrics.pop("_tokens", 0.0)
        engine.train()
        (dt,) = reducer.max(time.perf_counter() - t0)
        eval_time += dt
        return value

    def tasks_due(last: bool) -> bool:
        if not tasks:
            return False
        if config.tasks_at != "checkpoints" or last:
            return True
        return (config.checkpoint_every > 0 and step % config.checkpoint_every == 0) or step in config.checkpoint_steps

    def report_now(train_loss: float, eval_loss: float, done: bool) -> None:
        nonlocal loss_sum, loss_steps, tokens_at_report, time_at_report, task_metrics
        (st,) = reducer.max(step_time)
        dt = st - time_at_report
        tps = (tokens - tokens_at_report) / dt if dt > 0 else float("nan")
        report({**make_report(step, tokens, flops, lr, train_loss, eval_loss, tps, st, done),
                "eval_flops": eval_flops, "eval_time_s": eval_time, **task_metrics})
        task_metrics = {}
        loss_sum, loss_steps, tokens_at_report, time_at_report = 0.0, 0, tokens, st

    loss_sum, loss_steps, tokens_at_report, time_at_report = 0.0, 0, tokens, step_time
    lr = lr_at(min(step, plan.total_steps - 1), plan.total_steps, config.lr, config.schedule)
    eval_loss, diverged, reported_final = float("nan"), False, False
    engine.train()
    while step < plan.total_steps:
        lr = lr_at(step, plan.total_steps, config.lr, config.schedule)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        x, y = sample_batch(data.train, config.seq_len, plan.seqs_per_rank, config.seed, rank, step)
        x, y = x.to(device), y.to(device)
        t0 = time.perf_counter()
        step_loss = 0.0
        for m in range(plan.grad_accum):
            sl = slice(m * plan.micro_batch, (m + 1) * plan.micro_batch)
            loss = engine(x[sl], y[sl])
            engine.backward(loss)
            engine.step()  # DeepSpeed applies the optimizer only at the accumulation boundary
            step_loss += loss.detach().item() / plan.grad_accum
        step_time += time.perf_counter() - t0
        (step_loss,) = reducer.mean(step_loss)  # every step, so all ranks stop together on NaN
        step += 1
        tokens += plan.tokens_per_step
        flops += plan.flops_per_token * plan.tokens_per_step
        loss_sum += step_loss
        loss_steps += 1
        if not math.isfinite(step_loss):
            diverged = True
            break
        last = step == plan.total_steps
        save_now = bool(config.checkpoint_dir) and (
            (config.checkpoint_every > 0 and step % config.checkpoint_every == 0) or last)
        branch_point = bool(config.checkpoint_dir) and step in config.checkpoint_steps
        eval_due = last or (config.eval_every > 0 and step % config.eval_every == 0)
        if eval_due:  # before a save: the checkpoint's evaluation counters include this evaluation
            eval_loss = evaluate_now(tasks_due(last))
        if (save_now and last) or branch_point:
            # Before the report: Tune may end the trial on its final report (done), and a
            # branch is started once its trunk has reported its branch point.
            checkpoint = save(step)
            save_now = False
        if eval_due:
            try:
                report_now(loss_sum / loss_steps, eval_loss, last)
            except StopRequested:
                # The user stopped the sweep after this report was recorded: a checkpoint here lets
                # `scalesweep resume` continue from this step. A save is collective: on several workers
                # every rank raises at the same report (the reporter agrees on it), so each saves its shards.
                if config.checkpoint_dir and not last and not branch_point:
                    save(step)
                raise
            reported_final = last
        if save_now and not last:
            # After the report: a process killed between the two resumes from the previous
            # checkpoint and reports this step again (the store deduplicates), never skips it.
            # (Killed between the final save and report, it resumes at the end and reports again.)
            checkpoint = save(step)
    if diverged:
        eval_loss = float("nan")
        report_now(loss_sum / loss_steps, eval_loss, True)
    elif not reported_final:  # resumed from a checkpoint at (or past) the end
        eval_loss = evaluate_now(bool(tasks))
        report_now(loss_sum / loss_steps if loss_steps else float("nan"), eval_loss, True)
    return TrialSummary(
        final_eval_loss=eval_loss, steps=step, tokens=tokens, flops=flops,
        n_params=plan.n_params, n_params_total=plan.n_params_total, shape=plan.shape.to_dict(),
        diverged=diverged, checkpoint=checkpoint,
        epochs=tokens / max(1, len(data.train)))  # > 1: repeated tokens (data.allow_repeats)



def _evaluate_tasks(tasks, model, reducer: RankReducer) -> dict[str, float]:
    """Every task on the model: report keys task/<name>/{acc, acc_norm, loss, chance} (averaged over
    ranks so every rank reports the same) and "_tokens": the tokens one rank ran through the model
    (a command task runs once, on rank 0: its tokens are spread over the ranks)."""
    out: dict[str, float] = {}
    tokens = 0.0
    for name, task in tasks:
        if isinstance(task, CommandTask):
            m = _command_task_once(name, task, model, reducer)
            tokens += m.get("tokens", 0.0) / reducer.world  # the caller counts `world` x one rank's tokens
        else:
            m = run_task(name, task, model, None)  # no tokenizer object: trials train on token ids
            tokens += m.get("tokens", 0.0)
        out.update(task_report(name, m, getattr(task, "chance", None)))
    keys = list(out)
    out = dict(zip(keys, reducer.mean(*out.values()))) if keys else out
    out["_tokens"] = tokens
    return out


def _command_task_once(name: str, task: CommandTask, model, reducer: RankReducer) -> dict[str, float]:
    """A command task (a program on a saved checkpoint) run once per evaluation, on rank 0, with its
    metrics (or its error) sent to every rank. Under ZeRO-3 every rank first gathers the full
    parameters (a collective), so the checkpoint rank 0 writes holds the whole model."""
    module = getattr(model, "module", model)
    partitioned = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if partitioned:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)
    else:
        from contextlib import nullcontext

        gathered = nullcontext()
    result: list[Any] = [None]
    with gathered:
        if reducer.world == 1 or dist.get_rank() == 0:
            try:
                result[0] = run_task(name, task, model, None)
            except TaskError as exc:
                result[0] = str(exc)  # every rank raises it, so all stop together
    if reducer.world > 1:
        dist.broadcast_object_list(result, src=0)
    if isinstance(result[0], str):
        raise TaskError(result[0])
    return result[0]
