"""Adapters between the core's planning and pruning and the frameworks that run trials.

`tune/` holds every Ray import of the orchestrator: the Tune searcher and scheduler over the core's
`Planner` and `Pruner`, the callback that records reports (store, MLflow) and the trainable that runs
a trainer. Adapters import `orchestrator.io`, `orchestrator.config` and `orchestrator.core`, never
`orchestrator.app` (docs/architecture.md).
"""
