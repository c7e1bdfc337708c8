"""A spec's trials sized before any grid is planned: the resource plan of a trial (`plan: auto`
plans it, `plan: manual` checks the spec's values against the memory model) and the FLOPs of the
smallest cell.

Both the spec's load checks (`orchestrator.config.spec.parse_spec`) and the planner's boundary
(`orchestrator.config.trials`) use this module, so loading a spec plans no grid and the spec never imports
the planner. The spec becomes the core's `Design` (`orchestrator.config.planning.design_of`) and the
pure core (`orchestrator.core.planning.design`) sizes it; this module imports the spec module only
for type hints.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .planning import design_of
from ..core.planning import design as core
from ..core.resources import ResourcePlan

if TYPE_CHECKING:  # the spec imports this module; type hints only
    from .spec import SweepSpec


def trial_resources(spec: "SweepSpec", n_target: int, batch: int, machine: bool = False) -> Optional[ResourcePlan]:
    """The resource plan of a trial of `n_target` parameters at `batch` tokens
    (`core.planning.design.trial_resources` on the spec's design); `machine`: the unnamed default CPU
    is this machine. A trial that cannot fit raises `ResourceError`."""
    return core.trial_resources(design_of(spec, machine), n_target, batch)


def check_trial_resources(spec: "SweepSpec", machine: bool = False) -> None:
    """Every (N, batch) of the spec's grid fits its device (`trial_resources`); raises `ResourceError`
    for the first that does not (smallest N first, then the spec's batch order)."""
    design = design_of(spec, machine)
    for n_target in design.sizes:
        for batch in design.batches:
            core.trial_resources(design, n_target, batch)


def smallest_cell_flops(spec: "SweepSpec") -> float:
    """Training FLOPs of the spec's cheapest cell (`core.planning.design.smallest_cell_flops`)."""
    return core.smallest_cell_flops(design_of(spec))
