"""A Ray Tune `TrialScheduler` that stops trials by the pruning rule of `orchestrator.pruner`.

Thin by design: every decision lives in the pure `Pruner`; this adapter maps Tune's callbacks
onto it and returns CONTINUE or STOP. Trials run in submission order (it is a FIFOScheduler),
so it composes with any Searcher, ours included. Usable in any user's own `Tuner` whose trial
configs carry the trial contract under ``config["trial"]`` (a `trainers.contract.TrialConfig` dict).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from ..pruner import Decision, PruneConfig, Pruner, TrialMeta

log = logging.getLogger(__name__)

OnDecision = Callable[[str, Decision], None]


class PrunerScheduler(FIFOScheduler):
    """Stops a trial when the pruner says so; ``on_decision(trial_id, decision)`` records every stop."""

    def __init__(self, config: PruneConfig = PruneConfig(), on_decision: Optional[OnDecision] = None,
                 pruner: Optional[Pruner] = None):
        super().__init__()
        self.pruner = pruner or Pruner(config)
        self.on_decision = on_decision
        self.metas: dict[str, TrialMeta] = {}
        self.last: dict[str, dict[str, float]] = {}
        self.decisions: dict[str, Decision] = {}  # trial id -> the decision that ended it

    @staticmethod
    def trial_id(trial) -> str:
        """The contract's trial id (Tune's own id when the config has none)."""
        cfg = trial.config.get("trial") if isinstance(trial.config, dict) else None
        return str(cfg.get("trial_id") or trial.trial_id) if isinstance(cfg, dict) else str(trial.trial_id)

    def _meta(self, trial) -> Optional[TrialMeta]:
        tid = self.trial_id(trial)
        if tid not in self.metas:
            cfg = trial.config.get("trial") if isinstance(trial.config, dict) else None
            if not isinstance(cfg, dict):
                return None
            self.metas[tid] = TrialMeta.from_trial_config(cfg)
        return self.metas[tid]

    def on_trial_add(self, tune_controller, trial) -> None:
        self._meta(trial)

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        decision = self._report(trial, result)
        return TrialScheduler.STOP if decision is not None and decision.stops else TrialScheduler.CONTINUE

    def _report(self, trial, result: dict[str, Any]) -> Optional[Decision]:
        meta = self._meta(trial)
        if meta is None or not isinstance(result, dict) or "step" not in result:
            return None
        tid = self.trial_id(trial)
        report = {k: result.get(k) for k in ("step", "train_loss", "eval_loss", "flops")}
        if self.last.get(tid) == report:
            return None  # the same result seen again (Tune repeats the last one on completion)
        self.last[tid] = report
        decision = self.pruner.on_report(tid, meta, report)
        if decision.stops:
            self._record(tid, decision)
        return decision

    def _record(self, tid: str, decision: Decision) -> None:
        self.decisions[tid] = decision
        log.info("pruner: %s %s: %s", decision.action, tid, decision.reason)
        if self.on_decision is not None:
            try:
                self.on_decision(tid, decision)
            except Exception:  # recording must never take the sweep down
                log.exception("on_decision failed for %s", tid)

    def on_trial_complete(self, tune_controller, trial, result: dict[str, Any]) -> None:
        tid = self.trial_id(trial)
        if tid in self.decisions:
            return  # we stopped it: not a completed reference
        # Tune hands a trial's last result here, not to on_trial_result: a final NaN is a divergence.
        decision = self._report(trial, result)
        if decision is not None and decision.stops:
            return
        last = self.last.get(tid) or {}
        meta = self._meta(trial)
        step = last.get("step")
        if meta is not None and step is not None and float(step) >= meta.total_steps:
            final = last.get(self.pruner.config.metric)
            self.pruner.on_complete(tid, float("nan") if final is None else float(final))
        else:
            self.pruner.on_remove(tid)

    def on_trial_error(self, tune_controller, trial) -> None:
        self.pruner.on_remove(self.trial_id(trial))

    def on_trial_remove(self, tune_controller, trial) -> None:
        self.pruner.on_remove(self.trial_id(trial))

    def debug_string(self) -> str:
        stops = sum(d.action == "stop" for d in self.decisions.values())
        div = sum(d.action == "diverged" for d in self.decisions.values())
        return f"Using PrunerScheduler: {stops} stopped, {div} diverged, {self.pruner.n_predictions} predictions."
