"""Typed tracker operations: what the facade asks of MLflow, one frozen dataclass per kind.

An operation says what to do; the queue wraps it in a `Queued` envelope that carries the
delivery state (sequence number, the run ids known when it was enqueued, progress through a
batch). Both round-trip through the JSONL spool as one flat record (`to_record`/`from_record`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Mapping, Optional, Union

# A metric row as MLflow's Metric takes it: (key, value, timestamp ms, step).
MetricRow = tuple[str, float, int, int]


@dataclass(frozen=True)
class CreateParent:
    """Create (or resume) the sweep's parent run with its params, tags and spec artifacts."""
    KIND: ClassVar[str] = "parent"
    token: str
    params: Mapping[str, str]
    tags: Mapping[str, str]
    artifacts: tuple[tuple[str, Optional[str], bool], ...] = ()  # (local path, artifact dir, owned)
    resume: Optional[str] = None  # the run id of the sweep's earlier parent run
    trial: None = None


@dataclass(frozen=True)
class CreateTrial:
    """Create a trial's nested run (or set an existing one RUNNING again)."""
    KIND: ClassVar[str] = "trial"
    trial: str
    token: str
    params: Mapping[str, str]
    tags: Mapping[str, str]
    name: str
    trunk: Optional[str] = None  # a WSD branch: its trunk's trial id (its run id is tagged)
    start_ms: Optional[int] = None  # when the trial started: the run's start time, not the (later) delivery's


@dataclass(frozen=True)
class LogMetrics:
    """Metric points of one run."""
    KIND: ClassVar[str] = "metrics"
    trial: Optional[str]
    m: tuple[MetricRow, ...]


@dataclass(frozen=True)
class SetTags:
    """Tags of one run (a later value of a key wins)."""
    KIND: ClassVar[str] = "tags"
    trial: Optional[str]
    tags: Mapping[str, str]


@dataclass(frozen=True)
class LogParams:
    """Params of one run (immutable in MLflow once set)."""
    KIND: ClassVar[str] = "params"
    trial: Optional[str]
    params: Mapping[str, str]


@dataclass(frozen=True)
class LogArtifact:
    """Upload a file; `owned` files were written by the tracker and are removed once delivered."""
    KIND: ClassVar[str] = "artifact"
    trial: Optional[str]
    path: str
    dir: Optional[str] = None
    owned: bool = False


@dataclass(frozen=True)
class EndRun:
    """Terminate a run with an MLflow status at `end_ms`."""
    KIND: ClassVar[str] = "end"
    trial: Optional[str]
    status: str
    end_ms: int


@dataclass(frozen=True)
class EndStale:
    """Terminate the parent's child runs still RUNNING whose trials ended: {trial: (status, tags)}."""
    KIND: ClassVar[str] = "stale"
    ended: Mapping[str, tuple[str, Mapping[str, str]]]
    trial: None = None


Op = Union[CreateParent, CreateTrial, LogMetrics, SetTags, LogParams, LogArtifact, EndRun, EndStale]
OP_TYPES: dict[str, type] = {t.KIND: t for t in (CreateParent, CreateTrial, LogMetrics, SetTags, LogParams,
                                                 LogArtifact, EndRun, EndStale)}
BATCHED = (LogMetrics, SetTags)  # delivered together, one log_batch per run (queue.next_group)
CREATES = (CreateParent, CreateTrial)


@dataclass
class Queued:
    """An operation in the queue with its delivery state."""
    op: Op
    seq: int = 0
    parent: Optional[str] = None  # the parent run id when enqueued: a replayed spool still finds it
    run: Optional[str] = None  # the op's run id when enqueued (None for creates)
    replayed: bool = False  # loaded from the spool of an earlier tracker
    sent: int = 0  # metric rows (or 1 for tags) already delivered: a retried window resumes there
    tried: bool = False  # a create attempted once already (its run may exist)

    @property
    def kind(self) -> str:
        return self.op.KIND

    @property
    def trial(self) -> Optional[str]:
        return self.op.trial

    @property
    def size(self) -> int:
        """Metric rows carried (0 for other kinds): how big a delivery window grows."""
        return len(self.op.m) if isinstance(self.op, LogMetrics) else 0

    def to_record(self) -> dict[str, Any]:
        """One flat JSON-able spool record."""
        return {"kind": self.kind, **asdict(self.op), "seq": self.seq, "parent": self.parent, "run": self.run}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> "Queued":
        """The envelope a spool record describes (records of earlier versions: the same keys)."""
        typ = OP_TYPES[rec["kind"]]
        names = {f.name for f in fields(typ)}
        args = {k: v for k, v in rec.items() if k in names}
        if typ is CreateParent:
            args["artifacts"] = tuple(tuple(a) for a in args.get("artifacts", ()))
        elif typ is LogMetrics:
            args["m"] = tuple(tuple(r) for r in args["m"])
        elif typ is EndStale:
            args["ended"] = {t: (s, dict(tags)) for t, (s, tags) in args["ended"].items()}
        return cls(typ(**args), seq=int(rec["seq"]), parent=rec.get("parent"), run=rec.get("run"))
