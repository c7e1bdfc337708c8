"""A plain PyTorch training loop on the same model, data, batch, optimizer and schedule.

The baseline the DeepSpeed trainer is benchmarked against (benchmarks/trainer_throughput.py):
same `make_plan`, sampler, AdamW groups, gradient clipping, lr rule and evaluation as
`trainers.deepspeed_trainer`, with no engine around the model. Single process only. On CUDA
with bf16 it uses PyTorch's autocast (fp32 weights), the usual plain-PyTorch mixed precision.
"""
from __future__ import annotations

import contextlib
import math
import time

import torch

from trainers.contract import Reporter, TrialConfig, TrialSummary
from trainers.corpus import load_data, sample_batch
from trainers.deepspeed_trainer import (
    ADAM_BETAS, GRAD_CLIP, RankReducer, eval_shard, evaluate, make_plan, make_report, param_groups, pick_device,
    use_bf16,
)
from trainers.model import build_model
from trainers.schedules import lr_at


def train(config: TrialConfig, report: Reporter) -> TrialSummary:
    """Run one single-process trial with a plain loop (no checkpoints), reporting like the DeepSpeed trainer."""
    if config.workers != 1:
        raise ValueError("the plain loop runs one worker only")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, config.threads))
    try:
        device = pick_device()
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16(config, device) \
            else contextlib.nullcontext
        data = load_data(config.data, config.data_cache)
        plan = make_plan(config, 1, data.vocab_size)
        model = build_model(config.n_params, config.seq_len, data.vocab_size, seed=config.seed,
                            family=config.family).to(device)
        opt = torch.optim.AdamW(param_groups(model), lr=config.lr, betas=ADAM_BETAS, eps=1e-8)
        reducer = RankReducer(device)
        windows = eval_shard(config, data, 0, 1)
        step, tokens, flops, step_time = 0, 0, 0.0, 0.0
        loss_sum, loss_steps, tokens_at_report, time_at_report = 0.0, 0, 0, 0.0
        eval_loss, diverged, lr = float("nan"), False, config.lr
        model.train()
        while step < plan.total_steps:
            lr = lr_at(step, plan.total_steps, config.lr, config.schedule)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = sample_batch(data.train, config.seq_len, plan.seqs_per_rank, config.seed, 0, step)
            x, y = x.to(device), y.to(device)
            t0 = time.perf_counter()
            step_loss = 0.0
            for m in range(plan.grad_accum):
                sl = slice(m * plan.micro_batch, (m + 1) * plan.micro_batch)
                with autocast():
                    loss = model(x[sl], y[sl])
                (loss / plan.grad_accum).backward()
                step_loss += loss.detach().item() / plan.grad_accum
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step_time += time.perf_counter() - t0
            step += 1
            tokens += plan.tokens_per_step
            flops += plan.flops_per_token * plan.tokens_per_step
            loss_sum += step_loss
            loss_steps += 1
            last = step == plan.total_steps
            if not math.isfinite(step_loss):
                diverged, last = True, True
            if last or (config.eval_every > 0 and step % config.eval_every == 0):
                if not diverged:
                    model.eval()
                    with autocast():
                        eval_loss = evaluate(model, windows, plan.micro_batch, device, reducer)
                    model.train()
                dt = step_time - time_at_report
                report(make_report(step, tokens, flops, lr, loss_sum / loss_steps,
                                   float("nan") if diverged else eval_loss,
                                   (tokens - tokens_at_report) / dt if dt > 0 else float("nan"), step_time, last))
                loss_sum, loss_steps, tokens_at_report, time_at_report = 0.0, 0, tokens, step_time
            if diverged:
                eval_loss = float("nan")
                break
        return TrialSummary(
            final_eval_loss=eval_loss, steps=step, tokens=tokens, flops=flops, n_params=plan.n_params,
            n_params_total=plan.n_params_total, shape=plan.shape.to_dict(), diverged=diverged)
    finally:
        torch.set_num_threads(old_threads)
