"""The pure `Pruner` in a helper process, for `PrunerScheduler`'s worker thread.

The pruner's curve-law and frontier fits are pure Python around small scipy problems
(milliseconds to a second each). On a thread of the driver they hold the GIL against Ray
Tune's event loop (see `orchestrator.io.helper_process`); in a helper process they run beside it.
`ProcessPruner` has the `Pruner` calls the scheduler makes (`on_report`, `on_complete`,
`on_remove`, `restore`, `config`, `n_predictions`), made in the same order with the same arguments, so
decisions are identical; `on_reports` sends a run of queued reports in one round trip. A
trial's `TrialMeta` crosses the socket once (its per-step lr array is the bulk of a call). Pickled (Tune saves its scheduler with the experiment state) it becomes
the helper's `Pruner` itself, so an unpickled scheduler holds an ordinary in-process pruner.
If the helper dies, its state is lost: the error is logged by the scheduler's worker and the
next call starts an empty pruner (it then has no references until trials complete again).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Mapping, Optional

from ...io.helper_process import HelperProcess
from ...core.pruning import Completed, Decision, PruneConfig, Pruner, TrialMeta

log = logging.getLogger(__name__)


class PrunerHost:
    """The helper's side: a `Pruner` plus the trials' metas sent so far (and, if `timed`, each call's seconds)."""

    def __init__(self, config: PruneConfig, timed: bool = False):
        self.pruner = Pruner(config)
        self.metas: dict[str, TrialMeta] = {}
        self.seconds: Optional[dict[str, list[float]]] = {"on_report": [], "on_complete": []} if timed else None

    def _meta(self, trial_id: str, meta: Optional[TrialMeta]) -> Optional[TrialMeta]:
        if meta is not None:
            self.metas[trial_id] = meta
        return self.metas.get(trial_id)

    def on_report(self, trial_id: str, meta: Optional[TrialMeta], report: Mapping[str, float]) -> Decision:
        if self.seconds is None:
            return self.pruner.on_report(trial_id, self._meta(trial_id, meta), report)
        t0 = time.perf_counter()
        try:
            return self.pruner.on_report(trial_id, self._meta(trial_id, meta), report)
        finally:
            self.seconds["on_report"].append(time.perf_counter() - t0)

    def on_reports(self, batch: list[tuple]) -> tuple[list[Decision], list[str]]:
        """`on_report` for each (trial id, meta, report) in order; (decisions, errors of the ones that raised)."""
        out, errors = [], []
        for trial_id, meta, report in batch:
            try:
                out.append(self.on_report(trial_id, meta, report))
            except Exception as exc:  # noqa: BLE001 - as one call that raised: the others still count
                out.append(Decision())
                errors.append(f"{trial_id}: {type(exc).__name__}: {exc}")
        return out, errors

    def on_complete(self, trial_id: str, final_loss: float, curve: Optional[tuple] = None,
                    meta: Optional[TrialMeta] = None) -> None:
        t0 = time.perf_counter()
        self.pruner.on_complete(trial_id, final_loss, curve, self._meta(trial_id, meta))
        if self.seconds is not None:
            self.seconds["on_complete"].append(time.perf_counter() - t0)

    def on_remove(self, trial_id: str) -> None:
        self.pruner.on_remove(trial_id)

    def restore(self, completed: list) -> int:
        return self.pruner.restore(completed)

    def n_predictions(self) -> int:
        return self.pruner.n_predictions

    def timings(self) -> Optional[dict[str, list[float]]]:
        return self.seconds

    def state(self) -> Pruner:
        return self.pruner


class ProcessPruner:
    """A `Pruner(config)` served by a helper process (same calls, same decisions)."""

    def __init__(self, config: PruneConfig = PruneConfig(), timed: bool = False):
        self.config = config
        self._helper = HelperProcess("orchestrator.adapters.tune.pruner_process:PrunerHost", config, timed, name="pruner")
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

    def on_reports(self, batch: list[tuple[str, TrialMeta, Mapping[str, float]]]) -> list[Decision]:
        """`on_report` for each (trial id, meta, report), in order, in one round trip to the helper."""
        try:
            decisions, errors = self._helper.call(
                "on_reports", [(tid, self._meta(tid, meta), dict(report)) for tid, meta, report in batch])
        except ConnectionError:
            self._sent.clear()
            raise
        for err in errors:
            log.error("pruner: report failed for %s", err)
        return decisions

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

    def restore(self, completed: Iterable[Completed]) -> int:
        """`Pruner.restore` (a resumed sweep's finished trials), run in the helper."""
        return int(self._helper.call("restore", list(completed)))

    @property
    def n_predictions(self) -> int:
        """Fresh predictions the helper's pruner made (`Pruner.n_predictions`)."""
        return int(self._helper.call("n_predictions"))

    def timings(self) -> Optional[dict[str, list[float]]]:
        """Seconds of each `on_report` / `on_complete` inside the helper (with ``timed=True``; else None)."""
        return self._helper.call("timings")

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
