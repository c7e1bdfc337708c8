"""Former home of the pruner, kept for imports written before `orchestrator.core.pruning` (use that).

``TrialMeta.from_trial_config`` lives at the boundary now (`orchestrator.config.pruning.trial_meta`).
"""
from __future__ import annotations

from .core.pruning import CONTINUE, DIVERGED, LR_REF, STOP, Decision, PruneConfig, Pruner
from .core.pruning import TrialMeta as _TrialMeta
from .config.pruning import trial_meta


class TrialMeta(_TrialMeta):
    """`orchestrator.core.pruning.TrialMeta` with the old constructor from a contract TrialConfig."""

    from_trial_config = staticmethod(trial_meta)


__all__ = ["PruneConfig", "TrialMeta", "Decision", "Pruner", "CONTINUE", "STOP", "DIVERGED", "LR_REF"]
