"""The pure core: the words of the design as types and rules, on the standard library, numpy and scipy only.

- `cells`: a cell, the one rule that puts a run in its cell, and the best tuned run per cell;
- `family`: the model families: shape from N, parameter and FLOP counts (no torch);
- `resources`: the memory and throughput model: workers, ZeRO stage, micro-batch, cost;
- `laws/`: the law families and their fitting (parameters, fit, predict, intervals, backtests);
- `planning/`: the `Planner` protocol, the planned trial, the sweep's design (frozen configs), the
  grid and its WSD branching;
- `pruning/`: the pruning rules (one per file behind a one-method protocol), their history and calibration;
- `outcome`: how a trial ended.

Nothing here imports torch, ray, mlflow, fastapi or pydantic, nor the spec (`orchestrator.config`
converts it to the frozen configs here); `tests/unit/test_import_contract.py` enforces it, and that
`import orchestrator.core` works without them. So the rules can be read,
tested and reused without a cluster. Layers and what each may import: docs/architecture.md.
"""
