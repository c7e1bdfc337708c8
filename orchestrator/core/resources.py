"""Per-trial resource planning: a memory model and a throughput model → ZeRO stage, workers,
micro-batch, gradient accumulation and cost in device-hours.

Memory per worker (bytes), P = unique parameters (a tied embedding counted once), n = workers:

* model states, the ZeRO paper's accounting (Rajbhandari et al. 2020, §3 and §5): 16-bit
  params and grads (2 + 2 bytes) and K = 12 bytes of fp32 optimizer state (master weights +
  AdamW's two moments) for bf16 mixed precision; fp32 training keeps 4 + 4 bytes and K = 8
  (no separate master copy).  stage 0: (2+2+K)·P; stage 1: 2P + 2P + K·P/n;
  stage 2: 2P + (2+K)·P/n; stage 3: (2+2+K)·P/n.
* DeepSpeed's extra states: its ZeRO optimizers keep an fp32 gradient partition (4·P/n; full
  size 4·P for bf16 at stage 0), and with fp32 weights at stage ≥ 1 a cloned fp32 partition
  (4·P/n). With them stage 2 is exactly DeepSpeed's own estimate 2P + 18·P/n
  (`estimate_zero2_model_states_mem_needs`).
* buffers: the contiguous gradient bucket DeepSpeed allocates at its full reduce_bucket_size
  (5e8 elements: fp32 at stage 1, the gradient dtype at 2-3, whatever the model's size);
  ZeRO-3's gathered parameters of the largest layer (4 bytes per element, as in
  `estimate_zero3_model_states_mem_needs`) plus its prefetch bucket.
* activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", Table 2 with t = 1): per layer s·b·h·(34 + 5·a·s/h) bytes in 16-bit;
  the 5·a·s/h term (the a·s² attention scores) is not stored by fused/flash attention
  (PyTorch SDPA, which our model uses). Full activation checkpointing keeps the layer
  inputs, 2·s·b·h bytes per layer, plus one layer's activations while it is recomputed.
  fp32 activations take twice the bytes. The logits add s·b·V·(a + 8) bytes (the logits
  in the activation dtype, their fp32 upcast and its gradient). The llama families (no
  dropout, RMSNorm, SwiGLU) store 26 + 8·F/h instead of 34 per s·b·h (F = d_ff, ~47 at
  Llama's F ≈ 8h/3): two RMSNorms keep their fp32 input and normalised output (2·6),
  attention the q/k/v projection input, post-rotary q and k, v, the output and its
  contiguous copy (2·6), the SwiGLU its input (2) and four F-wide tensors (gate, SiLU(gate),
  up, their product: 4·2·F/h). Counted with saved-tensor hooks on the real model (bf16 and
  fp32 on CPU), this is at most 5 % over in bf16 and 13 % over in fp32, where the RMSNorm
  upcast copies nothing (tests/unit/trainers/test_llama.py).
* overhead: a fixed per-process amount (CUDA context, NCCL/gloo buffers, the framework) and
  an allocator-fragmentation fraction of everything else.

Throughput: FLOPs per token from `orchestrator.core.family` (6·N, or the exact count), a device's peak
FLOP/s and an assumed model-FLOPs utilisation (or a measured tokens/s) give the step time;
activation checkpointing re-runs the forward (+2·N of 6·N, a 4/3 step time).

`plan_resources` picks the smallest number of workers, then no activation checkpointing
before checkpointing (recomputation costs a third more compute), then the lowest ZeRO stage
(stages 1-2 communicate as much as plain data parallelism, stage 3 half again more), then the
largest power-of-two micro-batch that divides the worker's share of the global batch.

Long because the memory model, the throughput model and `plan_resources`, which searches both, share one set
of types (`DeviceSpec`, `ModelDims`, `Precision`, `MemoryBreakdown`).
"""
from __future__ import annotations

import enum
import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Literal, Optional, Union

from .family import (BYTE_VOCAB, LLAMA_FAMILIES, MAX_HEAD_DIM, Shape, count_params, flops_per_token, llama_d_ff,
                     llama_head_dim, shape_for)

GPT_ACT_PER_LAYER = 34.0  # Korthikanti et al. 2022's 16-bit bytes per s·b·h of a GPT layer (flash attention)


def llama_act_per_layer(d_model: int, d_ff: int) -> float:
    """16-bit bytes per s·b·h that one llama layer stores for its backward (module docstring).

    >>> llama_act_per_layer(1024, 2752)
    47.5
    """
    return 26.0 + 8.0 * d_ff / d_model

