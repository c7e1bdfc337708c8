"""The sweep spec: every knob a user may turn, typed, documented and validated.

A spec is loaded from YAML with `load_spec(path)`. Any problem raises `SpecError` whose
message names the field and the reason; the CLI turns it into exit status 2 before
anything is started.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class SpecError(ValueError):
    """A spec that cannot run; the message names the field and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogRange(_Strict):
    """`count` values spaced evenly in log between `min` and `max` (inclusive)."""

    min: float = Field(gt=0, description="smallest value")
    max: float = Field(gt=0, description="largest value")
    count: int = Field(ge=1, description="number of values")

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


Values = Union[list[float], LogRange]


def _expand(v: Values) -> list[float]:
    return v.values() if isinstance(v, LogRange) else list(v)


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

    family: Literal["gpt", "gpt-aligned"] = Field("gpt", description="GPT-style pre-norm decoder (trainers/model.py); "
                                                  "gpt-aligned: widths in multiples of 64, head_dim 64, for GPUs")
    n_params: Values = Field(description="non-embedding parameter counts N: a list or {min, max, count}")
    seq_len: int = Field(128, gt=0, description="sequence length in tokens")

    @field_validator("n_params")
    @classmethod
    def _n(cls, v: Values) -> Values:
        return _check_values(v, "n_params")

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
                                            "shorter D's cooldowns from its checkpoints (docs/pruning.md)")

    @model_validator(mode="after")
    def _fits(self) -> "ScheduleSpec":
        if self.kind == "wsd" and self.warmup + self.decay > 1:
            raise ValueError("warmup + decay exceed 1")
        if self.branch and self.kind != "wsd":
            raise ValueError("branch: only a WSD schedule has a stable phase to branch from")
        return self


class EvalSpec(_Strict):
    """How often and on how many validation tokens a trial evaluates (and reports)."""

    every: int = Field(20, gt=0, description="steps between evaluations")
    tokens: int = Field(16384, gt=0, description="validation tokens per evaluation")


class BudgetSpec(_Strict):
    """Total compute the sweep may spend and the target budgets C to propose configs for."""

    total_flops: Optional[float] = Field(None, gt=0, description="cap on training FLOPs of all trials; none = the whole grid")
    targets: list[float] = Field(default_factory=list, description="budgets C (FLOPs) for compute-optimal proposals")
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
    max_n_params: float = Field(float("inf"), gt=0, description="rule applies up to this N")
    workers: int = Field(1, ge=1, description="data-parallel workers (one process each); plan: auto plans them unless given")
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
    workers: int = Field(1, ge=1, description="data-parallel workers per trial (plan: auto plans them unless given)")
    zero_stage: ZeroStage = Field("auto", description="ZeRO stage 0-3; auto = manual: 0 for one worker, 1 otherwise; plan: auto: the lowest stage that fits")
    threads: int = Field(1, ge=1, description="CPU threads (and CPUs reserved) per worker")
    max_concurrent: Optional[int] = Field(None, ge=1, description="cap on trials running at once; none = what the cluster's CPUs allow")
    micro_batch: Optional[int] = Field(None, ge=1, description="sequences per worker per micro-step; none = manual: the whole share, plan: auto: the largest power of two that fits")
    rules: list[ResourceRule] = Field(default_factory=list, description="per-N overrides of workers / zero_stage")
    use_gpu: bool = Field(False, description="one GPU per worker (CUDA + NCCL, bf16); implied by a GPU device")
    device: Optional[str] = Field(None, description="each worker's device for the memory and cost model: cpu or " + ", ".join(GPU_DEVICES) + "; none = cpu (with use_gpu: an unnamed GPU, not checked)")
    device_memory_gb: Optional[float] = Field(None, gt=0, description="memory per worker in GiB; none = the device's (cpu: this machine's RAM)")
    max_workers: int = Field(8, ge=1, description="plan: auto (and proposals): most workers per trial")

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
        """The worker's `cluster.resources.DeviceSpec` for the memory model, or None when there is
        nothing to check against: an unnamed GPU, or (plan: manual, `machine` false) the unnamed
        default CPU, whose memory is this machine's and so is checked at launch, not in the spec."""
        from cluster.resources import DEVICES, GiB, cpu_device, machine_memory_bytes

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

    uri: Optional[str] = Field(None, description="MLflow tracking URI; none = sqlite:///<output_dir>/mlflow.db")
    experiment: str = Field("scalesweep", min_length=1, description="MLflow experiment name")


