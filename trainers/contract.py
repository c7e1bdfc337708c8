"""The trial contract: what a trainer receives and what it reports.

Trainers know only this contract, never the planner or the controller. A trainer is a
callable `train(config: TrialConfig, report: Reporter) -> TrialSummary` that calls
`report(metrics)` at every evaluation (and may call it more often).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Optional

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
    checkpoint_every: int = 0  # steps between checkpoints (0 = only at the end)
    checkpoint_steps: tuple[int, ...] = ()  # WSD trunk: also save at these steps (its branches' starts)
    branch_from: Optional[str] = None  # WSD branch: a trunk checkpoint (tag directory) to start from
    branch_step: int = 0  # ... taken after this many steps; the branch trains the rest of its schedule
    data: str = "builtin"  # "builtin" corpus or a directory of pre-tokenised Parquet shards
    data_cache: Optional[str] = None  # where the built-in corpus shards are cached
    exact_flops: bool = False  # count attention + embedding FLOPs instead of 6·N per token
    threads: int = 1  # torch intra-op threads per worker process
    family: str = "gpt"  # the model family that realises N (trainers.model.FAMILIES)
    tasks: tuple[str, ...] = ()  # downstream tasks (trainers.tasks references) evaluated on the model
    tasks_at: str = "every_eval"  # "every_eval" or "checkpoints": evaluations on checkpoint_every steps and the last
    task_items: int = 200  # items per built-in task

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (nested schedule included), suitable for Ray configs and MLflow params."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialConfig":
        """Inverse of `to_dict`."""
        d = dict(d)
        sched = d.pop("schedule", {}) or {}
        d["checkpoint_steps"] = tuple(d.get("checkpoint_steps") or ())
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