GiB = float(2**30)
GB = 1e9

Kind = Literal["cpu", "gpu"]


class Auto(enum.Enum):
    """A resource setting the memory model chooses (the spec's `auto`): `AUTO`, a value of its own type,
    never the string (`orchestrator.config.planning` converts the spec's word)."""

    AUTO = "auto"


AUTO = Auto.AUTO


class ResourceError(ValueError):
    """A trial's resources cannot work: it does not fit, or the values contradict each other."""


@dataclass(frozen=True)
class DeviceSpec:
    """One worker's device: memory, dense peak FLOP/s in the training precision, assumed MFU."""

    name: str
    kind: Kind
    memory_bytes: float
    peak_flops: float
    mfu: float = 0.4  # assumed model-FLOPs utilisation when no measurement is given
    overhead_bytes: Optional[float] = None  # fixed per-process overhead; None = per kind
    fragmentation: Optional[float] = None  # allocator fragmentation fraction; None = per kind

    @property
    def fixed_overhead(self) -> float:
        """CUDA context + NCCL buffers (GPU) or interpreter + torch (CPU), bytes."""
        if self.overhead_bytes is not None:
            return float(self.overhead_bytes)
        return 2.0 * GiB if self.kind == "gpu" else 0.5 * GiB

    @property
    def fragmentation_frac(self) -> float:
        """Fraction added for the caching allocator's fragmentation."""
        if self.fragmentation is not None:
            return float(self.fragmentation)
        return 0.10 if self.kind == "gpu" else 0.05


# Dense bf16 peaks without sparsity (NVIDIA datasheets: A100 312 TFLOP/s; H100 SXM and
# H200 989 TFLOP/s). Memory as the devices report it (80 GiB cards show ~79.2 GiB usable,
# which the fixed overhead covers).
DEVICES: dict[str, DeviceSpec] = {
    "a100-40gb": DeviceSpec("a100-40gb", "gpu", 40 * GiB, 312e12, mfu=0.4),
    "a100-80gb": DeviceSpec("a100-80gb", "gpu", 80 * GiB, 312e12, mfu=0.4),
    "h100-80gb": DeviceSpec("h100-80gb", "gpu", 80 * GiB, 989e12, mfu=0.35),
    "h200-141gb": DeviceSpec("h200-141gb", "gpu", 141 * GiB, 989e12, mfu=0.35),
}


def machine_memory_bytes() -> float:
    """Physical memory of this machine in bytes (what a CPU worker here can use at most).

    >>> machine_memory_bytes() > 0
    True
    """
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a modest laptop
        return 16.0 * GiB


def cpu_device(memory_bytes: float, cores: int = 1, flops_per_core: float = 5e10, mfu: float = 0.2) -> DeviceSpec:
    """A CPU worker: `memory_bytes` of RAM and `cores` threads at ~`flops_per_core` fp32 FLOP/s.

    >>> dev = cpu_device(8 * GiB, cores=4)
    >>> dev.name, dev.peak_flops, dev.fixed_overhead / GiB
    ('cpu-4c', 200000000000.0, 0.5)
    """
    return DeviceSpec(f"cpu-{cores}c", "cpu", float(memory_bytes), cores * flops_per_core, mfu=mfu)


