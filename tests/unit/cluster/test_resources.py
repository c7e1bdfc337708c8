"""Resource planner: the ZeRO paper's accounting, published-scale configs, batch splits, errors.

References for the published-scale expectations (also in docs/cluster.md):
- ZeRO paper (Rajbhandari et al. 2020, SC'20), §5 / Figure 1: Ψ = 7.5B, K = 12, Nd = 64 →
  120 / 31.4 / 16.6 / 1.9 GB per device for baseline / P_os / P_os+g / P_os+g+p.
- Llama 2 (Touvron et al. 2023, Table 2): 2T tokens, 4M-token batches, seq 4096, A100-80GB;
  7B 184,320 and 70B 1,720,320 GPU-hours.
- 7B on one node: Megatron/NeMo Llama-2-7B recipes run TP=1, micro-batch 1 with the
  distributed optimizer (ZeRO-1 sharding) on 8×80GB; 7B mixed-precision Adam states
  (16 B/param ≈ 108 GB) do not fit on one 80 GB GPU without offload.
- 70B: Hugging Face's "Fine-tuning Llama 2 70B using PyTorch FSDP" (2023): full sharding
  (ZeRO-3 equivalent) across 2 nodes × 8 A100-80GB with activation checkpointing and
  flash attention; OPT-175B / BLOOM-176B needed hundreds of GPUs.
- 1B: Pythia-1B / TinyLlama-1.1B train with per-GPU micro-batches of 8-16 at seq 2048 with
  data parallelism (ZeRO-1 across many GPUs for throughput, not for memory).
"""
from __future__ import annotations

import pytest

from cluster.resources import (BF16, DEVICES, FP32, GB, GiB, ModelDims, ResourceError, activation_bytes,
                               cpu_device, memory_breakdown, model_state_bytes, plan_resources, throughput)
from trainers.model import count_params, shape_for

A100 = DEVICES["a100-80gb"]
PYTHIA_1B = ModelDims(805_736_448, 1_011_781_632, 16, 2048, 8, 50304)
LLAMA2_7B = ModelDims(6_476_271_616, 6_738_415_616, 32, 4096, 32, 32000)
LLAMA2_70B = ModelDims(68_452_352_000, 68_976_648_192, 80, 8192, 64, 32000)
BATCH_4M = 4 * 2**20  # Llama 2: 4M-token batches of 4096-token sequences


