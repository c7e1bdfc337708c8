"""The HTTP API's request and response shapes (pydantic), its limits and its error type."""
from __future__ import annotations

from typing import Annotated, Any, Optional

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

MAX_BODY_BYTES = 1 << 20  # a spec is a few hundred bytes; anything near this is abuse
MAX_RANGE_COUNT = 10_000  # {min, max, count} ranges: larger counts would stall validation
MAX_BUDGETS = 32
MAX_BOOTSTRAP = 2000
MAX_TRIALS = 20_000  # grid trials of a submitted spec: validation plans each (~50 us), the sweep runs each

SWEEP_STATES = "running | finished | stopped | failed | not_started | unmanaged"


class ApiConfigError(ValueError):
    """A server configuration that must not start (e.g. a public bind without a token)."""


class ApiError(Exception):
    """A request that cannot be answered: HTTP status and a message for the client."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ErrorBody(BaseModel):
    """Every error response: a human-readable `detail` (plus `errors` for request validation)."""

    detail: str
    errors: Optional[list[dict[str, Any]]] = None


class Links(BaseModel):
    """Where to read a sweep."""

    self: str
    proposals: str
    laws: str


def links(sweep_id: str) -> dict[str, str]:
    """URLs of a sweep's resources.

    >>> links("s")["laws"]
    '/sweeps/s/laws'
    """
    base = f"/sweeps/{sweep_id}"
    return {"self": base, "proposals": f"{base}/proposals", "laws": f"{base}/laws"}


class SweepCreated(BaseModel):
    """Answer to POST /sweeps."""

    id: str
    status: str
    links: Links


class SweepSummary(BaseModel):
    """One sweep in GET /sweeps."""

    id: str
    status: str = Field(description=SWEEP_STATES + " (stopped: ended by a stop request, e.g. the server's "
                                                    "shutdown; `scalesweep resume` continues it)")
    exit_code: Optional[int] = None
    trials: dict[str, int] = Field(description="number of trials per state")
    flops_spent: float = Field(description="sum over trials of the training FLOPs each spent (a WSD branch from "
                                           "its branch point)")
    links: Links


class SweepDetail(SweepSummary):
    """GET /sweeps/{id}: the summary plus the controller, the spec summary and the latest fit."""

    controller: Optional[dict[str, Any]] = None
    spec: Optional[dict[str, Any]] = None
    spec_error: Optional[str] = None
    fit: Optional[dict[str, Any]] = Field(None, description="fit.json of the sweep (written when it ends), if any")


class Proposal(BaseModel):
    """A compute-optimal config for one budget C with predicted loss and intervals."""

    model_config = ConfigDict(extra="allow")
    budget: float
    N: float
    D: float
    lr: float
    batch: float
    predicted_loss: float
    intervals: dict[str, Any]
    resources: Optional[dict[str, Any]] = Field(
        None, description="resource plan of (N, D, batch) on the spec's device (cluster/resources.py): device, "
                          "workers, zero_stage, micro_batch, grad_accum, activation_checkpointing, memory_gib per "
                          "device, memory breakdown (bytes), device_hours, step_time_s, reason; or an error")
    task_metrics: Optional[dict[str, Any]] = Field(
        None, description="when the sweep evaluated tasks (eval.tasks): per task, the accuracy predicted at (N, D): "
                          "acc, interval (of the law's mean), prediction_interval (of one evaluation), loss (the "
                          "task loss used), law, warnings (docs/downstream.md)")


class LawsDoc(BaseModel):
    """GET /sweeps/{id}/laws: the fitted L(N, D) and, when fittable, lr*(N, D) and batch*(D)."""

    law: Optional[dict[str, Any]] = Field(description="Chinchilla L(N, D): params, intervals, warnings; null if not fitted")
    cells: list[dict[str, Any]]
    warnings: list[str]
    hparams: Optional[dict[str, Any]] = None
    hparams_reason: Optional[str] = None
    n_trials: int


EXAMPLE_SPEC = {  # a simulated sweep that runs in about a minute on a laptop
    "name": "example",
    "model": {"n_params": [20000, 50000, 120000]},
    "tokens": {"per_param": [10, 20]},
    "learning_rates": [0.01],
    "batch_sizes": [8192],
    "trainer": {"backend": "simulated", "world": "tiny"},
    "eval": {"every": 50},
    "budget": {"targets": [1e13]},
}

ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 409, 413, 415, 422)}

Budget = Annotated[list[Annotated[float, Field(gt=0, allow_inf_nan=False)]],
                   Query(min_length=1, max_length=MAX_BUDGETS, description="target compute budget C in FLOPs (repeatable)")]
Bootstrap = Annotated[Optional[int], Query(ge=0, le=MAX_BOOTSTRAP,
                                           description="bootstrap resamples; default: the spec's fit.bootstrap")]
