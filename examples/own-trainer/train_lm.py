#!/usr/bin/env python
"""A plain-PyTorch language-model training script that runs under scalesweep (trial contract v1).

    python train_lm.py --config CONFIG.json    (scalesweep also sets $SCALESWEEP_TRIAL_CONFIG)

It reads the trial's config (JSON), trains a tiny GPT-like model with about `n_params`
non-embedding parameters on byte tokens of scalesweep's built-in corpus, follows the trial's
learning-rate schedule, and appends one JSON line per evaluation to `metrics_file`. It saves
checkpoints to `checkpoint_dir` (`step<k>`, newest named in `latest`) and resumes from them when
restarted; a WSD branch starts from `branch_from`. On SIGTERM it stops after the current step.
The config's downstream `tasks` run at its evaluations (`tasks_at`) through
`trainers.tasks.evaluate_tasks`: built-in and callable tasks on the model, command tasks (a
lab's harness: eval_task.py) on a checkpoint of this script's own format; reported as
`task/<name>/<metric>`, as the built-in trainer does.
With several workers (WORLD_SIZE > 1, torchrun-style env, or the process group Ray Train made) it
trains data-parallel (DDP, gloo): each rank its share of the batch, rank 0 saves and writes reports.
The same `run()` serves the Python entrypoint (entry.py). Docs: docs/trainers.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# scalesweep's helpers for what the sweep must agree on: the corpus (same tokens as the built-in
# trainer) and the lr rule (the pruner's curve law assumes it). Anything else is this script's own.
from trainers.contract import Schedule
from trainers.corpus import load_data
from trainers.schedules import lr_at


class GPT(nn.Module):
    """Token + position embeddings, pre-norm transformer blocks, tied output head."""

    def __init__(self, vocab: int, seq_len: int, d: int, layers: int, heads: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        block = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        for p in self.parameters():  # GPT-2's N(0, 0.02) (the tied head makes the default N(0, 1) blow up)
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq_len), persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t = x.shape[1]
        h = self.tok(x) + self.pos(torch.arange(t, device=x.device))
        h = self.norm(self.blocks(h, mask=self.mask[:t, :t], is_causal=True))
        logits = h @ self.tok.weight.T
        if y is None:  # the task contract's model(idx) -> logits
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


def shape(n_params: int) -> tuple[int, int, int]:
    """(d_model, layers, heads) with about n_params ≈ 12·layers·d² non-embedding parameters."""
    layers = 1 if n_params < 100_000 else 2
    d = max(16, int(round(math.sqrt(n_params / (12 * layers)) / 8)) * 8)
    return d, layers, 2 if d % 16 == 0 and d >= 32 else 1


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of workers (1, 1 when alone)."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def run(cfg: dict, emit, should_stop=lambda: False) -> None:
    """Train one trial as `cfg` says, calling `emit(report_dict)` at every evaluation (on every rank)."""
    created = False
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")  # env:// from the torchrun-style variables
        created = True
    try:
        _train(cfg, emit, should_stop)
    finally:
        if created:
            dist.destroy_process_group()


def _train(cfg: dict, emit, should_stop) -> None:
    rank, world = rank_and_world()
    torch.set_num_threads(max(1, int(cfg.get("threads", 1))))
    opts = cfg.get("options") or {}
    data = load_data(cfg["data"], cfg.get("data_cache"))
    seq, seqs = cfg["seq_len"], cfg["batch_tokens"] // cfg["seq_len"]
    tokens_per_step = seqs * seq
    if seqs % world:
        raise SystemExit(f"{seqs} sequences per batch do not split over {world} workers")
    total = max(1, math.ceil(cfg["tokens"] / tokens_per_step))
    schedule = Schedule(**cfg["schedule"])
    d, layers, heads = shape(cfg["n_params"])
    torch.manual_seed(cfg["seed"])
    model = GPT(data.vocab_size, seq, d, layers, heads)
    n_real = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("tok.", "pos.")))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.95), weight_decay=0.1)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model  # averages gradients over ranks
    ckdir = Path(cfg["checkpoint_dir"]) if cfg.get("checkpoint_dir") else None
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)

    step, tokens, step_time = 0, 0, 0.0
    source = None
    if ckdir is not None and (ckdir / "latest").exists():  # a restart: this trial's own newest checkpoint
        source = ckdir / (ckdir / "latest").read_text().strip()
    elif cfg.get("branch_from"):  # a WSD cooldown branch: its trunk's state at the branch point
        source = Path(cfg["branch_from"])
    if source is not None:
        state = torch.load(source, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, tokens = state["step"], state["tokens"]
        if source == Path(cfg.get("branch_from") or "") and step != cfg["branch_step"]:
            raise SystemExit(f"branch checkpoint {source} is at step {step}, not {cfg['branch_step']}")
        print(f"resumed from {source} at step {step}", file=sys.stderr)

    def save(at: int) -> None:
        if rank != 0:
            return
        tmp = ckdir / f".step{at}.tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": at, "tokens": tokens}, tmp)
        os.replace(tmp, ckdir / f"step{at}")
        (ckdir / ".latest.tmp").write_text(f"step{at}")
        os.replace(ckdir / ".latest.tmp", ckdir / "latest")
        keep = {f"step{at}", *(f"step{s}" for s in cfg.get("checkpoint_steps") or ())}
        for old in ckdir.glob("step*"):
            if old.name not in keep:
                old.unlink(missing_ok=True)

    val = data.val
    n_eval = max(1, cfg["eval_tokens"] // seq)
    starts = np.linspace(0, len(val) - seq - 2, n_eval).astype(np.int64)
    eval_x = torch.from_numpy(np.stack([val[s:s + seq + 1] for s in starts]).astype(np.int64))

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        loss = sum(model(eval_x[i:i + 64, :-1], eval_x[i:i + 64, 1:]).item() * len(eval_x[i:i + 64])
                   for i in range(0, len(eval_x), 64)) / len(eval_x)
        model.train()
        return loss

    def run_tasks(at: int, last: bool) -> dict:
        """The config's tasks as report keys, at the evaluations `tasks_at` names (every rank runs them)."""
        tasks = cfg.get("tasks") or []
        every = cfg.get("checkpoint_every") or 0
        if not tasks or (cfg.get("tasks_at") == "checkpoints" and not last and not (every and at % every == 0)):
            return {}
        from trainers.tasks import evaluate_tasks  # only when the sweep names tasks

        with tempfile.TemporaryDirectory(prefix="task-checkpoint-") as folder:  # in this script's own format
            torch.save({"model": model.state_dict(), "shape": [data.vocab_size, seq, d, layers, heads]},
                       Path(folder) / "model.pt")
            return evaluate_tasks(tasks, model=model, checkpoint=folder, stream=data.val, seq_len=seq,
                                  n_items=int(cfg.get("task_items", 200)))

    sleep = float(opts.get("step_sleep_s", 0.0))  # a demo/test knob: slow steps down
    losses, t_report, tok_report = [], step_time, tokens
    model.train()
    while step < total:
        lr = lr_at(step, total, cfg["lr"], schedule)
        for g in opt.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([cfg["seed"], rank, step])  # each rank its own share of the batch
        idx = rng.integers(0, len(data.train) - seq - 1, size=seqs // world)
        batch = torch.from_numpy(np.stack([data.train[i:i + seq + 1] for i in idx]).astype(np.int64))
        t0 = time.perf_counter()
        loss = net(batch[:, :-1], batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        step_time += time.perf_counter() - t0
        if sleep:
            time.sleep(sleep)
        step, tokens = step + 1, tokens + tokens_per_step
        stop_now = should_stop()
        if world > 1:  # the mean loss over ranks, and a stop any rank got (all ranks stop at the same step)
            t = torch.tensor([loss.item(), float(stop_now)], dtype=torch.float64)
            dist.all_reduce(t)
            losses.append(t[0].item() / world)
            stop_now = t[1].item() > 0
        else:
            losses.append(loss.item())
        last = step == total
        diverged = not math.isfinite(losses[-1])
        if ckdir is not None and (last or step in (cfg.get("checkpoint_steps") or ())) and not diverged:
            save(step)  # before the report: the trial may end on its final report; branches start on theirs
        if last or diverged or step % cfg["eval_every"] == 0:
            ev = float("nan") if diverged else evaluate()
            dt = step_time - t_report
            emit({"step": step, "tokens": tokens, "lr": lr, "train_loss": sum(losses) / len(losses), "eval_loss": ev,
                  "flops": 6.0 * n_real * tokens, "tokens_per_s": (tokens - tok_report) / dt if dt > 0 else None,
                  "step_time_s": step_time, "done": last or diverged, "grad_norm": grad_norm,
                  "n_params_realised": n_real, "world_size": world, **({} if diverged else run_tasks(step, last))})
            losses, t_report, tok_report = [], step_time, tokens
            every = cfg.get("checkpoint_every") or 0
            if ckdir is not None and every and step % every == 0 and not last:
                save(step)  # after the report: killed in between, the restart reports this step again
        if diverged:
            return
        if stop_now:
            print(f"stopped at step {step} (SIGTERM)", file=sys.stderr)
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get("SCALESWEEP_TRIAL_CONFIG"), help="trial config (JSON)")
    args = parser.parse_args()
    if not args.config:
        parser.error("--config (or $SCALESWEEP_TRIAL_CONFIG) is required")
    cfg = json.loads(Path(args.config).read_text())
    if cfg.get("contract_version") != 1:
        raise SystemExit(f"this script speaks trial contract 1, not {cfg.get('contract_version')}")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    rank = int(os.environ.get("RANK", 0))
    print(f"rank {rank} of {os.environ.get('WORLD_SIZE', 1)}", file=sys.stderr)
    with open(cfg["metrics_file"], "a") as out:
        def emit(report: dict) -> None:
            if rank == 0:  # one writer of the metrics file
                out.write(json.dumps(report) + "\n")
                out.flush()

        run(cfg, emit, should_stop=lambda: stop["now"])


if __name__ == "__main__":
    main()
