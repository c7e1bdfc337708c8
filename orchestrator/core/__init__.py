"""The pure core: the words of the design as types and rules, on the standard library, numpy and scipy only.

- `cells`: a cell, the one rule that puts a run in its cell, and the best tuned run per cell;
- `family`: the model families: shape from N, parameter and FLOP counts (no torch);
- `resources`: the memory and throughput model: workers, ZeRO stage, micro-batch, cost;
- `laws/`: the law families and their fitting (parameters, fit, predict, intervals, backtests).

Nothing here imports torch, ray, mlflow, fastapi or pydantic (`tests/unit/test_import_contract.py`
enforces it, and that `import orchestrator.core` works without them), so the rules can be read,
tested and reused without a cluster. Layers and what each may import: docs/architecture.md.
"""
