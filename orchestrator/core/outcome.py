"""How a trial ended: the one classification of a trial's outcome from its last report.

A trial *finished* when its last report covers its planned tokens with a finite loss; *stopped*
when it ended before them (a scheduler or pruner ended it: its loss is evidence, not a final
loss); *diverged* when its losses are not finite; *failed* when it never reported. Only a
finished trial's loss is a point of a fit or a reference for pruning.

>>> outcome_of({"train_loss": 3.0, "eval_loss": 3.1, "done": 1.0, "tokens": 100}, planned_D=100).value
'finished'
>>> outcome_of({"train_loss": float("nan"), "eval_loss": float("nan"), "done": 0.0}).value
'diverged'
>>> outcome_of(None).value, is_loss(float("inf")), is_loss(2.5)
('failed', False, True)
"""
from __future__ import annotations

import math
from enum import Enum
from typing import Any, Mapping, Optional


class Outcome(str, Enum):
    """The end state of a trial (the store's status words)."""

    FINISHED = "finished"
    STOPPED = "stopped"
    DIVERGED = "diverged"
    FAILED = "failed"


def is_loss(value: Any) -> bool:
    """Whether `value` is a realised loss: a finite, positive number (NaN, inf, None and strings are not).

    >>> is_loss(0.0), is_loss("3"), is_loss(3)
    (False, False, True)
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def outcome_of(last: Optional[Mapping[str, Any]], planned_D: Optional[float] = None) -> Outcome:
    """The outcome of a trial whose last report is `last` (None: it never reported) and that planned
    `planned_D` tokens (None: the report's ``done`` flag alone decides).

    >>> outcome_of({"train_loss": 3.0, "eval_loss": 3.1, "done": 1.0, "tokens": 50}, planned_D=100).value
    'stopped'
    """
    if last is None:
        return Outcome.FAILED
    if not (_finite(last.get("train_loss")) or _finite(last.get("eval_loss"))):
        return Outcome.DIVERGED
    done = _num(last.get("done", 1.0))
    tokens = _num(last.get("tokens"))
    if done < 1.0 or (planned_D is not None and math.isfinite(tokens) and tokens < planned_D):
        return Outcome.STOPPED
    return Outcome.FINISHED


def outcome_and_loss(last: Optional[Mapping[str, Any]], planned_D: Optional[float] = None,
                     metric: str = "eval_loss") -> tuple[Outcome, float]:
    """(outcome, loss) for a consumer of the loss at the trial's point: `outcome_of`, and `metric` of the
    last report when it is a realised loss (else NaN). A trial that finished or stopped without a
    realised loss says nothing about its loss: FAILED here (the store still calls it finished).

    >>> outcome_and_loss({"train_loss": 3.0, "eval_loss": 3.1, "done": 1.0, "tokens": 100}, planned_D=100)
    (<Outcome.FINISHED: 'finished'>, 3.1)
    >>> outcome_and_loss({"train_loss": 3.0, "eval_loss": float("nan"), "done": 1.0})[0].value
    'failed'
    """
    out = outcome_of(last, planned_D)
    loss = _num(last.get(metric)) if last is not None else math.nan
    if out in (Outcome.FINISHED, Outcome.STOPPED) and not is_loss(loss):
        return Outcome.FAILED, math.nan
    return out, (loss if is_loss(loss) else math.nan)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _finite(v: Any) -> bool:
    return math.isfinite(_num(v))


__all__ = ["Outcome", "outcome_of", "outcome_and_loss", "is_loss"]