class FitSpec(_Strict):
    """The L(N, D) fit run at the end of the sweep (and by the online planner)."""

    law: Literal["chinchilla"] = Field("chinchilla", description="law family for L(N, D)")
    loss: Literal["huber", "asymmetric"] = Field("huber", description="fit objective")
    bootstrap: int = Field(200, ge=0, description="bootstrap resamples for intervals (0 = none)")
    level: float = Field(0.9, gt=0, lt=1, description="interval level")


class SearchSpec(_Strict):
    """Which trial runs next: the whole grid (cheapest first) or the law-guided search (docs/search.md)."""

    strategy: Literal["grid", "law", "transfer"] = Field(
        "grid", description="grid: every trial of the grid; law: law-guided search over it; transfer: law search whose "
        "initial design learns lr*(N, D) and batch*(D) at the smallest sizes and every later cell runs once at the learned point")
    init_sizes: Optional[int] = Field(None, ge=1, description="law, transfer: smallest model sizes whose cells form the initial design (default 2 for law; 3 for transfer, whose lr law needs a decade of N)")
    init_scans: int = Field(2, ge=1, description="law: cells scanned in parallel before any cell is resolved")
    scan_points: int = Field(5, ge=1, description="law: learning rates in a coarse scan, spread over the spec's lrs")
    neighbourhood: Literal["cross", "square"] = Field("cross", description="law: local-minimum certificate: cross (lr±1, batch±1) or square (+ diagonals)")
    max_open_cells: int = Field(4, ge=1, description="law: (N, D) cells searched at once (more: parallelism; fewer: more use of the learned laws)")
    min_fit_cells: int = Field(6, ge=5, description="law: resolved cells before L(N, D) is fitted and the acquisition rule takes over (>= 5 parameters)")
    min_sizes: int = Field(3, ge=2, description="law: distinct sizes among resolved cells before pruning or the tolerance act")
    stop_streak: int = Field(2, ge=1, description="law: consecutive fits meeting the tolerance before stopping")
    bootstrap: int = Field(100, ge=10, description="law: bootstrap replicates of the online L(N, D) fit")
    level: float = Field(0.9, gt=0, lt=1, description="law: interval level of the stopping rule")
    tolerance: Optional[float] = Field(None, ge=0, description="law, transfer: stop when every target's N*(C) interval is narrower than this (relative width; default 0.5 for law, 0.75 for transfer, where it guards the regret rule)")
    loss_tolerance: float = Field(0.02, ge=0, description="law: ... and every target's L*(C) interval narrower than this")
    regret_tolerance: Optional[float] = Field(None, gt=0, description="law, transfer: stop instead when, at every target, the `level` quantile over the bootstrap replicates of the (N*, D*) proposal's regret is below this (default none for law; 0.002 for transfer); replaces tolerance and loss_tolerance")
    prune_below: float = Field(0.1, ge=0, lt=1, description="law: skip cells near the frontier in fewer than this fraction of bootstrap replicates")
    prune_band: Optional[float] = Field(None, gt=1, description="law, transfer: near = N within this factor of the replicate's N*(C) at the cell's compute (default 3 for law; 2 for transfer, whose later cells teach only the frontier)")
    noise: float = Field(0.003, gt=0, description="law: relative noise of a cell's best loss assumed by the acquisition (floor)")
    hparam_ridge: float = Field(0.05, ge=0, description="law: ridge on the online lr/batch law exponents")
    max_trials: Optional[int] = Field(None, ge=1, description="cap on trials handed out; none = the budget and the planner decide")
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
    min_reports: int = Field(2, ge=1, description="consecutive fresh predictions (paired: reports; or exploding reports) needed to stop")
    level: float = Field(0.9, gt=0, lt=1, description="level of the intervals (trial prediction, frontier, paired ratio and its calibration)")
    law: Literal["multipower", "annealing"] = Field("multipower", description="loss-curve law used for the final-loss prediction")
    metric: Literal["eval_loss", "train_loss"] = Field("eval_loss", description="loss that is predicted")
    divergence_factor: float = Field(1.5, gt=1, description="loss above this factor x the trial's running minimum counts as exploding")
    refit_growth: float = Field(0.1, ge=0, description="new prediction when the prefix grew by this fraction of its steps")
    refit_every: int = Field(2, ge=1, description="... and at least this many reports arrived since the last one")
    use_frontier: bool = Field(True, description="compare with the fitted L(N, D) frontier once it exists")
    min_frontier_points: int = Field(8, ge=5, description="finished (N, D) cells needed before the frontier is fitted")
    frontier_bootstrap: int = Field(64, ge=0, description="bootstrap replicates of the frontier fit (its upper end)")
    max_curves: int = Field(6, ge=1, description="completed curves per size the curve law is fitted on (most recent)")
    n_boot: int = Field(10, ge=0, description="bootstrap refits of the curve law (prediction interval)")
    seed: int = Field(0, description="seed of the curve-law bootstrap")