@pytest.mark.parametrize("stage, expected_gb", [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_worked_example(stage: int, expected_gb: float) -> None:
    parts = model_state_bytes(7.5e9, stage, 64, BF16, deepspeed_extras=False)
    assert sum(parts) / GB == pytest.approx(expected_gb, abs=0.05)


def test_fp32_accounting_and_deepspeed_stage2_formula() -> None:
    # fp32 + AdamW at stage 0 = 4 + 4 + 8 bytes per parameter
    assert sum(model_state_bytes(1e6, 0, 1, FP32, deepspeed_extras=False)) == pytest.approx(16e6)
    # with DeepSpeed's fp32 gradient partition, stage 2 is DeepSpeed's own 2P + 18P/n
    for n in (1, 4, 64):
        assert sum(model_state_bytes(1e9, 2, n, BF16)) == pytest.approx(2e9 + 18e9 / n)


def test_tied_embedding_counted_once() -> None:
    shape = shape_for(1_000_000)
    dims = ModelDims.from_shape(shape, seq_len=128)
    counts = count_params(shape, 256, 128)
    assert dims.total_params == counts.total  # unique parameters: the head shares wte
    assert dims.total_params == counts.non_embedding + 256 * shape.d_model + 128 * shape.d_model


def test_activation_formula_and_checkpointing() -> None:
    d = LLAMA2_7B
    # Korthikanti et al.: s·b·h·(34 + 5·a·s/h) per layer in 16-bit without flash attention
    no_flash = activation_bytes(d, 4096, 1, BF16, checkpointing=False, flash_attention=False)
    per_layer = 4096 * 4096 * (34 + 5 * 32 * 4096 / 4096)
    logits = 4096 * 32000 * 10
    assert no_flash == pytest.approx(32 * per_layer + logits)
    flash = activation_bytes(d, 4096, 1, BF16)
    ckpt = activation_bytes(d, 4096, 1, BF16, checkpointing=True)
    assert ckpt < flash < no_flash
    assert ckpt == pytest.approx(32 * 2 * 4096 * 4096 + 4096 * 4096 * 34 + logits)
    # linear in the micro-batch; fp32 doubles the per-layer part
    assert activation_bytes(d, 4096, 4, BF16) == pytest.approx(4 * flash)
    assert activation_bytes(d, 4096, 1, FP32) > 1.9 * (flash - logits)


def test_1b_trains_on_one_gpu_at_stage0() -> None:
    plan = plan_resources(PYTHIA_1B.n_params, 2048, 2 * 2**20, A100, max_workers=8, dims=PYTHIA_1B)
    assert (plan.workers, plan.zero_stage, plan.activation_checkpointing) == (1, 0, False)
    assert plan.micro_batch in (8, 16)
    assert plan.micro_batch * plan.grad_accum == 1024
    assert plan.memory.fits and plan.memory.total <= 80 * GiB


def test_7b_needs_sharding_or_checkpointing() -> None:
    # one 80 GB GPU: mixed-precision Adam states alone are ~108 GB → no stage, no checkpointing fits
    with pytest.raises(ResourceError, match="optimizer states") as err:
        plan_resources(LLAMA2_7B.n_params, 4096, BATCH_4M, A100, max_workers=8, workers=1, dims=LLAMA2_7B)
    assert "What would fit" in str(err.value)
    # a full 8-GPU node without recomputation: plain data parallelism (stage 0) does not fit
    with pytest.raises(ResourceError, match="over the device"):
        plan_resources(LLAMA2_7B.n_params, 4096, BATCH_4M, A100, 8, dims=LLAMA2_7B, workers=8, zero_stage=0,
                       activation_checkpointing=False)
    node = plan_resources(LLAMA2_7B.n_params, 4096, BATCH_4M, A100, 8, dims=LLAMA2_7B, workers=8,
                          activation_checkpointing=False)
    assert node.zero_stage >= 1 and node.micro_batch == 1  # the Megatron/NeMo recipe: sharded optimizer, mbs 1
    # fewest GPUs: ZeRO-3 sharding plus activation checkpointing
    fewest = plan_resources(LLAMA2_7B.n_params, 4096, BATCH_4M, A100, 8, dims=LLAMA2_7B)
    assert 2 <= fewest.workers <= 8
    assert fewest.zero_stage == 3 and fewest.activation_checkpointing


def test_70b_needs_zero3_with_checkpointing_on_16_to_64_gpus() -> None:
    plan = plan_resources(LLAMA2_70B.n_params, 4096, BATCH_4M, A100, max_workers=64, dims=LLAMA2_70B)
    assert plan.zero_stage == 3 and plan.activation_checkpointing
    assert 16 <= plan.workers <= 64
    # without checkpointing one 4096-token sequence's activations exceed the card
    assert activation_bytes(LLAMA2_70B, 4096, 1, BF16) > 80 * GiB
    with pytest.raises(ResourceError, match="What would fit: ZeRO-3 on 32 workers"):
        plan_resources(LLAMA2_70B.n_params, 4096, BATCH_4M, A100, 64, dims=LLAMA2_70B, workers=8)


@pytest.mark.parametrize("dims, published", [(LLAMA2_7B, 184_320), (LLAMA2_70B, 1_720_320)])
def test_device_hours_match_llama2(dims: ModelDims, published: float) -> None:
    tp = throughput(dims, 4096, BATCH_4M, A100, workers=64, tokens=2 * 10**12, mfu=0.4)
    assert tp.device_hours == pytest.approx(published, rel=0.15)
    ckpt = throughput(dims, 4096, BATCH_4M, A100, workers=64, tokens=2 * 10**12, mfu=0.4, checkpointing=True)
    assert ckpt.device_hours == pytest.approx(tp.device_hours * 4 / 3)


def test_measured_tokens_per_s_sets_mfu() -> None:
    dims = ModelDims.for_n(1_000_000, 128)
    tp = throughput(dims, 128, 128 * 64, cpu_device(8 * GiB, 2), workers=2, tokens=10**7,
                    measured_tokens_per_s=5000.0)
    assert tp.tokens_per_s == pytest.approx(10000.0)
    assert tp.trial_time_s == pytest.approx(1000.0)
    assert tp.device_hours == pytest.approx(2 * 1000.0 / 3600)
    assert tp.mfu == pytest.approx(5000.0 * 6 * dims.n_params / 1e11)


@pytest.mark.parametrize("n_seqs, workers", [(96, 4), (48, 3), (7, 1), (64, 8)])
def test_micro_batch_divides_share(n_seqs: int, workers: int) -> None:
    dev = cpu_device(4 * GiB, 1)
    plan = plan_resources(3_000_000, 128, n_seqs * 128, dev, max_workers=workers, workers=workers)
    share = n_seqs // workers
    assert share % plan.micro_batch == 0 and plan.micro_batch * plan.grad_accum == share
    assert plan.micro_batch & (plan.micro_batch - 1) == 0  # a power of two
    # the largest power of two dividing the share (memory is ample here)
    assert share % (2 * plan.micro_batch) != 0


def test_memory_limits_micro_batch_on_small_device() -> None:
    dims = ModelDims.for_n(3_000_000, 512)
    small = cpu_device(1.0 * GiB, 1)
    plan = plan_resources(3_000_000, 512, 512 * 256, small, 1)
    assert plan.micro_batch < 256 and plan.memory.fits
    bigger = memory_breakdown(dims, 512, 2 * plan.micro_batch, small, plan.zero_stage, 1)
    assert not bigger.fits  # the next power of two would not fit


def test_cpu_small_models_plan_stage0_one_worker() -> None:
    plan = plan_resources(1_000_000, 128, 128 * 32, cpu_device(8 * GiB, 2), max_workers=4)
    assert (plan.workers, plan.zero_stage, plan.micro_batch, plan.grad_accum) == (1, 0, 32, 1)
    assert plan.precision == "fp32" and not plan.activation_checkpointing


def test_explicit_values_validated() -> None:
    dev = cpu_device(8 * GiB, 1)
    with pytest.raises(ResourceError, match="does not divide the per-worker share"):
        plan_resources(1_000_000, 128, 128 * 24, dev, 2, workers=2, micro_batch=5)
    with pytest.raises(ResourceError, match="does not divide the global batch"):
        plan_resources(1_000_000, 128, 128 * 10, dev, 4, workers=4)
    with pytest.raises(ResourceError, match="outside 1..max_workers"):
        plan_resources(1_000_000, 128, 128 * 8, dev, 2, workers=4)
    with pytest.raises(ResourceError, match="multiple of seq_len"):
        plan_resources(1_000_000, 128, 1000, dev, 1)
    with pytest.raises(ResourceError, match="zero_stage"):
        plan_resources(1_000_000, 128, 128 * 8, dev, 1, zero_stage=4)
    ok = plan_resources(1_000_000, 128, 128 * 24, dev, 2, workers=2, zero_stage=2, micro_batch=4)
    assert (ok.workers, ok.zero_stage, ok.micro_batch, ok.grad_accum) == (2, 2, 4, 3)


def test_error_names_overflowing_component_and_amount() -> None:
    tiny = cpu_device(0.6 * GiB, 1)
    with pytest.raises(ResourceError) as err:
        plan_resources(3_000_000, 1024, 1024 * 64, tiny, 1, micro_batch=64)
    msg = str(err.value)
    assert "activations" in msg and "over the device's" in msg and "What would fit" in msg


def test_beyond_family_uses_aspect_rule() -> None:
    dims = ModelDims.for_n(70_000_000_000, 4096, vocab_size=32000)
    assert dims.d_model % 64 == 0 and dims.n_layers > 64
    assert 12 * dims.n_layers * dims.d_model**2 == pytest.approx(7e10, rel=0.1)
