"""The spec's fit settings as the keywords of `orchestrator.core.proposals.fit_and_propose`: the one
definition the controller's summary, `scalesweep propose` and the HTTP API share."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .spec import SweepSpec


def fit_settings(spec: Optional["SweepSpec"] = None, bootstrap: Optional[int] = None) -> dict[str, Any]:
    """The spec's fit settings as `fit_and_propose` keywords (law, loss, bootstrap, level, seed);
    `bootstrap` overrides the spec's; no spec (a broken or missing one) gives the defaults."""
    out = ({"law": "auto", "loss": "huber", "bootstrap": 200, "level": 0.9, "seed": 0} if spec is None else
           {"law": spec.fit.law, "loss": spec.fit.loss, "bootstrap": spec.fit.bootstrap, "level": spec.fit.level,
            "seed": spec.seed})
    if bootstrap is not None:
        out["bootstrap"] = int(bootstrap)
    return out
