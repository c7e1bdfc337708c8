"""The sweep spec: every knob a user may turn, typed, documented and validated.

A spec is loaded from YAML with `load_spec(path)`. Any problem raises `SpecError` whose
message names the field and the reason; the CLI turns it into exit status 2 before
anything is started.

Long because it is one schema: a pydantic model per spec section, each field's doc and checks beside it, and
the checks across sections that need them all; the spec's reference is this one file.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union
from urllib.parse import urlparse

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from ..core.family import count_params, family_sizes, shape_for
from ..core.resources import DEVICES, GiB, ResourceError, cpu_device, machine_memory_bytes
from .sizing import check_trial_resources, smallest_cell_flops


class SpecError(ValueError):
    """A spec that cannot run; the message names the field and the reason."""


# Bounds on what a spec may ask for. Each one stops a number that would validate and then
# hang or crash the sweep (a 10^9-value range, a billion bootstrap resamples, 10^6 trials);
# the CLI and the HTTP API share them because both validate through `parse_spec`.
MAX_SPEC_BYTES = 256 * 1024  # a spec is a few KB; the YAML parser is slow on megabytes
MAX_DEPTH = 16  # the deepest real field is resources.rules[i].workers (depth 4)
MAX_NODES = 100_000  # values in a parsed document (YAML aliases can multiply them)
MAX_VALUES = 10_000  # values of one list or {min, max, count} range
MAX_SEEDS = 1_000
MAX_TARGETS = 32  # budget.targets
MAX_GRID_TRIALS = 100_000  # N x D x lr x batch x seed; planning and tracking cost grows with it
MAX_STEPS = 10**8  # optimizer steps of one trial (D / batch)
MAX_BOOTSTRAP = 10_000  # any bootstrap count
MAX_SEED_VALUE = 2**32 - 1  # numpy and torch seeds
MAX_NAME = 100  # sweep names become directory, MLflow run and Ray experiment names
MAX_SEQ_LEN = 65_536
MAX_EVAL_TOKENS = 2**27
MAX_WORKERS = 4_096
# Schemes MLflow can track to (a plain path is a local file store).
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")
# Where MLflow can keep an experiment's artifacts (its artifact repositories); "" = a local path.
ARTIFACT_SCHEMES = ("s3", "gs", "wasbs", "abfss", "hdfs", "file", "sftp", "ftp", "mlflow-artifacts", "http", "https")
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")  # SQLAlchemy stores: artifacts live elsewhere
# Pseudo-filesystems: a sweep written there fails at the first write (or worse, succeeds).
_SYSTEM_DIRS = ("/proc", "/sys", "/dev")


class _Strict(BaseModel):
    # allow_inf_nan: an infinite margin or NaN level validates against `ge=0` and breaks later
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LogRange(_Strict):
    """`count` values spaced evenly in log between `min` and `max` (inclusive)."""

    min: float = Field(gt=0, allow_inf_nan=False, description="smallest value")
    max: float = Field(gt=0, allow_inf_nan=False, description="largest value")
    count: int = Field(ge=1, le=MAX_VALUES, description=f"number of values (at most {MAX_VALUES})")

    @model_validator(mode="after")
    def _ordered(self) -> "LogRange":
        if self.max < self.min:
            raise ValueError(f"max ({self.max:g}) is smaller than min ({self.min:g})")
        if self.count > 1 and self.max == self.min:
            raise ValueError("min == max but count > 1")
        return self

    def values(self) -> list[float]:
        """The values of the range."""
        if self.count == 1:
            return [self.min]
        lo, hi = math.log(self.min), math.log(self.max)
        return [math.exp(lo + (hi - lo) * i / (self.count - 1)) for i in range(self.count)]


def _values_kind(v: Any) -> Optional[str]:
    if isinstance(v, (dict, LogRange)):
        return "range"
    if isinstance(v, (list, tuple)):
        return "list"
    return None


# A list or a range, told apart by the input's shape: an error then speaks of the form the
# user wrote, not of both forms a plain Union would try.
Values = Annotated[
    Union[Annotated[list[float], Field(max_length=MAX_VALUES), Tag("list")], Annotated[LogRange, Tag("range")]],
    Discriminator(_values_kind, custom_error_type="values",
                  custom_error_message="expected a list of numbers or a range {min, max, count}"),
]


def _expand(v: Values) -> list[float]:
    return v.values() if isinstance(v, LogRange) else list(v)


def _system_dir(path: Path) -> Optional[str]:
    """The pseudo-filesystem (/proc, /sys, /dev) `path` resolves into, or None."""
    resolved = str(path.resolve(strict=False))
    return next((d for d in _SYSTEM_DIRS if resolved == d or resolved.startswith(d + "/")), None)


def _no_control(v: str, what: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError(f"{what} contains a control character")
    return v


def _check_values(v: Values, what: str) -> Values:
    vals = _expand(v)
    if not vals:
        raise ValueError(f"empty list: give at least one {what}")
    bad = [x for x in vals if not (x > 0 and math.isfinite(x))]
    if bad:
        raise ValueError(f"non-positive or non-finite {what}: {bad[0]!r}")
    if len(set(vals)) != len(vals):
        raise ValueError(f"duplicate {what} values")
    return v


class ModelSpec(_Strict):
    """The model family and the sizes N (non-embedding parameters) to train."""

    family: Literal["gpt", "gpt-aligned", "llama", "llama-tied"] = Field(
        "gpt", description="gpt: GPT-style pre-norm decoder (trainers/model.py), dense down to CPU-sized "
                           "models; gpt-aligned: widths in multiples of 64, head_dim 64, for GPUs; llama: "
                           "Hugging Face LlamaForCausalLM (RMSNorm, SwiGLU, rotary, untied head; widths in "
                           "multiples of 64 with head_dim 64, 128 from d_model 2048; N from 53,440); "
                           "llama-tied: the same with the head tied to the embedding")
    n_params: Values = Field(description="non-embedding parameter counts N: a list or {min, max, count}; each "
                                         "is trained as the family member nearest to it, and two values may not "
                                         "give the same member")
    seq_len: int = Field(128, gt=0, le=MAX_SEQ_LEN, description="sequence length in tokens")

    @field_validator("n_params")
    @classmethod
    def _n(cls, v: Values) -> Values:
        return _check_values(v, "n_params")

    @model_validator(mode="after")
    def _members(self) -> "ModelSpec":
        largest = family_sizes(self.family)[-1]
        seen: dict[int, float] = {}
        for x in sorted(_expand(self.n_params)):
            if round(x) < 1:
                raise ValueError(f"n_params: {x:g} is less than one parameter")
            if x > largest * 1.1:
                raise ValueError(f"n_params: {x:.4g} is beyond the {self.family} family's largest member "
                                 f"(N={largest:.4g})")
            n = count_params(shape_for(int(round(x)), self.family), max_seq_len=self.seq_len).non_embedding
            if n in seen:
                raise ValueError(f"n_params: {seen[n]:g} and {x:g} give the same model (the {self.family} "
                                 f"member with N={n}); keep one of them")
            seen[n] = x
        return self

    def sizes(self) -> list[int]:
        """Target N values, ascending."""
        return sorted(int(round(x)) for x in _expand(self.n_params))


class TokensSpec(_Strict):
    """Token budgets D per trial: absolute counts or tokens-per-parameter ratios (one of them)."""

    values: Optional[Values] = Field(None, description="absolute training tokens D")
    per_param: Optional[Values] = Field(None, description="D as a multiple of N (tokens per parameter)")

    @model_validator(mode="after")
    def _one(self) -> "TokensSpec":
        if (self.values is None) == (self.per_param is None):
            raise ValueError("give exactly one of tokens.values or tokens.per_param")
        if self.values is not None:
            _check_values(self.values, "tokens")
            seen: dict[int, float] = {}
            for x in _expand(self.values):
                if int(round(x)) in seen:
                    raise ValueError(f"values: {seen[int(round(x))]:g} and {x:g} round to the same token count")
                if int(round(x)) < 1:
                    raise ValueError(f"values: {x:g} is less than one token")
                seen[int(round(x))] = x
        else:
            _check_values(self.per_param, "tokens per parameter")
        return self

    def for_size(self, n: int) -> list[int]:
        """Token budgets for a model of `n` non-embedding parameters."""
        if self.values is not None:
            return sorted(int(round(x)) for x in _expand(self.values))
        return sorted(int(round(r * n)) for r in _expand(self.per_param))


class ScheduleSpec(_Strict):
    """Learning-rate schedule. Fractions are of each trial's total steps."""

    kind: Literal["wsd", "cosine", "constant"] = Field("wsd", description="warmup-stable-decay, cosine or constant")
    warmup: float = Field(0.05, ge=0, lt=1, description="linear warmup fraction")
    decay: float = Field(0.2, ge=0, le=1, description="WSD: fraction of steps in the final decay")
    final_lr_frac: float = Field(0.1, ge=0, le=1, description="lr at the end as a fraction of the peak")
    branch: bool = Field(False, description="WSD: train each (N, lr, batch, seed) once to its largest D and branch the "
                                            "shorter D's cooldowns from its checkpoints (docs/pruning.md); with "
                                            "`search.strategy: transfer` or `law` the search's own branches (docs/search.md)")

    @model_validator(mode="after")
    def _fits(self) -> "ScheduleSpec":
        if self.kind == "wsd" and self.warmup + self.decay > 1:
            raise ValueError("warmup + decay exceed 1")
        if self.branch and self.kind != "wsd":
            raise ValueError("branch: only a WSD schedule has a stable phase to branch from")
        return self