@dataclass(frozen=True)
class ModelDims:
    """What the planner needs of a model: N for FLOPs, unique parameters for memory, and the
    dimensions that set activation memory."""

    n_params: int  # non-embedding parameters N (6·N FLOPs per token)
    total_params: int  # unique parameters held in memory (tied embedding once)
    n_layers: int
    d_model: int
    n_heads: int
    vocab_size: int = BYTE_VOCAB
    largest_layer_params: int = 0  # largest single module (ZeRO-3 gathers it whole); 0 = estimate
    shape: Optional[Shape] = None  # the family member, when the model is one (exact FLOPs)
    act_per_layer: float = GPT_ACT_PER_LAYER  # 16-bit activation bytes per s·b·h of one layer

    @property
    def largest_layer(self) -> int:
        """Parameters of the largest module: the MLP's up-projection or the embedding."""
        if self.largest_layer_params:
            return self.largest_layer_params
        d = self.d_model
        return max(4 * d * d + 4 * d, self.vocab_size * d)

    @classmethod
    def from_shape(cls, shape: Shape, seq_len: int, vocab_size: int = BYTE_VOCAB) -> "ModelDims":
        """Dimensions of a member of a model family (`orchestrator.core.family`)."""
        counts = count_params(shape, vocab_size, seq_len)
        if shape.arch == "llama":  # bias-free SwiGLU matrices; the (untied) head is as big as the embedding
            largest = max(shape.d_model * shape.d_ff, vocab_size * shape.d_model)
            act = llama_act_per_layer(shape.d_model, shape.d_ff)
        else:
            largest = max(shape.d_model * shape.d_ff + shape.d_ff, vocab_size * shape.d_model)
            act = GPT_ACT_PER_LAYER
        return cls(counts.non_embedding, counts.total, shape.n_layers, shape.d_model, shape.n_heads,
                   vocab_size, largest, shape, act)

    @classmethod
    def for_n(cls, n_params: int, seq_len: int, vocab_size: int = BYTE_VOCAB, family: str = "gpt") -> "ModelDims":
        """The family member for N; beyond the family, its aspect rule (d = 64·L, N = 12·L·d²).

        >>> ModelDims.for_n(53_440, 128, family="llama").total_params  # N + embedding + untied head
        86208
        """
        try:
            return cls.from_shape(shape_for(n_params, family), seq_len, vocab_size)
        except ValueError:
            if n_params <= 0:
                raise
        n_layers = max(1, round((n_params / (12.0 * 64**2)) ** (1.0 / 3.0)))
        if family in LLAMA_FAMILIES:
            d0 = math.sqrt(n_params / (12.0 * n_layers))
            h = llama_head_dim(int(d0))
            d = max(h, int(round(d0 / h)) * h)
            total = n_params + vocab_size * d * (1 if family == "llama-tied" else 2)
            return cls(n_params, total, n_layers, d, d // h, vocab_size, max(d * llama_d_ff(d), vocab_size * d),
                       act_per_layer=llama_act_per_layer(d, llama_d_ff(d)))
        d = max(MAX_HEAD_DIM, int(round(math.sqrt(n_params / (12.0 * n_layers)) / MAX_HEAD_DIM)) * MAX_HEAD_DIM)
        total = n_params + vocab_size * d + seq_len * d
        return cls(n_params, total, n_layers, d, d // MAX_HEAD_DIM, vocab_size)


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter of each model state, and of activations."""

    name: str
    param_bytes: int
    grad_bytes: int
    optim_bytes: int  # K: master weights (if separate) + AdamW moments
    act_bytes: int


FP32 = Precision("fp32", 4, 4, 8, 4)
BF16 = Precision("bf16", 2, 2, 12, 2)
PRECISIONS = {"fp32": FP32, "bf16": BF16}


@dataclass(frozen=True)
class ZeroBuffers:
    """DeepSpeed's buffer sizes in elements (its defaults)."""

    reduce_bucket_size: float = 5e8
    stage3_prefetch_bucket_size: float = 5e7

    @classmethod
    def for_trainer(cls, total_params: float) -> "ZeroBuffers":
        """The buckets our DeepSpeed trainer configures: DeepSpeed's 5e8 capped at the model
        (at least 2^20), so small trials don't each reserve gigabytes
        (`trainers.deepspeed_trainer.deepspeed_config`; a unit test keeps the two equal).

        >>> ZeroBuffers.for_trainer(1e6).reduce_bucket_size == 2**20
        True
        """
        bucket = float(min(max(total_params, 1 << 20), 5e8))
        return cls(bucket, bucket)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per worker by component; `capacity` is the device's memory."""

    params: float
    grads: float
    optimizer: float
    extra_states: float  # DeepSpeed's fp32 gradient partition (and fp32 clone for fp32 weights)
    buffers: float  # communication buckets / ZeRO-3 gathered layer
    activations: float
    overhead: float  # fixed + fragmentation
    capacity: float

    @property
    def model_states(self) -> float:
        """Parameters + gradients + optimizer states (+ DeepSpeed's extra states)."""
        return self.params + self.grads + self.optimizer + self.extra_states

    @property
    def total(self) -> float:
        """Everything a worker holds at its peak."""
        return self.model_states + self.buffers + self.activations + self.overhead

    @property
    def fits(self) -> bool:
        """Whether the total is within the device's memory."""
        return self.total <= self.capacity

    def largest_component(self) -> tuple[str, float]:
        """(name, bytes) of the biggest component."""
        parts = {"parameters": self.params, "gradients": self.grads, "optimizer states": self.optimizer,
                 "DeepSpeed fp32 states": self.extra_states, "ZeRO buffers": self.buffers,
                 "activations": self.activations, "overhead": self.overhead}
        name = max(parts, key=parts.__getitem__)
        return name, parts[name]

    def to_dict(self) -> dict[str, float]:
        """Plain dict in bytes, with model_states and total."""
        return {**asdict(self), "model_states": self.model_states, "total": self.total}

    def describe(self) -> str:
        """One line in GiB."""
        return (f"params {self.params / GiB:.2f} + grads {self.grads / GiB:.2f} + optimizer "
                f"{self.optimizer / GiB:.2f} + fp32 extra {self.extra_states / GiB:.2f} + buffers "
                f"{self.buffers / GiB:.2f} + activations {self.activations / GiB:.2f} + overhead "
                f"{self.overhead / GiB:.2f} = {self.total / GiB:.2f} GiB of {self.capacity / GiB:.2f} GiB")


def model_state_bytes(total_params: float, zero_stage: int, workers: int, precision: Precision = BF16,
                      deepspeed_extras: bool = True) -> tuple[float, float, float, float]:
    """(params, grads, optimizer, extra) bytes per worker under ZeRO `zero_stage` on `workers` ranks.

    >>> [b / 1e9 for b in model_state_bytes(1e9, zero_stage=2, workers=8)]  # DeepSpeed's 2P + 18·P/n
    [2.0, 0.25, 1.5, 0.5]
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ResourceError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    if workers < 1:
        raise ResourceError(f"workers must be >= 1, got {workers}")
    p, n = float(total_params), float(workers)
    params = precision.param_bytes * p / (n if zero_stage >= 3 else 1.0)
    grads = precision.grad_bytes * p / (n if zero_stage >= 2 else 1.0)
    optimizer = precision.optim_bytes * p / (n if zero_stage >= 1 else 1.0)
    extra = 0.0
    if deepspeed_extras:
        if zero_stage >= 1:
            extra = 4.0 * p / n  # fp32 gradient partition the optimizer steps on
            if precision.param_bytes == 4:
                extra += 4.0 * p / n  # ZeRO clones the fp32 partition even for fp32 weights
        elif precision.param_bytes == 2:
            extra = 4.0 * p  # bf16 at stage 0: DeepSpeed's BF16_Optimizer fp32 gradients
    return params, grads, optimizer, extra


def zero_buffer_bytes(dims: ModelDims, zero_stage: int, precision: Precision = BF16,
                      buffers: ZeroBuffers = ZeroBuffers()) -> float:
    """DeepSpeed's gradient buckets and ZeRO-3 gathered parameters, bytes per worker.

    DeepSpeed allocates its contiguous gradient bucket at the full `reduce_bucket_size`
    whatever the model's size (ZeRO-1 stages an fp32 accumulator, ZeRO-2/3 the gradient
    dtype); ZeRO-3 also holds the largest layer gathered (4 bytes per element, its own
    estimator's term) and a prefetch bucket.

    >>> zero_buffer_bytes(ModelDims.for_n(1_000_000, 128), zero_stage=2) / 1e9  # the 5e8-element bucket, bf16
    1.0
    """
    if zero_stage == 1:
        return buffers.reduce_bucket_size * 4.0
    if zero_stage == 2:
        return buffers.reduce_bucket_size * precision.grad_bytes
    if zero_stage == 3:
        p = float(dims.total_params)
        return (buffers.reduce_bucket_size * precision.grad_bytes + 4.0 * dims.largest_layer
                + min(p, buffers.stage3_prefetch_bucket_size) * precision.param_bytes)
    return 0.0


def activation_bytes(dims: ModelDims, seq_len: int, micro_batch: int, precision: Precision = BF16,
                     checkpointing: bool = False, flash_attention: bool = True) -> float:
    """Activation memory of one micro-batch per worker (Korthikanti et al. 2022, t = 1).

    >>> dims = ModelDims.for_n(1_000_000, 128)
    >>> activation_bytes(dims, 128, 8) / 2**20, activation_bytes(dims, 128, 8, checkpointing=True) / 2**20
    (18.935546875, 8.9453125)
    """
    s, b, h, a, L = float(seq_len), float(micro_batch), float(dims.d_model), float(dims.n_heads), dims.n_layers
    scale = precision.act_bytes / 2.0  # the formula counts 16-bit activations
    per_layer = s * b * h * (dims.act_per_layer + (0.0 if flash_attention else 5.0 * a * s / h)) * scale
    logits = s * b * dims.vocab_size * (precision.act_bytes + 8.0)
    if checkpointing:
        # stored layer inputs + the one layer being recomputed during its backward
        return L * 2.0 * s * b * h * scale + per_layer + logits
    return L * per_layer + logits


def memory_breakdown(dims: ModelDims, seq_len: int, micro_batch: int, device: DeviceSpec, zero_stage: int,
                     workers: int, checkpointing: bool = False, precision: Optional[Precision] = None,
                     flash_attention: bool = True, buffers: ZeroBuffers = ZeroBuffers()) -> MemoryBreakdown:
    """Peak memory of one worker for this configuration.

    >>> mb = memory_breakdown(ModelDims.for_n(1_000_000, 128), 128, 8, DEVICES["h100-80gb"], zero_stage=0, workers=1)
    >>> mb.fits, round(mb.total / GiB, 2), mb.largest_component()[0]
    (True, 2.04, 'overhead')
    """
    prec = precision or default_precision(device)
    params, grads, optimizer, extra = model_state_bytes(dims.total_params, zero_stage, workers, prec)
    buf = zero_buffer_bytes(dims, zero_stage, prec, buffers)
    act = activation_bytes(dims, seq_len, micro_batch, prec, checkpointing, flash_attention)
    variable = params + grads + optimizer + extra + buf + act
    overhead = device.fixed_overhead + device.fragmentation_frac * variable
    return MemoryBreakdown(params, grads, optimizer, extra, buf, act, overhead, float(device.memory_bytes))


def default_precision(device: DeviceSpec) -> Precision:
    """bf16 mixed precision on GPUs, fp32 on CPUs (what the DeepSpeed trainer does).

    >>> default_precision(DEVICES["h100-80gb"]).name, default_precision(cpu_device(GiB)).name
    ('bf16', 'fp32')
    """
    return BF16 if device.kind == "gpu" else FP32


@dataclass(frozen=True)
class Throughput:
    """Speed and cost of a trial under a configuration."""

    flops_per_token: float  # model FLOPs per token (no recomputation)
    mfu: float  # model-FLOPs utilisation assumed or measured
    tokens_per_s: float  # whole trial (all workers)
    step_time_s: float  # one optimizer step (global batch)
    trial_time_s: Optional[float]  # None when the trial's tokens are unknown
    device_hours: Optional[float]


def throughput(dims: ModelDims, seq_len: int, batch_tokens: int, device: DeviceSpec, workers: int,
               tokens: Optional[int] = None, checkpointing: bool = False, mfu: Optional[float] = None,
               measured_tokens_per_s: Optional[float] = None, exact_flops: bool = False) -> Throughput:
    """Step time, trial time and device-hours from FLOPs per token and an MFU (or a measurement).

    `measured_tokens_per_s` is per worker, measured in the same configuration; it overrides the MFU.

    >>> t = throughput(ModelDims.for_n(1_000_000, 128), 128, 4096, DEVICES["h100-80gb"], 1, tokens=10**9)
    >>> t.mfu, round(t.trial_time_s, 1)
    (0.35, 17.1)
    """
    if exact_flops and dims.shape is not None:
        fpt = flops_per_token(dims.shape, seq_len, dims.vocab_size, exact=True)
    else:
        fpt = 6.0 * dims.n_params
    if measured_tokens_per_s is not None:
        if measured_tokens_per_s <= 0:
            raise ResourceError(f"measured_tokens_per_s must be positive, got {measured_tokens_per_s}")
        per_worker = float(measured_tokens_per_s)
        used = per_worker * fpt / device.peak_flops
    else:
        used = device.mfu if mfu is None else float(mfu)
        if not 0 < used <= 1:
            raise ResourceError(f"mfu must be in (0, 1], got {used}")
        per_worker = used * device.peak_flops / fpt / (4.0 / 3.0 if checkpointing else 1.0)
    tps = per_worker * workers
    step = batch_tokens / tps
    trial = None if tokens is None else tokens / tps
    hours = None if trial is None else trial * workers / 3600.0
    return Throughput(fpt, used, tps, step, trial, hours)


@dataclass(frozen=True)
class ResourcePlan:
    """How to run one trial: parallelism, batch split, memory per worker and cost."""

    zero_stage: int
    workers: int
    micro_batch: int  # sequences per worker per micro-step
    grad_accum: int  # micro-steps per optimizer step
    activation_checkpointing: bool
    precision: str
    memory: MemoryBreakdown  # per worker
    fits: bool
    step_time_s: float
    tokens_per_s: float
    device_hours: Optional[float]
    reason: str

    def to_dict(self) -> dict:
        """Plain dict (memory in bytes) for logs, MLflow params and JSON."""
        d = asdict(self)
        d["memory"] = self.memory.to_dict()
        return d


def _pow2_divisors(share: int) -> list[int]:
    """Powers of two that divide `share`, largest first."""
    out, m = [], 1
    while share % m == 0 and m <= share:
        out.append(m)
        m *= 2
    return out[::-1]


def _label(stage: int, workers: int, micro: int, ckpt: bool) -> str:
    return (f"ZeRO-{stage} on {workers} worker{'s' if workers > 1 else ''}, micro-batch {micro}, "
            f"{'with' if ckpt else 'no'} activation checkpointing")


def plan_resources(n_params: int, seq_len: int, batch_tokens: int, device: DeviceSpec, max_workers: int = 1, *,
                   zero_stage: Union[int, Auto] = AUTO, workers: Union[int, Auto] = AUTO,
                   activation_checkpointing: Union[bool, Auto] = AUTO, micro_batch: Union[int, Auto] = AUTO,
                   tokens: Optional[int] = None, dims: Optional[ModelDims] = None,
                   vocab_size: int = BYTE_VOCAB, precision: Union[str, Auto] = AUTO,
                   flash_attention: bool = True, mfu: Optional[float] = None,
                   measured_tokens_per_s: Optional[float] = None, exact_flops: bool = False,
                   buffers: ZeroBuffers = ZeroBuffers(), suggest: bool = True) -> ResourcePlan:
    """The cheapest configuration that fits (fewest workers, no recomputation, lowest stage,
    largest micro-batch); explicit values are validated and a misfit raises `ResourceError`
    (naming what would fit, unless `suggest` is false).

    >>> dims = ModelDims.for_n(7_000_000_000, 2048, family="llama")
    >>> p = plan_resources(7_000_000_000, 2048, 2**20, DEVICES["h100-80gb"], max_workers=8, dims=dims)
    >>> p.workers, p.zero_stage, p.micro_batch, p.grad_accum, p.activation_checkpointing
    (2, 3, 4, 64, True)
    """
    dims = dims or ModelDims.for_n(n_params, seq_len, vocab_size)
    prec = default_precision(device) if precision is AUTO else PRECISIONS.get(str(precision))
    if prec is None:
        raise ResourceError(f"precision must be fp32, bf16 or AUTO (the device's default), got {precision!r}")
    if seq_len <= 0 or batch_tokens <= 0 or batch_tokens % seq_len:
        raise ResourceError(f"batch_tokens={batch_tokens} must be a positive multiple of seq_len={seq_len}")
    n_seqs = batch_tokens // seq_len
    if max_workers < 1:
        raise ResourceError(f"max_workers must be >= 1, got {max_workers}")

    if workers is AUTO:
        worker_options = [w for w in range(1, max_workers + 1) if n_seqs % w == 0]
    else:
        w = int(workers)
        if w < 1 or w > max_workers:
            raise ResourceError(f"workers={w} is outside 1..max_workers={max_workers}")
        if n_seqs % w:
            raise ResourceError(f"workers={w} does not divide the global batch of {n_seqs} sequences "
                                f"({batch_tokens} tokens / seq_len {seq_len})")
        worker_options = [w]
    if zero_stage is AUTO:
        stage_options = [0, 1, 2, 3]
    else:
        if zero_stage not in (0, 1, 2, 3):
            raise ResourceError(f"zero_stage must be 0, 1, 2, 3 or auto, got {zero_stage!r}")
        stage_options = [int(zero_stage)]
    ckpt_options = [False, True] if activation_checkpointing is AUTO else [bool(activation_checkpointing)]

    def micro_options(share: int) -> list[int]:
        if micro_batch is AUTO:
            return _pow2_divisors(share)
        m = int(micro_batch)
        if m < 1 or share % m:
            raise ResourceError(f"micro_batch={m} does not divide the per-worker share of {share} sequences")
        return [m]

    def mem(stage: int, w: int, m: int, ckpt: bool) -> MemoryBreakdown:
        return memory_breakdown(dims, seq_len, m, device, stage, w, ckpt, prec, flash_attention, buffers)

    explicit = [k for k, v in (("workers", workers), ("zero_stage", zero_stage), ("micro_batch", micro_batch),
                               ("activation_checkpointing", activation_checkpointing)) if v is not AUTO]
    smallest: Optional[tuple[MemoryBreakdown, str]] = None  # the closest miss, for the error
    for w in worker_options:
        share = n_seqs // w
        micros = micro_options(share)
        for ckpt in ckpt_options:
            for stage in stage_options:
                for m in micros:
                    mb = mem(stage, w, m, ckpt)
                    if mb.fits:
                        tp = throughput(dims, seq_len, batch_tokens, device, w, tokens, ckpt, mfu,
                                        measured_tokens_per_s, exact_flops)
                        why = (f"{_label(stage, w, m, ckpt)}: {mb.total / GiB:.1f} of {mb.capacity / GiB:.1f} GiB "
                               f"per worker ({prec.name}); chosen as the fewest workers, then no recomputation, "
                               f"then the lowest ZeRO stage, then the largest micro-batch dividing the share "
                               f"of {share} sequences" + (f"; fixed: {', '.join(explicit)}" if explicit else ""))
                        return ResourcePlan(stage, w, m, share // m, ckpt, prec.name, mb, True, tp.step_time_s,
                                            tp.tokens_per_s, tp.device_hours, why)
                    if smallest is None or mb.total < smallest[0].total:
                        smallest = (mb, _label(stage, w, m, ckpt))
    assert smallest is not None
    mb, label = smallest
    comp, size = mb.largest_component()
    msg = (f"{dims.total_params / 1e9:.3g}B parameters (seq_len {seq_len}, {n_seqs} sequences per step) do not fit "
           f"on {device.name}: the smallest candidate, {label}, needs {mb.total / GiB:.1f} GiB per worker, "
           f"over the device's {mb.capacity / GiB:.1f} GiB by {(mb.total - mb.capacity) / GiB:.1f} GiB; "
           f"largest component: {comp} {size / GiB:.1f} GiB ({mb.describe()})")
    if not suggest:
        raise ResourceError(msg)
    hint = _what_fits(n_params, seq_len, batch_tokens, device, max_workers, dims, prec, flash_attention, buffers)
    raise ResourceError(msg + ". " + hint)


def _what_fits(n_params: int, seq_len: int, batch_tokens: int, device: DeviceSpec, max_workers: int,
               dims: ModelDims, prec: Precision, flash_attention: bool, buffers: ZeroBuffers) -> str:
    """A sentence naming a configuration that would fit (relaxing every explicit choice)."""
    for limit in sorted({max_workers, 8, 64, 512, 4096}):
        if limit < max_workers:
            continue
        try:
            p = plan_resources(n_params, seq_len, batch_tokens, device, limit, dims=dims, precision=prec.name,
                               flash_attention=flash_attention, buffers=buffers, suggest=False)
        except ResourceError:
            continue
        more = "" if limit == max_workers else f" (needs {p.workers} workers, more than max_workers={max_workers})"
        return f"What would fit: {_label(p.zero_stage, p.workers, p.micro_batch, p.activation_checkpointing)}{more}"
    return "Nothing fits up to 4096 workers: use a device with more memory, a shorter sequence or offloading"


def with_measured_throughput(plan: ResourcePlan, dims: ModelDims, seq_len: int, batch_tokens: int,
                             device: DeviceSpec, tokens: Optional[int], measured_tokens_per_s: float) -> ResourcePlan:
    """The plan with its time and cost recomputed from a measured per-worker tokens/s.

    >>> dims = ModelDims.for_n(1_000_000, 128)
    >>> p = plan_resources(1_000_000, 128, 4096, DEVICES["h100-80gb"], dims=dims)
    >>> with_measured_throughput(p, dims, 128, 4096, DEVICES["h100-80gb"], 10**9, 5e5).tokens_per_s
    500000.0
    """
    tp = throughput(dims, seq_len, batch_tokens, device, plan.workers, tokens, plan.activation_checkpointing,
                    measured_tokens_per_s=measured_tokens_per_s)
    return replace(plan, step_time_s=tp.step_time_s, tokens_per_s=tp.tokens_per_s, device_hours=tp.device_hours)
