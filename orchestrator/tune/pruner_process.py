"""The pure `Pruner` in a helper process, for `PrunerScheduler`'s worker thread.

The pruner's curve-law and frontier fits are pure Python around small scipy problems
(milliseconds to a second each). On a thread of the driver they hold the GIL against Ray
Tune's event loop (see `orchestrator.helper_process`); in a helper process they run beside it.
`ProcessPruner` has the `Pruner` calls the scheduler makes (`on_report`, `on_complete`,
`on_remove`, `config`, `n_predictions`), made in the same order with the same arguments, so
decisions are identical. A trial's `TrialMeta` crosses the socket once (its per-step lr array is
the bulk of a call). Pickled (Tune saves its scheduler with the experiment state) it becomes
the helper's `Pruner` itself, so an unpickled scheduler holds an ordinary in-process pruner.
If the helper dies, its state is lost: the error is logged by the scheduler's worker and the
next call starts an empty pruner (it then has no references until trials complete again).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from ..helper_process import HelperProcess
from ..pruner import Decision, PruneConfig, Pruner, TrialMeta


class PrunerHost:
    """The helper's side: a `Pruner` plus the trials' metas sent so far."""

    def __init__(self, config: PruneConfig):
        self.pruner = Pruner(config)
        self.metas: dict[str, TrialMeta] = {}

    def _meta(self, trial_id: str, meta: Optional[TrialMeta]) -> Optional[TrialMeta]:
        if meta is not None:
            self.metas[trial_id] = meta
        return self.metas.get(trial_id)

    def on_report(self, trial_id: str, meta: Optional[TrialMeta], report: Mapping[str, float]) -> Decision:
        return self.pruner.on_report(trial_id, self._meta(trial_id, meta), report)

    def on_complete(self, trial_id: str, final_loss: float, curve: Optional[tuple] = None,
                    meta: Optional[TrialMeta] = None) -> None:
        self.pruner.on_complete(trial_id, final_loss, curve, self._meta(trial_id, meta))

    def on_remove(self, trial_id: str) -> None:
        self.pruner.on_remove(trial_id)

    def n_predictions(self) -> int:
        return self.pruner.n_predictions

    def state(self) -> Pruner:
        return self.pruner


class ProcessPruner:
    """A `Pruner(config)` served by a helper process (same calls, same decisions)."""

    def __init__(self, config: PruneConfig = PruneConfig()):
        self.config = config
        self._helper = HelperProcess("orchestrator.tune.pruner_process:PrunerHost", config, name="pruner")
        self._sent: set[str] = set()  # trials whose meta the helper has

    def _meta(self, trial_id: str, meta: Optional[TrialMeta]) -> Optional[TrialMeta]:
        if meta is None or trial_id in self._sent:
            return None
        self._sent.add(trial_id)
        return meta

    def on_report(self, trial_id: str, meta: TrialMeta, report: Mapping[str, float]) -> Decision:
        """`Pruner.on_report`, run in the helper."""
        try:
            return self._helper.call("on_report", trial_id, self._meta(trial_id, meta), dict(report))
        except ConnectionError:
            self._sent.clear()  # a new helper knows no metas
            raise

    def on_complete(self, trial_id: str, final_loss: float, curve: Optional[tuple] = None,
                    meta: Optional[TrialMeta] = None) -> None:
        """`Pruner.on_complete`, run in the helper."""
        try:
            self._helper.call("on_complete", trial_id, final_loss, curve, self._meta(trial_id, meta))
        except ConnectionError:
            self._sent.clear()
            raise

    def on_remove(self, trial_id: str) -> None:
        """`Pruner.on_remove`, run in the helper."""
        self._helper.call("on_remove", trial_id)

    @property
    def n_predictions(self) -> int:
        """Fresh predictions the helper's pruner made (`Pruner.n_predictions`)."""
        return int(self._helper.call("n_predictions"))

    @property
    def pid(self) -> Optional[int]:
        """The helper's process id."""
        return self._helper.pid

    def close(self) -> None:
        """Stop the helper (it also exits when this process does)."""
        self._helper.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled with Tune's experiment state: the helper's Pruner itself (an in-process pruner on load).
        return _identity, (self._helper.call("state"),)


def _identity(obj: Any) -> Any:
    return obj
