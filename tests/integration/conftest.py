"""Shared helpers of the integration tests."""
from __future__ import annotations

from pathlib import Path

import yaml

from orchestrator.spec import parse_spec


def run_real_sweep(root: Path, data: dict, name: str):
    """Write `data` as ROOT/spec.yaml, run it through the real controller on a fresh 2-CPU local
    Ray cluster (sweep dir ROOT/NAME), shut Ray down; return (spec, outcome)."""
    import ray

    from orchestrator.controller import run_sweep

    data = dict(data, output_dir=str(root / name))
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    spec = parse_spec(data)
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)
    try:
        outcome = run_sweep(spec, str(spec_path), show_progress=False)
    finally:
        ray.shutdown()
    return spec, outcome
