"""The planner interface: what every planner (the grid, the law-guided search) offers the layers above.

A planner is asked for the next trial and told how trials ended. `next_trial()` answers with one
of three things, each its own type (no string sentinels, no None):

- a `PlannedTrial` (`trial`): run it;
- `Wait`: nothing to start until a running trial reports back (ask again later);
- `Done`: the planner will hand out nothing more; `why` says why.

Test a step with `isinstance` (a `Wait` or `Done` may carry a reason, so `== WAIT` is not enough).

The Ray Tune searcher (`orchestrator/adapters/tune/searcher.py`), the replay of a sweep in simulated time
(`orchestrator/app/replay.py`) and the benchmarks drive any `Planner` through this protocol only.
Pure (standard library only).

>>> step = WAIT
>>> isinstance(step, Wait), isinstance(Done("budget spent"), Done)
(True, True)
>>> Done("budget spent").why
'budget spent'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Protocol, Union, runtime_checkable

if TYPE_CHECKING:  # typing only
    from .trial import PlannedTrial


@dataclass(frozen=True)
class Wait:
    """Nothing to start now: a running trial must report first."""

    why: str = ""


@dataclass(frozen=True)
class Done:
    """The planner hands out no more trials."""

    why: str = ""


WAIT = Wait()  # the plain Wait (planners that give no reason)

Step = Union["PlannedTrial", Wait, Done]  # what next_trial() returns


@dataclass(frozen=True)
class HparamAdvice:
    """A planner's learned hyperparameter laws, for the proposals: `predict(N, D) -> (lr, batch)`
    (None, None when it has none there), `intervals(N, D, level) -> dict | None`, and
    `corrected_loss(point) -> loss`: a finished run's loss as the planner's own L(N, D) fit counted it
    (the search's WSD branches; None: every loss as it is). Callers pass the fields on explicitly
    (`core.proposals.fit_and_propose`), nothing is looked up by name."""

    predict: Callable[[float, float], tuple[Optional[float], Optional[float]]]
    intervals: Optional[Callable[..., Optional[dict[str, Any]]]] = None
    corrected_loss: Optional[Callable[[Mapping[str, Any]], float]] = None


@runtime_checkable
class Planner(Protocol):
    """Which trials run, in which order; state rebuilt from the store's ended trials by `resume`."""

    trials: list  # every trial planned so far (PlannedTrial); a search may plan more as it goes
    decisions: list  # one dict per hand-out, skip, check or stop, with its `why`

    @property
    def trial_cap(self) -> int:
        """Most trials this planner can hand out (Tune's num_samples)."""

    def next_trial(self) -> Step:
        """The next trial, `Wait` or `Done`."""

    def observe_report(self, trial_id: str, report: Mapping[str, Any]) -> None:
        """A running trial reported (its progress; most planners ignore it)."""

    def observe(self, trial_id: str, result: Optional[Mapping[str, Any]]) -> None:
        """A trial ended with its last report (None if it failed)."""

    def resume(self, results: Mapping[str, Optional[Mapping[str, Any]]],
               interrupted: Optional[Mapping[str, Mapping[str, Any]]] = None) -> None:
        """Replay the trials that ended in an earlier run of this sweep (not run again); `interrupted`:
        those it started and did not end, by id with their recorded config (run again, as planned)."""

    def runnable(self) -> list:
        """Trials handed out so far plus those it would hand out next (for the progress display)."""

    def hparam_advice(self) -> Optional[HparamAdvice]:
        """The planner's learned lr/batch laws for the proposals (None: the proposals learn their own)."""

    def advice_state(self) -> Optional[dict[str, Any]]:
        """What `hparam_advice` reads, by name, for a cache of a replayed search (`app.replay_cache`);
        None when the planner gives no advice."""

    def restore_advice_state(self, state: Mapping[str, Any]) -> None:
        """Give a fresh planner of the same spec the `advice_state` of another: its `hparam_advice` then
        answers as that one's does."""


__all__ = ["Done", "HparamAdvice", "Planner", "Step", "WAIT", "Wait"]
