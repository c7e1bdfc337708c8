"""Former home of the pruner, kept for imports written before `orchestrator.pruning` (use that).

``TrialMeta.from_trial_config`` lives at the boundary now (`orchestrator.pruning.boundary.trial_meta`).
"""
from __future__ import annotations

from .pruning import CONTINUE, DIVERGED, LR_REF, STOP, Decision, PruneConfig, Pruner
from .pruning import TrialMeta as _TrialMeta
from .pruning.boundary import trial_meta


class TrialMeta(_TrialMeta):
    """`orchestrator.pruning.TrialMeta` with the old constructor from a contract TrialConfig."""

    from_trial_config = staticmethod(trial_meta)


__all__ = ["PruneConfig", "TrialMeta", "Decision", "Pruner", "CONTINUE", "STOP", "DIVERGED", "LR_REF"]