class TrainerSpec(_Strict):
    """What a trial runs: the real DeepSpeed trainer, or the simulated one over a ground-truth world."""

    backend: Literal["deepspeed", "simulated"] = Field("deepspeed", description="deepspeed (real model) or simulated (benchmarks, tests at scale)")
    world: str = Field("tiny", min_length=1, description="simulated backend: a bundled world name or a world YAML path")

    @model_validator(mode="after")
    def _world_exists(self) -> "TrainerSpec":
        if self.backend == "simulated":
            from trainers.worlds import WorldError, load_world

            try:
                load_world(self.world)
            except (WorldError, FileNotFoundError, ValueError) as exc:
                raise ValueError(f"world {self.world!r}: {exc}") from None
        return self


class CheckpointSpec(_Strict):
    """Trial checkpoints, and restarts of a crashed trial from its last checkpoint (docs/cluster.md, "Fault tolerance")."""

    enabled: bool = Field(True, description="save checkpoints under <sweep dir>/checkpoints/<trial> (needed to resume a trial)")
    every: Optional[int] = Field(None, ge=1, description="steps between checkpoints; none = at every evaluation (eval.every); the last step always")
    max_failures: int = Field(2, ge=0, description="restarts of a crashed trial from its last checkpoint (Ray Tune and Ray Train FailureConfig)")


