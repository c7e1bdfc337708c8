"""Law-guided search: which trial to run next, chosen for what it teaches about the target-budget optimum.

One concept per module (import them directly; this package imports none of them, so that its
modules may import each other without an import cycle through the package). Pure: it plans on the
sweep's `Design` (`core.planning.design`) and never sees the spec. `config` (the knobs, from the spec at
one boundary, `orchestrator.config.planning.search_config`), `lattice` (a cell's (lr, batch) lattice and its search state),
`book` (where each trial lives, committed compute), `hparam_state` (lr*, batch* laws, intervals,
hedge), `loss_law` (L(N, D) with its form chosen by backtest, and its replicates), `acquisition`
(the acquisition rule), `choice` (which cell next, or why wait), `cell_start` (where an opened
cell's search starts), `law_state` (what the search has learned: L(N, D), lr*/batch*, law checks,
the stopping streak), `checks` (transfer's law checks near the target), `transfer` (candidates, law
points), `branches` (WSD branching of single-run cells), `advice` (the laws and loss correction the
proposals get), `stopping` (when to stop) and `planner` (`LawGuidedPlanner`, the
`core.planning.protocol.Planner` that ties them). `orchestrator.config.planners.make_planner` picks it for a spec.
"""