class EvalSpec(_Strict):
    """How often and on how many validation tokens a trial evaluates (and reports)."""

    every: int = Field(20, gt=0, le=MAX_STEPS, description="steps between evaluations")
    tokens: int = Field(16384, gt=0, le=MAX_EVAL_TOKENS, description="validation tokens per evaluation")
    tasks: list[str] = Field(default_factory=list, description="downstream tasks evaluated on the model (docs/downstream.md): "
                             "built-in next_line, cloze, cloze_lines, 'package.module:callable', or 'command:NAME=PROGRAM ARGS' "
                             "(a program on a checkpoint, metrics JSON out); reported as task/<name>/acc, acc_norm, loss")
    tasks_at: Literal["every_eval", "checkpoints"] = Field("every_eval", description="tasks run at every evaluation, or only at "
                                                          "the evaluations on a checkpoint step (checkpoints.every) and the last step")
    task_items: int = Field(200, ge=4, le=100_000, description="items (questions) per built-in task")

    @field_validator("tasks")
    @classmethod
    def _tasks_load(cls, v: list[str]) -> list[str]:
        import os

        from trainers.tasks import TaskError, absolute_task_ref, check_task  # numpy only: a hook's module is imported here

        names: dict[str, str] = {}
        for ref in v:
            try:
                name = check_task(ref)
            except TaskError as exc:
                raise ValueError(str(exc)) from None
            if name in names:
                raise ValueError(f"tasks {names[name]!r} and {ref!r} both report as task/{name}/...")
            names[name] = ref
        return [absolute_task_ref(ref, os.getcwd()) for ref in v]  # a command task's files, as the trial finds them


class BudgetSpec(_Strict):
    """Total compute the sweep may spend and the target budgets C to propose configs for."""

    total_flops: Optional[float] = Field(None, gt=0, description="cap on training FLOPs of all trials; none = the whole grid")
    targets: list[float] = Field(default_factory=list, max_length=MAX_TARGETS,
                                 description="budgets C (FLOPs) for compute-optimal proposals")
    flops: Literal["6ND", "exact"] = Field("6ND", description="FLOP counting: 6·N·D, or exact (attention + embeddings)")

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[float]) -> list[float]:
        bad = [x for x in v if not (x > 0 and math.isfinite(x))]
        if bad:
            raise ValueError(f"non-positive or non-finite target budget: {bad[0]!r}")
        return v


ZeroStage = Literal[0, 1, 2, 3, "auto"]


class ResourceRule(_Strict):
    """Resources for trials whose N lies in [min_n_params, max_n_params]."""

    min_n_params: float = Field(0, ge=0, description="rule applies from this N")
    max_n_params: float = Field(float("inf"), gt=0, allow_inf_nan=True, description="rule applies up to this N")
    workers: int = Field(1, ge=1, le=MAX_WORKERS, description="data-parallel workers (one process each); plan: auto plans them unless given")
    zero_stage: ZeroStage = Field("auto", description="ZeRO stage 0-3 or auto")


GPU_DEVICES = ("a100-40gb", "a100-80gb", "h100-80gb", "h200-141gb")  # cluster.resources.DEVICES