class SweepSpec(_Strict):
    """A scaling sweep: the grid N x D x lr x batch x seed, its budget and where it goes."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="sweep name (letters, digits, _ . -)")
    model: ModelSpec
    tokens: TokensSpec
    learning_rates: Values = Field(description="peak learning rates")
    batch_sizes: Values = Field(description="global batch sizes in tokens")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    seeds: list[int] = Field(default_factory=lambda: [0], description="seeds; every config runs once per seed")
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    fit: FitSpec = Field(default_factory=FitSpec)
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    data: str = Field("builtin", description="'builtin' (offline corpus) or a directory of pre-tokenised Parquet shards")
    output_dir: Optional[str] = Field(None, description="sweep directory; none = ./sweeps/<name>")
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)
    seed: int = Field(0, description="seed of the planner's own choices")

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

    @model_validator(mode="after")
    def _consistent(self) -> "SweepSpec":
        seq = self.model.seq_len
        for b in _expand(self.batch_sizes):
            if b < seq:
                raise ValueError(f"batch_sizes: {b:g} tokens is smaller than one sequence (model.seq_len={seq})")
        for n in self.model.sizes():
            workers, field = self.resources.settings(n)["workers"]
            for b in _expand(self.batch_sizes):
                if workers != "auto" and int(b) // seq < workers:
                    raise ValueError(
                        f"batch_sizes: {b:g} tokens = {int(b) // seq} sequences cannot be split across {workers} workers ({field})"
                    )
            for d in self.tokens.for_size(n):
                if d < min(_expand(self.batch_sizes)):
                    raise ValueError(f"tokens: {d} tokens for N={n} is less than one batch")
        if self.schedule.branch:
            if not self.checkpoints.enabled:
                raise ValueError("schedule.branch: branches start from their trunk's checkpoints; "
                                 "checkpoints.enabled must be true")
            if self.search.strategy != "grid":
                raise ValueError("schedule.branch: only the grid strategy plans branches (search.strategy: grid)")
        return self

    # ---- derived -----------------------------------------------------------------------
    def sweep_dir(self) -> Path:
        """The sweep directory (absolute)."""
        return Path(self.output_dir or Path("sweeps") / self.name).resolve()

    def tracking_uri(self) -> str:
        """The MLflow tracking URI this sweep logs to."""
        return self.tracking.uri or f"sqlite:///{self.sweep_dir() / 'mlflow.db'}"

    def lrs(self) -> list[float]:
        """Peak learning rates, ascending."""
        return sorted(_expand(self.learning_rates))

    def batches(self) -> list[int]:
        """Global batch sizes in tokens (whole sequences), ascending."""
        seq = self.model.seq_len
        return sorted({int(b) // seq * seq for b in _expand(self.batch_sizes)})


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and p in ("list[float]", "LogRange"))]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "spec"


def parse_spec(data: Any, source: str = "spec") -> SweepSpec:
    """Validate a spec from already-parsed YAML/JSON data."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a mapping of fields, got {type(data).__name__}")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        lines = []
        seen = set()
        for err in exc.errors():
            field = _field_path(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            sub = re.match(r"([a-z_]+): ", msg)
            if sub and field != "spec":  # a section's cross-field check names its own field
                field, msg = f"{field}.{sub.group(1)}", msg[sub.end():]
            if (field, msg) in seen:
                continue
            seen.add((field, msg))
            lines.append(f"{field}: {msg}")
        raise SpecError(f"{source}: invalid spec\n  " + "\n  ".join(lines)) from None
    _check_budget(spec, source)
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    """Load and validate a YAML spec file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    return parse_spec(data, str(path))


def _check_budget(spec: SweepSpec, source: str) -> None:
    # Imported lazily: the planner imports the spec module.
    from .planner import plan_grid

    try:
        trials = plan_grid(spec)
    except SpecError as exc:  # a trial that cannot fit its resources
        raise SpecError(f"{source}: invalid spec\n  {exc}") from None
    smallest = min(t.flops for t in trials)
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
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin is Union:
        return " \\| ".join("null" if a is type(None) else ("range" if a is LogRange else _type_name(a)) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]" if args else "list"
    return getattr(ann, "__name__", str(ann))


def reference_markdown() -> str:
    """The spec reference (every field, its type, default and meaning) as Markdown."""
    lines = ["# Sweep spec reference", "",
             "Generated from `orchestrator/spec.py` (`python -c 'from orchestrator.spec import "
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
    lines.extend(["## `resources.rules[]`", "", ResourceRule.__doc__.strip(), ""])
    walk(ResourceRule, "resources.rules[].")
    lines.extend(["## ranges", "", "Wherever a list of values is accepted (`model.n_params`, `tokens.values`, "
                  "`tokens.per_param`, `learning_rates`, `batch_sizes`), a log range "
                  "`{min: ..., max: ..., count: ...}` may be given instead: " + LogRange.__doc__.strip(), ""])
    return "\n".join(lines)
