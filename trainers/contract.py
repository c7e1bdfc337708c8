"""The trial contract: what a trainer receives and what it reports (public, versioned API).

Trainers know only this contract, never the planner or the controller. A trainer is a
callable `train(config: TrialConfig, report: Reporter) -> TrialSummary | None` that calls
`report(metrics)` at every evaluation (and may call it more often); or, through
`trainer.backend: command`, any program that reads the same config as a JSON document and
writes the same reports as JSON lines (docs/trainers.md).

Versioning: `CONTRACT_VERSION` is written into every config document (`contract_version`).
Adding optional fields keeps the version; renaming or removing a field, or changing a
field's meaning, bumps it. A document of another version is refused by `TrialConfig.from_dict`.

>>> cfg = TrialConfig(trial_id="t", n_params=20_000, tokens=65_536, lr=3e-3, batch_tokens=2048)
>>> doc = cfg.document()
>>> doc["contract_version"], TrialConfig.from_dict(doc) == cfg
(1, True)
>>> r = normalise_report({"step": 8, "tokens": 16384, "lr": 3e-3, "train_loss": 4.1, "eval_loss": None,
...                       "grad_norm": 0.7}, planned_tokens=65_536, n_params=20_000)
>>> r["flops"], r["done"], r["extra"]
(1966080000.0, 0.0, {'grad_norm': 0.7})
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Literal, Mapping, Optional

CONTRACT_VERSION = 1

ScheduleKind = Literal["wsd", "cosine", "constant"]


@dataclass(frozen=True)
class Schedule:
    """Learning-rate schedule: linear warmup, then WSD / cosine / constant.

    `warmup` and `decay` are fractions of the trial's total steps; `final_lr_frac` is
    the lr at the end as a fraction of the peak (cosine and WSD decay to it).
    """

    kind: ScheduleKind = "wsd"
    warmup: float = 0.05
    decay: float = 0.2
    final_lr_frac: float = 0.1


@dataclass(frozen=True)
class TrialConfig:
    """One training run. Tokens are counted in the global batch (sequences x seq_len)."""

    trial_id: str
    n_params: int  # target non-embedding parameters N; the model family realises it
    tokens: int  # training tokens D
    lr: float  # peak learning rate
    batch_tokens: int  # global batch in tokens
    seq_len: int = 128
    schedule: Schedule = field(default_factory=Schedule)
    eval_every: int = 20  # steps between evaluations (and reports)
    eval_tokens: int = 16384  # validation tokens per evaluation
    seed: int = 0
    zero_stage: int = 1
    workers: int = 1
    micro_batch: Optional[int] = None  # sequences per worker per micro-step; None = whole share
    precision: Literal["fp32", "bf16", "auto"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    checkpoint_dir: Optional[str] = None  # where to save checkpoints; None = no checkpoints
    # An object-store copy of checkpoint_dir (s3://...), the authority on a cluster with no shared
    # path (trainers.checkpoint_mirror); None = the local folder alone
    checkpoint_mirror: Optional[str] = None
    checkpoint_every: int = 0  # steps between checkpoints (0 = only at the end)
    checkpoint_steps: tuple[int, ...] = ()  # WSD trunk: also save at these steps (its branches' starts)
    branch_from: Optional[str] = None  # WSD branch: a trunk checkpoint (tag directory) to start from
    branch_step: int = 0  # ... taken after this many steps; the branch trains the rest of its schedule
    data: Any = "builtin"  # the spec's `data`: "builtin", a path, or a mapping (trainers.token_files)
    data_cache: Optional[str] = None  # where the built-in corpus shards are cached
    exact_flops: bool = False  # count attention + embedding FLOPs instead of 6·N per token
    threads: int = 1  # torch intra-op threads per worker process
    family: str = "gpt"  # the model family that realises N (trainers.model.FAMILIES)
    options: dict[str, Any] = field(default_factory=dict)  # `trainer.options` of the spec, for a user's trainer
    tasks: tuple[str, ...] = ()  # downstream tasks (trainers.tasks references) evaluated on the model
    tasks_at: str = "every_eval"  # "every_eval" or "checkpoints": evaluations on checkpoint_every steps and the last
    task_items: int = 200  # items per built-in task

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (nested schedule included), for Ray configs and MLflow params."""
        return asdict(self)

    def document(self) -> dict[str, Any]:
        """The versioned config document a user's trainer receives: `to_dict()` plus `contract_version`."""
        return {"contract_version": CONTRACT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialConfig":
        """Inverse of `to_dict` and `document`; keys that are not fields (a command's `metrics_file`, ...) are ignored.

        Raises ValueError for a document of another contract version.
        """
        d = dict(d)
        version = d.pop("contract_version", CONTRACT_VERSION)
        if int(version) != CONTRACT_VERSION:
            raise ValueError(f"trial contract version {version} is not {CONTRACT_VERSION} (this scalesweep's)")
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        sched = d.pop("schedule", {}) or {}
        d["checkpoint_steps"] = tuple(d.get("checkpoint_steps") or ())
        d["options"] = dict(d.get("options") or {})
        if "tasks" in d:
            d["tasks"] = tuple(d["tasks"] or ())
        return cls(schedule=Schedule(**sched), **d)


# Keys every report carries. eval_loss is NaN on a report without an evaluation.
REPORT_KEYS = (
    "step",  # optimizer steps done
    "tokens",  # training tokens seen
    "flops",  # training FLOPs spent so far (6·N·tokens unless exact_flops)
    "lr",  # learning rate used at this step
    "train_loss",  # mean training loss since the previous report
    "eval_loss",  # validation loss (NaN if not evaluated at this report)
    "tokens_per_s",  # training throughput since the previous report
    "step_time_s",  # cumulative seconds this trial spent inside training steps (a WSD branch: since its start)
    "done",  # 1.0 on the final report
)

# Keys a report may carry besides REPORT_KEYS (absent: not measured by this trainer).
OPTIONAL_REPORT_KEYS = (
    "eval_flops",  # forward FLOPs of all evaluations so far (validation loss and tasks), not in `flops`
    "eval_time_s",  # seconds spent in evaluations so far (a WSD branch: since its start)
)
# Task metrics: "task/<name>/<metric>", metric one of TASK_METRICS, at the evaluations that ran tasks.
TASK_PREFIX = "task/"
TASK_METRICS = ("acc", "acc_norm", "loss", "chance")  # loss: the task's NLL of the correct continuation


def task_key(task: str, metric: str) -> str:
    """The report key of a task metric, e.g. ``task/cloze/acc``."""
    return f"{TASK_PREFIX}{task}/{metric}"


def split_task_key(key: str) -> Optional[tuple[str, str]]:
    """(task, metric) of a task metric's report key; None for any other key."""
    if not key.startswith(TASK_PREFIX):
        return None
    task, _, metric = key[len(TASK_PREFIX):].rpartition("/")
    return (task, metric) if task and metric else None


Reporter = Callable[[dict[str, float]], None]

# What a user's trainer must put in every report (eval_loss may be null / NaN on a report
# without an evaluation); the other REPORT_KEYS are optional and filled as described in
# `normalise_report`; any other numeric key is an extra metric (MLflow), kept under "extra".
REQUIRED_KEYS = ("step", "tokens", "lr", "train_loss", "eval_loss")
OPTIONAL_KEYS = ("flops", "tokens_per_s", "step_time_s", "done")


class StopRequested(SystemExit):
    """Raised by `report` after a report was recorded, when the user stopped the sweep (Ctrl-C,
    SIGTERM, `scalesweep stop`): save a checkpoint at the step just reported, if the trial has a
    `checkpoint_dir`, and let it propagate (the trial ends; `scalesweep resume` continues from that
    checkpoint). A SystemExit, as Ray Tune's own stop is: `except Exception` does not swallow it."""


class ContractError(ValueError):
    """A trainer broke the trial contract (a report without a required key, a non-number, ...)."""


def _number(key: str, value: Any, nullable: bool = False) -> float:
    if value is None and nullable:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContractError(f"report key {key!r} must be a number, got {value!r}")
    return float(value)


def normalise_report(raw: Mapping[str, Any], planned_tokens: int, n_params: float) -> dict[str, Any]:
    """A user trainer's report -> the contract's report: REPORT_KEYS as floats, plus `extra`.

    Required: REQUIRED_KEYS (`eval_loss` may be null/NaN when the report has no evaluation;
    the losses may be NaN: a diverged run). Optional: `flops` (default 6·n_params·tokens),
    `tokens_per_s` and `step_time_s` (default NaN), `done` (default: tokens >= planned_tokens;
    always 1 on a report whose train_loss is not finite: a diverged run ends there).
    `eval_flops`, `eval_time_s` and task metrics (`task/<name>/<metric>`, trainers.tasks) are kept
    as they are, as the built-in trainer reports them. Any other key with a numeric value is an
    extra metric (its name kept, under `extra`); a non-numeric one is refused. Raises ContractError
    naming the key.
    """
    if not isinstance(raw, Mapping):
        raise ContractError(f"a report must be a JSON object / dict, got {type(raw).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise ContractError(f"report without required key(s) {', '.join(missing)} "
                            f"(every report needs {', '.join(REQUIRED_KEYS)})")
    out: dict[str, Any] = {}
    for key in REQUIRED_KEYS:
        out[key] = _number(key, raw[key], nullable=key == "eval_loss")
    if not (math.isfinite(out["step"]) and out["step"] >= 0 and out["step"] == int(out["step"])):
        raise ContractError(f"report key 'step' must be a whole number >= 0, got {raw['step']!r}")
    if not (math.isfinite(out["tokens"]) and out["tokens"] >= 0):
        raise ContractError(f"report key 'tokens' must be a finite number >= 0, got {raw['tokens']!r}")
    flops = raw.get("flops")
    out["flops"] = 6.0 * float(n_params) * out["tokens"] if flops is None else _number("flops", flops)
    out["tokens_per_s"] = _number("tokens_per_s", raw.get("tokens_per_s"), nullable=True)
    out["step_time_s"] = _number("step_time_s", raw.get("step_time_s"), nullable=True)
    done = raw.get("done")
    if done is None:
        out["done"] = float(out["tokens"] >= planned_tokens)
    else:
        out["done"] = float(done if isinstance(done, bool) else bool(_number("done", done)))
    if not math.isfinite(out["train_loss"]):
        out["done"] = 1.0  # a diverged run: its report with a non-finite train loss is its last
    extra, known = {}, {}
    for key, value in raw.items():
        if key in REPORT_KEYS:
            continue
        if not isinstance(key, str) or not key or len(key) > 200:
            raise ContractError(f"extra metric name {key!r} must be a non-empty string")
        if key in OPTIONAL_REPORT_KEYS or split_task_key(key) is not None:
            known[key] = _number(key, value, nullable=True)  # the store's own columns / task table
        else:
            extra[key] = _number(key, value)
    return {**{k: out[k] for k in REPORT_KEYS}, **known, "extra": extra}


@dataclass
class TrialSummary:
    """Returned by a trainer when the trial ends."""

    final_eval_loss: float
    steps: int
    tokens: int
    flops: float
    n_params: int  # realised non-embedding parameters
    n_params_total: int
    shape: dict[str, int]
    diverged: bool = False
    checkpoint: Optional[str] = None
    epochs: Optional[float] = None  # passes over the training tokens (> 1: repeated data); None = not known
