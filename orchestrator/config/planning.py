"""The spec's design and search knobs as the planning core's frozen configs: the one place the
planners' inputs are read from the pydantic spec.

`design_of(spec)` gives the `Design` every planner plans on (grid axes, schedule, budget, sizing);
`search_config(spec)` the law-guided search's `SearchConfig`. Imports the spec module only for type
hints (the spec's load checks size trials through `orchestrator.config.sizing`, which uses this module).
"""
from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any, Optional

from ..core.family import count_params, shape_for
from ..core.planning.design import Design, ResourceConfig, SizeResources
from ..core.planning.search.config import SearchConfig
from ..core.resources import AUTO

if TYPE_CHECKING:  # the spec imports orchestrator.config.sizing, which imports this module
    from .spec import FitSpec, SearchSpec, SweepSpec


def resource_config(spec: "SweepSpec", machine: bool = False) -> ResourceConfig:
    """How the spec's trials are sized (`spec.resources`); `machine`: the unnamed default CPU is this
    machine (checked at launch), else it is not checked (`ResourcesSpec.device_spec`)."""
    res = spec.resources
    device = res.device_spec(machine)
    return ResourceConfig(
        plan=res.plan, device=device, max_workers=res.max_workers, micro_batch=res.micro_batch,
        check=not (res.plan == "manual" and (device is None or spec.trainer.backend == "simulated")),
        sizes=tuple((n, size_resources(spec, n)) for n in spec.model.sizes()))


def size_resources(spec: "SweepSpec", n: int) -> SizeResources:
    """How the trials of `n` parameters are sized (`ResourcesSpec.settings`): the spec's `auto` becomes
    the core's `AUTO`, each setting with the spec field it comes from."""
    res = spec.resources
    settings = res.settings(n)

    def typed(value: Any) -> Any:
        return AUTO if value == "auto" else value

    (workers, wf), (stage, sf), (micro, mf) = (settings[k] for k in ("workers", "zero_stage", "micro_batch"))
    return SizeResources(workers=typed(workers), zero_stage=typed(stage), micro_batch=typed(micro),
                         fields=(wf, sf, mf), manual=res.for_size(n))


def design_of(spec: "SweepSpec", machine: bool = False) -> Design:
    """The spec's design: what the planners read of it (`core.planning.design.Design`)."""
    m, s = spec.model, spec.schedule
    sizes = tuple(m.sizes())
    # a size's token budgets may depend on its realised N (tokens.per_param): as the family builds it
    tokens = tuple(tuple(spec.tokens.for_size(count_params(shape_for(n, m.family), max_seq_len=m.seq_len).non_embedding))
                   for n in sizes)
    return Design(family=m.family, seq_len=m.seq_len, sizes=sizes, tokens=tokens, lrs=tuple(spec.lrs()),
                  batches=tuple(spec.batches()), seeds=tuple(spec.seeds), schedule=s.kind, warmup=float(s.warmup),
                  decay=float(s.decay), branch=bool(s.branch), total_flops=spec.budget.total_flops,
                  targets=tuple(spec.budget.targets), exact_flops=spec.budget.flops == "exact",
                  resources=resource_config(spec, machine))


def search_config(spec: "SweepSpec") -> SearchConfig:
    """The law-guided search's knobs: the spec's `search` section and the online fit's `fit.law`, `fit.loss`."""
    return search_config_of(spec.search, spec.fit)


def search_config_of(search: "SearchSpec", fit: Optional["FitSpec"] = None) -> SearchConfig:
    """The `SearchConfig` of the validated, defaulted spec sections `search` and `fit` (None: the
    search's own `law`, `loss` defaults). Every `SearchConfig` field but `law` and `loss` is a
    `SearchSpec` field of the same name (tests/unit/core/planning/test_search.py holds them together)."""
    names = {f.name for f in fields(SearchConfig)}
    values = {k: v for k, v in search.model_dump().items() if k in names}
    if fit is not None:
        values.update(law=fit.law, loss=fit.loss)
    return SearchConfig(**values)


__all__ = ["design_of", "resource_config", "search_config", "search_config_of", "size_resources"]