class ResourcesSpec(_Strict):
    """Per-trial resources. `rules` override the defaults for ranges of N (first match wins).

    `plan: manual` runs the values as given and checks every trial against the memory model of
    `cluster/resources.py` on `device` before anything starts; `plan: auto` lets that planner
    choose each trial's workers, ZeRO stage and micro-batch from its N, seq_len and batch
    (values you set explicitly are kept and checked). `resources: auto` is short for
    `resources: {plan: auto}`. See docs/cluster.md.
    """

    plan: Literal["manual", "auto"] = Field("manual", description="manual: workers / zero_stage / micro_batch as given, checked against the memory model; auto: planned per trial (explicit values kept)")
    workers: int = Field(1, ge=1, le=MAX_WORKERS, description="data-parallel workers per trial (plan: auto plans them unless given)")
    zero_stage: ZeroStage = Field("auto", description="ZeRO stage 0-3; auto = manual: 0 for one worker, 1 otherwise; plan: auto: the lowest stage that fits")
    threads: int = Field(1, ge=1, le=1024, description="CPU threads (and CPUs reserved) per worker; a trial's workers x threads must fit the cluster's CPUs")
    max_concurrent: Optional[int] = Field(None, ge=1, description="cap on trials running at once; none = what the cluster's CPUs allow")
    micro_batch: Optional[int] = Field(None, ge=1, le=1 << 20, description="sequences per worker per micro-step; none = manual: the whole share, plan: auto: the largest power of two that fits")
    rules: list[ResourceRule] = Field(default_factory=list, description="per-N overrides of workers / zero_stage")
    use_gpu: bool = Field(False, description="one GPU per worker (CUDA + NCCL, bf16); implied by a GPU device; the cluster must have the GPUs")
    device: Optional[str] = Field(None, description="each worker's device for the memory and cost model: cpu or " + ", ".join(GPU_DEVICES) + "; none = cpu (with use_gpu: an unnamed GPU, not checked)")
    device_memory_gb: Optional[float] = Field(None, gt=0, le=1e6, description="memory per worker in GiB; none = the device's (cpu: this machine's RAM)")
    max_workers: int = Field(8, ge=1, le=MAX_WORKERS, description="plan: auto (and proposals): most workers per trial")

    @model_validator(mode="before")
    @classmethod
    def _gpu_device_implies_gpu(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("device") in GPU_DEVICES and "use_gpu" not in data:
            data = {**data, "use_gpu": True}
        return data

    @model_validator(mode="after")
    def _device(self) -> "ResourcesSpec":
        if self.device is not None and self.device != "cpu" and self.device not in GPU_DEVICES:
            raise ValueError(f"device: unknown device {self.device!r}; use cpu or one of {', '.join(GPU_DEVICES)}")
        if self.device in GPU_DEVICES and not self.use_gpu:
            raise ValueError(f"use_gpu: false contradicts device {self.device}")
        if self.device == "cpu" and self.use_gpu:
            raise ValueError("device: cpu contradicts use_gpu: true; name the GPU (or leave device out)")
        if self.plan == "auto" and self.use_gpu and self.device is None:
            raise ValueError(f"device: plan: auto on GPUs needs the GPU named (one of {', '.join(GPU_DEVICES)})")
        return self

    def for_size(self, n: int) -> tuple[int, int]:
        """(workers, zero_stage) for a model of `n` parameters as plan: manual runs it."""
        workers, stage = self.workers, self.zero_stage
        for rule in self.rules:
            if rule.min_n_params <= n <= rule.max_n_params:
                workers, stage = rule.workers, rule.zero_stage
                break
        if stage == "auto":
            stage = 0 if workers == 1 else 1
        return workers, int(stage)

    def settings(self, n: int) -> dict[str, tuple[Any, str]]:
        """workers, zero_stage, micro_batch for a model of `n` parameters, each with the spec field
        it comes from. plan: manual gives numbers (micro_batch None = the whole share); plan: auto
        gives "auto" for whatever the planner chooses."""
        auto = self.plan == "auto"
        src: Any = self
        where = "resources"
        for i, rule in enumerate(self.rules):
            if rule.min_n_params <= n <= rule.max_n_params:
                src, where = rule, f"resources.rules[{i}]"
                break
        workers = src.workers if not auto or "workers" in src.model_fields_set else "auto"
        stage = src.zero_stage
        if stage == "auto" and not auto:
            stage = 0 if workers == 1 else 1
        micro: Any = self.micro_batch if self.micro_batch is not None or not auto else "auto"
        return {"workers": (workers, f"{where}.workers"), "zero_stage": (stage, f"{where}.zero_stage"),
                "micro_batch": (micro, "resources.micro_batch")}

    def device_spec(self, machine: bool = False):
        """The worker's `orchestrator.core.resources.DeviceSpec` for the memory model, or None when there is
        nothing to check against: an unnamed GPU, or (plan: manual, `machine` false) the unnamed
        default CPU, whose memory is this machine's and so is checked at launch, not in the spec."""
        if self.use_gpu and self.device is None:
            return None
        if self.device in (None, "cpu"):
            named = self.device is not None or self.device_memory_gb is not None or self.plan == "auto"
            if not (named or machine):
                return None
            mem = self.device_memory_gb * GiB if self.device_memory_gb else machine_memory_bytes()
            return cpu_device(mem, self.threads)
        dev = DEVICES[self.device]
        if self.device_memory_gb:
            from dataclasses import replace

            dev = replace(dev, memory_bytes=self.device_memory_gb * GiB)
        return dev


class TrackingSpec(_Strict):
    """MLflow tracking. Default: a SQLite store inside the sweep directory."""

    uri: Optional[str] = Field(None, max_length=4096, description="MLflow tracking URI (" + ", ".join(TRACKING_SCHEMES) +
                                                 " or a local path); none = sqlite:///<output_dir>/mlflow.db")
    experiment: Optional[str] = Field(None, min_length=1, max_length=200,
                                      description="MLflow experiment name; none = the sweep's name (one experiment per sweep)")
    artifact_location: Optional[str] = Field(
        None, max_length=4096, description="where the experiment keeps its artifacts (fit.json, plots, the spec) "
        "when this sweep creates it: s3://bucket/prefix (endpoint and keys from MLFLOW_S3_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), gs://, a local path...; none = mlartifacts beside a SQLite "
        "database, <output_dir>/mlartifacts for a postgresql, mysql or mssql store, the server's choice for http(s)")
    close_timeout_s: Optional[float] = Field(None, gt=0, le=86400, description="seconds the end of a sweep waits for "
                                             "MLflow to take its last operations (none = 30); what an unreachable server "
                                             "has not taken by then stays in <output_dir>/mlflow-spool, replayed by "
                                             "`scalesweep resume`")

    @field_validator("artifact_location")
    @classmethod
    def _artifact_scheme(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        _no_control(v, "the artifact location")
        if not v.strip():
            raise ValueError("empty location; leave tracking.artifact_location out for the default")
        scheme = urlparse(v).scheme.lower()
        if scheme and len(scheme) > 1 and scheme not in ARTIFACT_SCHEMES:  # len 1: a Windows drive letter
            raise ValueError(f"scheme {scheme!r} is not an MLflow artifact store; use one of "
                             f"{', '.join(ARTIFACT_SCHEMES)} or a local path")
        return v

    @field_validator("uri")
    @classmethod
    def _scheme(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        _no_control(v, "the URI")
        if not v.strip():
            raise ValueError("empty URI; leave tracking.uri out for the sweep directory's SQLite store")
        scheme = urlparse(v).scheme.lower().split("+", 1)[0]
        if scheme and scheme not in TRACKING_SCHEMES:
            raise ValueError(f"scheme {scheme!r} is not one MLflow can track to; use one of "
                             f"{', '.join(TRACKING_SCHEMES)} or a local path")
        if scheme == "sqlite" and not v.lower().startswith("sqlite:///"):
            raise ValueError("a SQLite URI is sqlite:///<path> (three slashes, then the file)")
        return v

    @field_validator("experiment")
    @classmethod
    def _experiment(cls, v: Optional[str]) -> Optional[str]:
        return v if v is None else _no_control(v, "the experiment name")


class FitSpec(_Strict):
    """The L(N, D) fit run at the end of the sweep (and by the online planner)."""

    law: Literal["auto", "chinchilla", "equal-exponent", "chinchilla-fixed-E", "equal-exponent-fixed-E", "kaplan",
                 "kaplan-E"] = Field(
        "auto", description="L(N, D) form: auto picks it by backtest (how well each candidate predicts the largest "
        "size and the top compute decade from the rest; docs/fitting.md), or one named form")
    loss: Literal["huber", "asymmetric"] = Field("huber", description="fit objective")
    bootstrap: int = Field(200, ge=0, le=MAX_BOOTSTRAP, description="bootstrap resamples for intervals (0 = none)")
    level: float = Field(0.9, gt=0, lt=1, description="interval level")


class SearchSpec(_Strict):
    """Which trial runs next: the whole grid (cheapest first) or the law-guided search (docs/search.md)."""

    strategy: Literal["grid", "law", "transfer"] = Field(
        "grid", description="grid: every trial of the grid; law: law-guided search over it; transfer: law search whose "
        "initial design learns lr*(N, D) and batch*(D) at the smallest sizes and every later cell runs once at the learned point")
    init_sizes: Optional[int] = Field(None, ge=1, le=1000, description="law, transfer: smallest model sizes whose cells form the initial design (default 2 for law; 3 for transfer, whose lr law needs a decade of N)")
    init_scans: int = Field(2, ge=1, le=1000, description="law: cells scanned in parallel before any cell is resolved")
    scan_points: int = Field(5, ge=1, le=1000, description="law: learning rates in a coarse scan, spread over the spec's lrs")
    neighbourhood: Literal["cross", "square"] = Field("cross", description="law: local-minimum certificate: cross (lr±1, batch±1) or square (+ diagonals)")
    max_open_cells: int = Field(4, ge=1, le=1000, description="law: (N, D) cells searched at once (more: parallelism; fewer: more use of the learned laws)")
    min_fit_cells: int = Field(6, ge=5, le=MAX_VALUES, description="law: resolved cells before L(N, D) is fitted and the acquisition rule takes over (>= 5 parameters)")
    min_sizes: int = Field(3, ge=2, le=MAX_VALUES, description="law: distinct sizes among resolved cells before pruning or the tolerance act")
    stop_streak: int = Field(2, ge=1, le=1000, description="law: consecutive fits meeting the tolerance before stopping")
    bootstrap: int = Field(100, ge=10, le=MAX_BOOTSTRAP, description="law: bootstrap replicates of the online L(N, D) fit")
    level: float = Field(0.9, gt=0, lt=1, description="law: interval level of the stopping rule")
    tolerance: Optional[float] = Field(None, ge=0, description="law, transfer: stop when every target's N*(C) interval is narrower than this (relative width; default 0.5 for law, 0.75 for transfer, where it guards the regret rule)")
    loss_tolerance: float = Field(0.02, ge=0, description="law: ... and every target's L*(C) interval narrower than this")
    regret_tolerance: Optional[float] = Field(None, gt=0, description="law, transfer: stop instead when, at every target, the `level` quantile over the bootstrap replicates of the (N*, D*) proposal's regret is below this (default none for law; 0.002 for transfer); replaces tolerance and loss_tolerance")
    prune_below: float = Field(0.1, ge=0, lt=1, description="law: skip cells near the frontier in fewer than this fraction of bootstrap replicates")
    prune_band: Optional[float] = Field(None, gt=1, description="law, transfer: near = N within this factor of the replicate's N*(C) at the cell's compute (default 3 for law; 2 for transfer, whose later cells teach only the frontier)")
    noise: float = Field(0.003, gt=0, description="law: relative noise of a cell's best loss assumed by the acquisition (floor)")
    hparam_ridge: float = Field(0.05, ge=0, description="law: ridge on the online lr/batch law exponents")
    max_trials: Optional[int] = Field(None, ge=1, le=MAX_GRID_TRIALS, description="cap on trials handed out; none = the budget and the planner decide")
    batch_ladder: float = Field(2.0, gt=1, description="transfer: the initial design's batches extend the spec's below its smallest (down to seq_len) and one step above its largest, by this factor")
    law_checks: Optional[int] = Field(None, ge=0, description="transfer: cells near the frontier at the largest affordable size where the learned lr*/batch* are checked by a bracket of runs around the law's point (and searched further if the law's point is not the best); they then enter the laws (default 2 for transfer, 0 for law)")
    check_budget: float = Field(0.01, gt=0, description="transfer: most compute one law check may cost, as a fraction of the full grid's (sets the largest affordable size)")
    hedge: Optional[bool] = Field(None, description="transfer: move the proposed lr towards the flatter side of a measured asymmetric bowl, by what minimises the expected loss over the lr law's uncertainty at the target (default true for transfer)")

    @model_validator(mode="before")
    @classmethod
    def _strategy_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            transfer = data.get("strategy") == "transfer"
            data = {**data}
            if data.get("init_sizes") is None:
                data["init_sizes"] = 3 if transfer else 2
            if data.get("prune_band") is None:
                data["prune_band"] = 2.0 if transfer else 3.0
            if data.get("tolerance") is None:
                data["tolerance"] = 0.75 if transfer else 0.5
            if transfer and "regret_tolerance" not in data:
                data["regret_tolerance"] = 0.002
            if data.get("law_checks") is None:
                data["law_checks"] = 2 if transfer else 0
            if data.get("hedge") is None:
                data["hedge"] = transfer
        return data


class PruningSpec(_Strict):
    """Online early stopping of hopeless trials (docs/pruning.md); a Ray Tune scheduler over a pure rule."""

    enabled: bool = Field(False, description="stop hopeless trials early (off by default until validated on real-trainer sweeps)")
    margin: float = Field(0.02, ge=0, description="relative, frontier and same-cell rules: stop when the prediction's low end > the reference's high end x (1 + margin)")
    grace: float = Field(0.3, ge=0, lt=1, description="no final-loss prediction (or stop by one) before this fraction of the planned steps")
    paired_grace: float = Field(0.1, ge=0, lt=1, description="no paired comparison (same (N, D) cell, same or another schedule shape) before this fraction of the planned steps")
    paired_margin: float = Field(0.0, ge=0, description="relative margin of the paired rule: stop when its lower end of the final-loss ratio > 1 + paired_margin")
    paired_prior: float = Field(0.03, ge=0, description="paired rule, until enough pairs of the sweep have completed to calibrate it: extra allowance (log ratio) besides the trend one")
    min_reports: int = Field(2, ge=1, le=10_000, description="consecutive fresh predictions (paired: reports; or exploding reports) needed to stop")
    level: float = Field(0.9, gt=0, lt=1, description="level of the intervals (trial prediction, frontier, paired ratio and its calibration)")
    law: Literal["multipower", "annealing"] = Field("multipower", description="loss-curve law used for the final-loss prediction")
    metric: Literal["eval_loss", "train_loss"] = Field("eval_loss", description="loss that is predicted")
    divergence_factor: float = Field(1.5, gt=1, description="loss above this factor x the trial's running minimum counts as exploding")
    refit_growth: float = Field(0.1, ge=0, description="new prediction when the prefix grew by this fraction of its steps")
    refit_every: int = Field(2, ge=1, le=10_000, description="... and at least this many reports arrived since the last one")
    use_frontier: bool = Field(True, description="compare with the fitted L(N, D) frontier once it exists")
    min_frontier_points: int = Field(8, ge=5, le=MAX_VALUES, description="finished (N, D) cells needed before the frontier is fitted")
    frontier_bootstrap: int = Field(64, ge=0, le=MAX_BOOTSTRAP, description="bootstrap replicates of the frontier fit (its upper end)")
    max_curves: int = Field(6, ge=1, le=1000, description="completed curves per (size, schedule family) the curve law is fitted on (most recent)")
    n_boot: int = Field(10, ge=0, le=1000, description="bootstrap refits of the curve law (prediction interval)")
    seed: int = Field(0, ge=0, le=MAX_SEED_VALUE, description="seed of the curve-law bootstrap")
    background: bool = Field(True, description="decide on a helper process beside Tune's loop (a stop lands a few "
                             "reports after it is reached, later on a loaded machine); false: each report is decided "
                             "before its trial goes on (reproducible stops; Tune's loop waits for each refit)")


class TrainerSpec(_Strict):
    """What a trial runs: the built-in DeepSpeed trainer, the simulated one over a ground-truth world,
    or your own trainer on the trial contract (docs/trainers.md): any program (`command`) or a
    Python function (`python`)."""

    backend: Literal["deepspeed", "simulated", "command", "python"] = Field(
        "deepspeed", description="deepspeed (built-in model), simulated (benchmarks, tests at scale), command (your "
        "program, launched per trial) or python (your function, called in the trial)")
    world: str = Field("tiny", min_length=1, description="simulated backend: a bundled world name or a world YAML path")
    command: Optional[Union[str, list[str]]] = Field(
        None, description="command backend: the program and its arguments (a list, or a string split like a shell); "
        "placeholders {config} {metrics} {checkpoint_dir} {trial_id} {python}")
    entrypoint: Optional[str] = Field(None, description="python backend: 'package.module:function' or "
                                      "'path/file.py:function', called as function(config, report)")
    cwd: Optional[str] = Field(None, description="command / python: working directory (relative paths in command and "
                               "entrypoint resolve against it); none = where scalesweep starts, recorded as an absolute path")
    env: dict[str, str] = Field(default_factory=dict, description="command: extra environment variables")
    options: dict[str, Any] = Field(default_factory=dict, description="command / python: your trainer's own settings, "
                                    "passed unchanged in the config (TrialConfig.options)")
    grace_period_s: float = Field(10.0, ge=0, description="command: seconds between SIGTERM and SIGKILL when a trial is "
                                  "stopped (pruner, sweep end)")
    first_report_timeout_s: float = Field(600.0, gt=0, description="command: a program that writes no report within "
                                          "this many seconds of its start fails the sweep (exit 2)")
    warm_start: list[str] = Field(default_factory=list, description="command, a Python program ('{python} -m MODULE "
                                  "...' or '{python} SCRIPT.py ...'): modules ('module' or 'module:function', e.g. "
                                  "[trainers.deepspeed_trainer:preload]) imported once per trial process by a zygote "
                                  "that forks each trial's program; empty = a fresh process per trial (docs/trainers.md)")

    @model_validator(mode="before")
    @classmethod
    def _absolute_cwd(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("backend") in ("command", "python"):
            import os

            data = {**data, "cwd": os.path.abspath(os.path.expanduser(str(data.get("cwd") or os.getcwd())))}
        return data

    @model_validator(mode="after")
    def _backend_fields(self) -> "TrainerSpec":
        if self.backend == "simulated":
            from trainers.worlds import WorldError, bundled_worlds, load_world

            _no_control(self.world, "the world name")
            try:
                load_world(self.world)
            except (WorldError, FileNotFoundError, ValueError, RecursionError) as exc:
                if self.world in bundled_worlds() or isinstance(exc, WorldError) and "no world named" in str(exc):
                    raise ValueError(f"world: {self.world!r}: {exc}") from None
                # A world path may point at any file: say what is wrong where, never what it holds.
                raise ValueError(f"world: {self.world!r}: {_world_problem(str(exc))}") from None
        given = self.model_fields_set
        for name, owner in (("command", "command"), ("entrypoint", "python")):
            if name in given and getattr(self, name) is not None and self.backend != owner:
                raise ValueError(f"{name}: only for backend {owner} (backend is {self.backend})")
        if self.backend in ("command", "python") and not Path(self.cwd).is_dir():
            raise ValueError(f"cwd: {self.cwd} is not a directory")
        if self.backend == "command":
            from trainers.command import missing_program, split_command

            if not self.command:
                raise ValueError("command: backend command needs the program to run")
            why = missing_program(split_command(self.command), self.cwd)
            if why:
                raise ValueError(f"command: {why}")
        if self.warm_start:
            from trainers.warm_start import warm_start_problem

            why = warm_start_problem(self.warm_start, split_command(self.command or []), self.cwd) \
                if self.backend == "command" else f"only for backend command (backend is {self.backend})"
            if why:
                raise ValueError(f"warm_start: {why}")
        if self.backend == "python":
            from trainers.entrypoint import check_entrypoint

            if not self.entrypoint:
                raise ValueError("entrypoint: backend python needs 'package.module:function'")
            why = check_entrypoint(self.entrypoint, self.cwd)
            if why:
                raise ValueError(f"entrypoint: {why}")
        return self

    @property
    def own(self) -> bool:
        """A user's trainer (command or python backend)."""
        return self.backend in ("command", "python")


def _world_problem(message: str) -> str:
    """A world loader's error with whatever it quoted from the file taken out."""
    if "is not valid YAML" in message:
        where = re.search(r"line \d+, column \d+", message)
        return "not valid YAML" + (f" ({where.group(0)})" if where else "")
    message = re.sub(r" \(got .*?\)$", "", message, flags=re.M)  # pydantic's quoted inputs
    unknown = len(re.findall(r": unknown field$", message, flags=re.M))  # their names are the file's text
    message = re.sub(r"^[^\n]*: unknown field\n?", "", message, flags=re.M)
    if unknown:
        message = message.rstrip("\n") + f"\n  {unknown} unknown field(s)"
    message = re.sub(r"(must be [^,\n]*), got .*$", r"\1", message, flags=re.M)
    message = re.sub(r"^[^\n]*?: (a world must be a mapping of fields|invalid world:)", r"\1", message)
    return re.sub(r":?\n\s*", "; ", message.strip()).replace("invalid world;", "invalid world:")


class DataSpec(_Strict):
    """Token data in the formats labs use (`data: builtin` and `data: PATH` stay valid as shorthands).

    `scalesweep validate` reads the data once (tokenizing and caching text) and refuses, naming the
    file: a missing file, a token file in the wrong dtype, a token id at or above the vocabulary, a
    validation split shorter than one window, and fewer training tokens than the largest trial's D
    (with the epoch count that would be) unless `allow_repeats`. Details: docs/trainers.md, "Data".
    """

    format: Literal["builtin", "parquet", "bin", "hf", "text"] = Field(
        "builtin", description="builtin (offline stdlib corpus) | parquet (shards: train/*.parquet, val/*.parquet, or files) | "
                               "bin (flat uint16/uint32 token ids, nanoGPT / llm.c) | hf (datasets' save_to_disk) | "
                               "text (.txt files or JSONL, tokenized with `tokenizer`)")
    path: Optional[str] = Field(None, min_length=1, description="file, directory or glob of the training data (not for builtin)")
    val_path: Optional[str] = Field(None, min_length=1, description="validation data in the same format; none = the dataset's own split, else the last val_fraction of the tokens")
    val_fraction: float = Field(0.01, gt=0, lt=0.5, description="share of the tokens held out for validation when there is no validation split")
    dtype: Optional[Literal["uint16", "uint32"]] = Field(None, description="bin: token width (none = uint16)")
    tokenizer: Optional[str] = Field(None, min_length=1, description="text: a tokenizer.json (Hugging Face tokenizers); builtin: 'bytes' (default) or 'bpe' (a BPE tokenizer trained offline on the corpus, cached)")
    vocab_size: Optional[int] = Field(None, ge=2, le=1 << 20, description="the model's vocabulary: every token id must be below it; none = the tokenizer's, the manifest's or max(256, largest id + 1); builtin bpe: the BPE vocabulary (4096)")
    column: Optional[str] = Field(None, min_length=1, description="hf/parquet: the token column (none = input_ids, then tokens); text JSONL: the text field (none = text)")
    allow_repeats: bool = Field(False, description="allow trials with more tokens than the training data holds (repeated epochs; recorded per trial)")

    @field_validator("path", "val_path", "tokenizer")
    @classmethod
    def _paths(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        _no_control(v, "the path")
        if len(v) > 4096:
            raise ValueError(f"{len(v)} characters; a path has at most 4096")
        system = _system_dir(Path(v))
        if system:
            raise ValueError(f"{v!r} is under {system}, a system pseudo-filesystem")
        return v

    @model_validator(mode="after")
    def _fits(self) -> "DataSpec":
        if self.format == "builtin":
            if self.path or self.val_path:
                raise ValueError("path: the built-in corpus has no path (use format: parquet, bin, hf or text)")
            if self.tokenizer not in (None, "bytes", "bpe"):
                raise ValueError(f"tokenizer: the built-in corpus is 'bytes' or 'bpe', got {self.tokenizer!r}")
            if self.tokenizer == "bpe" and self.vocab_size is not None and not 300 <= self.vocab_size <= 65536:
                raise ValueError(f"vocab_size: a built-in BPE vocabulary of 300 to 65,536 tokens, got {self.vocab_size}")
        elif not self.path:
            raise ValueError(f"path: format {self.format} needs a path")
        if self.format == "text" and not self.tokenizer:
            raise ValueError("tokenizer: format text needs a tokenizer.json")
        if self.format not in ("text", "builtin") and self.tokenizer:
            raise ValueError(f"tokenizer: format {self.format} holds token ids already; a tokenizer is for text")
        if self.dtype and self.format != "bin":
            raise ValueError("dtype: only for format bin")
        return self

    def is_builtin_bytes(self) -> bool:
        """The built-in corpus as bytes (what built-in tasks are made of)."""
        return self.format == "builtin" and self.tokenizer in (None, "bytes")


def _data_kind(v: Any) -> Optional[str]:
    if isinstance(v, (dict, DataSpec)):
        return "form:section"
    if isinstance(v, str):
        return "form:path"
    return None


# `data: builtin | PATH` or a `data:` section, told apart by shape (errors speak of the form written)
DataField = Annotated[
    Union[Annotated[str, Tag("form:path")], Annotated[DataSpec, Tag("form:section")]],
    Discriminator(_data_kind, custom_error_type="data",
                  custom_error_message="expected 'builtin', a path, or a data section {format, path, ...}"),
]


class CheckpointSpec(_Strict):
    """Trial checkpoints, and restarts of a crashed trial from its last checkpoint (docs/cluster.md, "Fault tolerance")."""

    enabled: bool = Field(True, description="save checkpoints under <sweep dir>/checkpoints/<trial> (needed to resume a trial)")
    every: Optional[int] = Field(None, ge=1, le=MAX_STEPS, description="steps between checkpoints; none = at every evaluation (eval.every); the last step always")
    max_failures: int = Field(2, ge=0, le=100, description="restarts of a crashed trial from its last checkpoint (Ray Tune and Ray Train FailureConfig)")
    stop_timeout_s: float = Field(60.0, ge=0, le=86400, description="on a user's stop (Ctrl-C, SIGTERM, `scalesweep "
                                  "stop`): how long running trials get to reach their next report, save a checkpoint there "
                                  "and end; then they are stopped where they are (resume continues from their last "
                                  "checkpoint). A second Ctrl-C stops at once")


class SweepSpec(_Strict):
    """A scaling sweep: the grid N x D x lr x batch x seed, its budget and where it goes."""

    name: str = Field(description=f"sweep name: letters, digits, _ . - (not first: . -), at most {MAX_NAME} characters")
    model: ModelSpec
    tokens: TokensSpec
    learning_rates: Values = Field(description="peak learning rates")
    batch_sizes: Values = Field(description="global batch sizes in tokens")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED_VALUE)]] = Field(
        default_factory=lambda: [0], max_length=MAX_SEEDS,
        description=f"seeds; every config runs once per seed (at most {MAX_SEEDS})")
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    fit: FitSpec = Field(default_factory=FitSpec)
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    data: DataField = Field("builtin", description="'builtin' (offline corpus as bytes), a path (a directory of Parquet shards train/*.parquet + val/*.parquet, or a .bin token file), or a `data` section (formats bin, hf, parquet, text; builtin BPE)")
    output_dir: Optional[str] = Field(None, min_length=1, description="sweep directory; none = ./sweeps/<name>; must be a new or empty directory, or this sweep's own")
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)
    store: Optional[str] = Field(
        None, max_length=4096, description="where the observation store keeps its Parquet parts: none = "
        "<output_dir>/store; s3://bucket/prefix = an S3-compatible object store through pyarrow.fs (endpoint and "
        "keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), readable from any machine; trial "
        "checkpoints (prefix/checkpoints/) and Ray Tune's files (prefix/ray/) then go there too, so no path needs to "
        "be shared (docs/cluster.md)")
    seed: int = Field(0, ge=0, le=MAX_SEED_VALUE, description="seed of the planner's own choices")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v:
            raise ValueError("empty name")
        if len(v) > MAX_NAME:
            raise ValueError(f"{len(v)} characters; at most {MAX_NAME}")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", v):
            raise ValueError("use letters, digits, _ . - only, not starting with . or - (it names a directory)")
        return v

    @field_validator("data", "output_dir")
    @classmethod
    def _path(cls, v: Any) -> Any:
        if v is None or isinstance(v, DataSpec):
            return v
        if not v:
            raise ValueError("empty path")
        _no_control(v, "the path")
        if len(v) > 4096:
            raise ValueError(f"{len(v)} characters; a path has at most 4096")
        if any(len(part) > 255 for part in v.split("/")):
            raise ValueError("a path component is longer than 255 characters")
        if v != "builtin":
            system = _system_dir(Path(v))
            if system:
                raise ValueError(f"{v!r} is under {system}, a system pseudo-filesystem")
        return v

    @field_validator("store")
    @classmethod
    def _store(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        _no_control(v, "the store location")
        from ..io.store_location import check_uri

        return check_uri(v.strip())

    @field_validator("checkpoints", mode="before")
    @classmethod
    def _checkpoints_bool(cls, v: Any) -> Any:
        return {"enabled": v} if isinstance(v, bool) else v  # `checkpoints: false` (older specs)

    @field_validator("resources", mode="before")
    @classmethod
    def _resources_shorthand(cls, v: Any) -> Any:
        if v in ("auto", "manual"):  # `resources: auto` = `resources: {plan: auto}`
            return {"plan": v}
        return v

    @field_validator("learning_rates")
    @classmethod
    def _lrs(cls, v: Values) -> Values:
        return _check_values(v, "learning rates")

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, v: Values) -> Values:
        return _check_values(v, "batch sizes")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("empty list: give at least one seed")
        if len(set(v)) != len(v):
            raise ValueError("duplicate seeds")
        return v

    def grid_size(self) -> int:
        """Trials in the grid (N x D x lr x batch x seed), counted without expanding it."""
        def n(v: Values) -> int:
            return v.count if isinstance(v, LogRange) else len(v)

        tokens = self.tokens.values if self.tokens.values is not None else self.tokens.per_param
        return (n(self.model.n_params) * n(tokens) * n(self.learning_rates) * n(self.batch_sizes)
                * len(self.seeds))

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> "SweepSpec":
        size = self.grid_size()  # first: the checks below walk the grid
        cap = (info.context or {}).get("max_trials", MAX_GRID_TRIALS)
        if size > cap:
            raise ValueError(f"grid: {size:,} trials (model.n_params x tokens x learning_rates x batch_sizes x "
                             f"seeds); at most {cap:,}: use fewer values, or split the sweep")
        seq = self.model.seq_len
        for i, lr in enumerate(lrs := sorted(_expand(self.learning_rates))):
            if i and f"{lr:.6g}" == f"{lrs[i - 1]:.6g}":
                raise ValueError(f"learning_rates: {lrs[i - 1]!r} and {lr!r} are the same to 6 digits")
        rounded: dict[int, float] = {}
        for b in _expand(self.batch_sizes):
            whole = int(b) // seq * seq
            if whole in rounded and whole >= seq:
                raise ValueError(f"batch_sizes: {rounded[whole]:g} and {b:g} are the same batch in whole sequences "
                                 f"of {seq} tokens ({whole} tokens)")
            rounded[whole] = b
        manual = self.trainer.backend == "deepspeed"  # the simulated backend splits nothing
        for b in _expand(self.batch_sizes):
            if b < seq:
                raise ValueError(f"batch_sizes: {b:g} tokens is smaller than one sequence (model.seq_len={seq})")
        for n in self.model.sizes():
            workers, field = self.resources.settings(n)["workers"]
            micro = self.resources.settings(n)["micro_batch"][0]
            for b in _expand(self.batch_sizes):
                seqs = int(b) // seq
                if workers != "auto" and seqs < workers:
                    raise ValueError(
                        f"batch_sizes: {b:g} tokens = {seqs} sequences cannot be split across {workers} workers ({field})"
                    )
                if manual and workers != "auto" and seqs % workers:
                    raise ValueError(f"batch_sizes: {b:g} tokens = {seqs} sequences do not split evenly across "
                                     f"{workers} workers ({field})")
                if manual and workers != "auto" and micro not in (None, "auto") and (seqs // workers) % micro:
                    raise ValueError(f"resources.micro_batch: {micro} does not divide the {seqs // workers} sequences per worker "
                                     f"of batch {b:g} tokens")
            smallest = min(_expand(self.batch_sizes))
            for d in self.tokens.for_size(n):
                if d < smallest:
                    raise ValueError(f"tokens: {d} tokens for N={n} is less than one batch")
                if d / (int(smallest) // seq * seq) > MAX_STEPS:
                    raise ValueError(f"tokens: {d:.4g} tokens for N={n} at batch {smallest:g} is more than "
                                     f"{MAX_STEPS:.0e} steps")
        if self.eval.tasks and self.trainer.backend == "simulated":
            raise ValueError("eval.tasks: the simulated backend has no model to evaluate tasks on")
        builtin_tasks = [t for t in self.eval.tasks if ":" not in t or t.startswith("builtin:")]
        if builtin_tasks and not self.data_spec().is_builtin_bytes():
            raise ValueError(f"eval.tasks: built-in task {builtin_tasks[0]!r} is built from the built-in corpus's bytes "
                             "(data: builtin); with your own shards use a 'package.module:callable' task")
        if self.schedule.branch:
            if not self.checkpoints.enabled:
                raise ValueError("schedule.branch: branches start from their trunk's checkpoints; "
                                 "checkpoints.enabled must be true")
        return self

    # ---- derived -----------------------------------------------------------------------
    def data_spec(self) -> DataSpec:
        """`data` as a section, whichever form the spec used (`builtin`, a path, a mapping)."""
        if isinstance(self.data, DataSpec):
            return self.data
        if self.data == "builtin":
            return DataSpec()
        return DataSpec(format="bin" if self.data.endswith(".bin") else "parquet", path=self.data)

    def data_config(self) -> Any:
        """`data` as the trial config carries it: the string as written, or the section as a plain mapping."""
        return self.data if isinstance(self.data, str) else self.data.model_dump(exclude_none=True)

    def sweep_dir(self) -> Path:
        """The sweep directory (absolute)."""
        return Path(self.output_dir or Path("sweeps") / self.name).resolve()

    def tracking_uri(self) -> str:
        """The MLflow tracking URI this sweep logs to."""
        return self.tracking.uri or f"sqlite:///{self.sweep_dir() / 'mlflow.db'}"

    def artifact_location(self) -> Optional[str]:
        """Where a new MLflow experiment keeps its artifacts: `tracking.artifact_location`, else the
        sweep directory's mlartifacts for a database store (MLflow's own default there is ./mlruns
        under whatever directory the first sweep ran in), else None (a SQLite store's tracker puts
        them beside its database file; an HTTP server or a file store decides)."""
        if self.tracking.artifact_location:
            loc = self.tracking.artifact_location
            return Path(loc).resolve().as_uri() if not urlparse(loc).scheme else loc
        scheme = urlparse(self.tracking_uri()).scheme.lower().split("+", 1)[0]
        if scheme in DATABASE_SCHEMES:
            return (self.sweep_dir() / "mlartifacts").as_uri()
        return None

    def lrs(self) -> list[float]:
        """Peak learning rates, ascending."""
        return sorted(_expand(self.learning_rates))

    def batches(self) -> list[int]:
        """Global batch sizes in tokens (whole sequences), ascending."""
        seq = self.model.seq_len
        return sorted({int(b) // seq * seq for b in _expand(self.batch_sizes)})


def _field_path(loc: tuple[Any, ...]) -> str:
    # pydantic puts union tags and validator names in the location ("list", "range",
    # "function-after[...]"); the user wrote none of them
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p in ("list", "range") or p.startswith("form:") or "[" in p or "(" in p))]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "spec"


def _shape_problem(data: Any) -> Optional[str]:
    """The first part of a parsed document too deep, too long or too large to validate
    quickly (checked before validation, which would expand it), or None."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    nodes = 0
    while stack:
        node, path, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return f"spec: more than {MAX_NODES:,} values in the document; a spec is a few dozen"
        if depth > MAX_DEPTH:
            return f"{path or 'spec'}: nested more than {MAX_DEPTH} levels deep"
        if isinstance(node, dict):
            for k, v in node.items():
                key = str(k)[:40]
                stack.append((v, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(node, list):
            if len(node) > MAX_VALUES:
                return f"{path or 'spec'}: {len(node):,} values; at most {MAX_VALUES:,} per list"
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node))
    return None


MAX_ERROR_LINES = 12


def parse_spec(data: Any, source: str = "spec", *, max_trials: int = MAX_GRID_TRIALS) -> SweepSpec:
    """Validate a spec from already-parsed YAML/JSON data; any problem raises `SpecError`.
    `max_trials` caps the grid (a server may allow fewer than the CLI).

    >>> parse_spec({"name": "x"}).name
    Traceback (most recent call last):
    ...
    orchestrator.config.spec.SpecError: spec: invalid spec
      model: Field required
      tokens: Field required
      learning_rates: Field required
      batch_sizes: Field required
    """
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a mapping of fields, got {type(data).__name__}")
    problem = _shape_problem(data)
    if problem:
        raise SpecError(f"{source}: invalid spec\n  {problem}")
    try:
        spec = SweepSpec.model_validate(data, context={"max_trials": min(max_trials, MAX_GRID_TRIALS)})
    except ValidationError as exc:
        lines = []
        seen = set()
        for err in exc.errors():
            field = _field_path(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            ctx = err.get("ctx") or {}
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            elif err["type"] in ("model_type", "model_attributes_type", "dict_type"):
                msg = "expected a section (a mapping of fields)"
            elif err["type"] == "too_long" and "max_length" in ctx:
                msg = f"at most {ctx['max_length']:,} values, got {ctx.get('actual_length', 'more')}"
            sub = re.match(r"([a-z_][a-z_.]*): ", msg)
            if sub:  # a section's cross-field check names its own field
                field = sub.group(1) if field == "spec" else f"{field}.{sub.group(1)}"
                msg = msg[sub.end():]
            if (field, msg) in seen:
                continue
            seen.add((field, msg))
            lines.append(f"{field}: {msg}")
        more = len(lines) - MAX_ERROR_LINES
        lines = lines[:MAX_ERROR_LINES] + ([f"... and {more} more"] if more > 0 else [])
        raise SpecError(f"{source}: invalid spec\n  " + "\n  ".join(lines)) from None
    except (RecursionError, MemoryError, ArithmeticError) as exc:  # a validator's own arithmetic or depth
        raise SpecError(f"{source}: invalid spec\n  spec: cannot be validated ({type(exc).__name__}); "
                        "look for huge numbers or deep nesting") from None
    try:
        _check_budget(spec, source)
    except SpecError:
        raise
    except (ValueError, ArithmeticError, RecursionError, MemoryError) as exc:
        # the grid could not be planned although every field passed: still the spec's fault
        raise SpecError(f"{source}: invalid spec\n  grid: cannot be planned: {exc}") from None
    return spec


def _decode(raw: bytes, path: Path) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(raw) > 1 and (raw[0] == 0 or raw[1] == 0)):
        raise SpecError(f"{path}: not UTF-8 text (it looks like UTF-16); save the spec as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start} is not valid UTF-8); save the spec as UTF-8") from None


def load_spec(path: str | Path) -> SweepSpec:
    """Load and validate a YAML spec file; any problem raises `SpecError` naming the file or field."""
    path = Path(path)
    try:
        if not path.is_file():
            raise SpecError(f"{path}: no such spec file" + (" (it is a directory)" if path.is_dir() else ""))
        with path.open("rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec file: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES // 1024} KiB; a spec is a few KB")
    text = _decode(raw, path)
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise SpecError(f"{path}: not a usable spec: nested too deeply") from None
    return parse_spec(data, str(path))


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: the same grammar, faster


def _check_budget(spec: SweepSpec, source: str) -> None:
    # Sizes each (N, batch) and the cheapest cell without planning the grid (`orchestrator.config.sizing`).
    try:
        check_trial_resources(spec)
    except ResourceError as exc:  # a trial that cannot fit its resources
        raise SpecError(f"{source}: invalid spec\n  {exc}") from None
    smallest = smallest_cell_flops(spec)
    if spec.budget.total_flops is not None and spec.budget.total_flops < smallest:
        raise SpecError(
            f"{source}: invalid spec\n  budget.total_flops: {spec.budget.total_flops:.3g} FLOPs is smaller "
            f"than the smallest trial ({smallest:.3g} FLOPs)"
        )
    for c in spec.budget.targets:
        if c < smallest:
            raise SpecError(
                f"{source}: invalid spec\n  budget.targets: {c:.3g} FLOPs is smaller than the smallest trial "
                f"({smallest:.3g} FLOPs); a proposal there would be below the data"
            )


def _type_name(ann: Any) -> str:
    import typing

    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin is Union:
        args = tuple(typing.get_args(a)[0] if typing.get_origin(a) is Annotated else a for a in args)
        return " \\| ".join("null" if a is type(None) else ("range" if a is LogRange else _type_name(a)) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]" if args else "list"
    return getattr(ann, "__name__", str(ann))


def reference_markdown() -> str:
    """The spec reference (every field, its type, default and meaning) as Markdown."""
    lines = ["# Sweep spec reference", "",
             "Generated from `orchestrator/config/spec.py` (`python -c 'from orchestrator.config.spec import "
             "reference_markdown as r; print(r())' > docs/spec.md`). Unknown fields are errors.", ""]

    def walk(model: type[BaseModel], prefix: str) -> None:
        rows, nested = [], []
        for name, f in model.model_fields.items():
            ann = f.annotation
            sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
            if sub is not None:
                default = "(section)" if not f.is_required() else "required (section)"
                nested.append((name, sub))
            type_name = _type_name(ann)
            rows.append(f"| `{prefix}{name}` | {type_name} | {default} | {f.description or (sub.__doc__ or '').strip().splitlines()[0]} |")
        lines.extend(["| field | type | default | meaning |", "|---|---|---|---|", *rows, ""])
        for name, sub in nested:
            lines.extend([f"## `{prefix}{name}`", "", (sub.__doc__ or "").strip(), ""])
            walk(sub, f"{prefix}{name}.")

    lines.extend(["## top level", ""])
    walk(SweepSpec, "")
    lines.extend(["## `data` (the section form)", "", DataSpec.__doc__.strip(), ""])
    walk(DataSpec, "data.")
    lines.extend(["## `resources.rules[]`", "", ResourceRule.__doc__.strip(), ""])
    walk(ResourceRule, "resources.rules[].")
    lines.extend(["## ranges", "", "Wherever a list of values is accepted (`model.n_params`, `tokens.values`, "
                  "`tokens.per_param`, `learning_rates`, `batch_sizes`), a log range "
                  "`{min: ..., max: ..., count: ...}` may be given instead: " + LogRange.__doc__.strip(), ""])
    lines.extend(["## limits", "",
                  "A spec is refused (exit status 2, nothing written or started) beyond these bounds, "
                  "which keep validation fast and stop numbers that would validate and then hang or "
                  "crash the sweep. The CLI and the HTTP API apply the same ones.", "",
                  "| what | at most |", "|---|---|",
                  f"| spec file | {MAX_SPEC_BYTES // 1024} KiB of UTF-8 YAML |",
                  f"| nesting | {MAX_DEPTH} levels |",
                  f"| values in the document | {MAX_NODES:,} |",
                  f"| values of one list or range | {MAX_VALUES:,} |",
                  f"| `seeds` | {MAX_SEEDS:,} seeds, each 0 to 2^32 - 1 |",
                  f"| grid (N x D x lr x batch x seed) | {MAX_GRID_TRIALS:,} trials |",
                  f"| steps of one trial (D / batch) | {MAX_STEPS:.0e} |",
                  f"| any bootstrap count | {MAX_BOOTSTRAP:,} |",
                  f"| `name` | {MAX_NAME} characters |",
                  "| `model.n_params` | the family's largest member (x 1.1); two values may not give the same member |",
                  "", "Paths (`output_dir`, `data`, a SQLite `tracking.uri`) are checked before a sweep starts: not "
                  "under /proc, /sys or /dev, not through a file, writable; `data` a directory with "
                  "`train/*.parquet` and `val/*.parquet`. `scalesweep run` refuses an `output_dir` that holds "
                  "another sweep (a different spec) or other files; `scalesweep resume DIR` continues a sweep. "
                  "Locally (no `RAY_ADDRESS`), a trial's workers x `resources.threads` must fit this machine's "
                  "CPUs and `use_gpu` needs a GPU; on a cluster the same is checked when Ray has started.", ""])
    return "\n".join(lines)


# ---- checks against this machine's filesystem (the CLI runs them before anything starts) ----


def _unusable_dir(path: Path) -> Optional[str]:
    """Why a directory cannot be created or written at `path`, or None."""
    if path.exists():
        if not path.is_dir():
            return f"{path} is a file, not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable"
        return None
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a directory"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"cannot create {path}: {parent} is not writable"
            return None
    return None


def check_paths(spec: SweepSpec) -> None:
    """Every path the sweep will write or read is usable here; raises `SpecError` naming the field."""
    try:
        problems = _path_problems(spec)
    except (OSError, RuntimeError, ValueError) as exc:  # a name too long, a loop of links, ...
        problems = [f"paths: {getattr(exc, 'strerror', None) or exc} (output_dir, data or tracking.uri)"]
    if problems:
        raise SpecError("invalid spec\n  " + "\n  ".join(problems))


def _path_problems(spec: SweepSpec) -> list[str]:
    problems = []
    where = spec.sweep_dir()
    why = _unusable_dir(where)
    if why:
        problems.append(f"output_dir: {why}" + ("" if spec.output_dir else " (the default: sweeps/<name>)"))
    ds = spec.data_spec()
    if isinstance(spec.data, str) and ds.format == "parquet":  # `data: DIR`: the shard layout
        data = Path(spec.data)
        if not data.is_dir():
            problems.append(f"data: {spec.data} is not a directory (use 'builtin', a directory of Parquet shards, "
                            "a .bin token file, or a data section)")
        else:
            missing = [s for s in ("train", "val") if not any((data / s).glob("*.parquet"))]
            if missing:
                problems.append(f"data: {spec.data} has no {' or '.join(f'{m}/*.parquet' for m in missing)}")
    else:
        for name in ("path", "val_path"):
            p = getattr(ds, name)
            if p and not any(c in p for c in "*?[") and not Path(p).exists():
                problems.append(f"data.{name}: {p}: no such file or directory")
        if ds.format == "text" and ds.tokenizer and not Path(ds.tokenizer).is_file():
            problems.append(f"data.tokenizer: {ds.tokenizer}: no such tokenizer file")
    uri = spec.tracking.uri
    if uri:
        scheme = urlparse(uri).scheme.lower()
        db = None
        if scheme == "sqlite":
            db = Path(uri[len("sqlite:///"):].split("?", 1)[0])
        elif scheme in ("", "file"):
            db = Path(urlparse(uri).path if scheme else uri) / "x"  # a file store is a directory
        if db is not None:
            if db.is_dir():
                problems.append(f"tracking.uri: {db} is a directory, not a database file")
            else:
                if _system_dir(db):
                    problems.append(f"tracking.uri: {db.parent} is under {_system_dir(db)}, a system pseudo-filesystem")
                elif why := _unusable_dir(db.parent):
                    problems.append(f"tracking.uri: {why}")
    if spec.model.family.startswith("llama") and spec.trainer.backend == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("transformers") is None:
            problems.append(f"model.family: {spec.model.family} is built with Hugging Face transformers, "
                            "which is not installed here (pip install 'transformers>=5,<6')")
    return problems


def check_data(spec: SweepSpec) -> None:
    """The data the trials will read is usable for this grid; raises `SpecError` naming the file.

    Reads the data once (text is tokenized and cached, the built-in corpus built): missing files,
    wrong dtype, token ids beyond the vocabulary, a validation split shorter than one window, and
    too few training tokens for the largest trial's D unless `data.allow_repeats`. Skipped for the
    simulated backend (it reads no data) and for a user's trainer on the default `builtin`.
    """
    if spec.trainer.backend == "simulated" or (spec.trainer.backend != "deepspeed" and spec.data == "builtin"):
        return
    from trainers.token_files import problems

    largest = max(int(d) for n in spec.model.sizes() for d in spec.tokens.for_size(n))
    cache = os.environ.get("SCALESWEEP_CACHE")  # where the trials will cache (the controller passes it on)
    found = problems(spec.data_config(), largest, spec.model.seq_len, cache_dir=cache, builtin_cache=cache)
    if found:
        raise SpecError("invalid spec\n  " + "\n  ".join(found))


def check_sweep_dir(spec: SweepSpec) -> bool:
    """Before `run`: the sweep directory is new, empty, or this very sweep's (same spec).

    Returns True when an earlier run of this sweep left its state there (the run continues it),
    False when nothing ran there yet (a new or empty directory, or one the API server prepared:
    its spec.yaml and controller files only); raises `SpecError` when it holds another sweep or
    other files: a run must not merge into them.
    """
    where = spec.sweep_dir()
    if not where.is_dir() or not any(where.iterdir()):
        return False
    recorded = where / "spec.yaml"
    if not recorded.is_file():
        raise SpecError(f"invalid spec\n  output_dir: {where} is not empty and holds no sweep; "
                        "choose a new or empty directory")
    try:
        old = parse_spec(yaml.load(_decode(recorded.read_bytes(), recorded), Loader=_Loader), str(recorded))
    except (SpecError, OSError, yaml.YAMLError, RecursionError) as exc:
        raise SpecError(f"invalid spec\n  output_dir: {where} holds a sweep whose spec.yaml cannot be used "
                        f"({str(exc).splitlines()[0]}); choose another directory") from None
    a, b = _flat(old.model_dump(mode="json")), _flat(spec.model_dump(mode="json"))
    differ = sorted(k for k in set(a) | set(b) if k != "output_dir" and a.get(k) != b.get(k))
    if differ:
        shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
        raise SpecError(f"invalid spec\n  output_dir: {where} holds the sweep {old.name!r} with a different spec "
                        f"(differs in {shown}); choose another output_dir, or continue that sweep with "
                        f"`scalesweep resume {where}`")
    # every run writes sweep.json before its first trial starts (tune_run.spec_set): without it
    # there is nothing to continue (the store, the MLflow parent run and the checkpoints come later)
    return (where / "sweep.json").is_file()


def _flat(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: doc}
