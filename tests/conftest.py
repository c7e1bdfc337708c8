"""Suite-wide set-up: tests that start Ray share one xdist worker.

`scripts/test.sh` runs the suite on two xdist workers with `--dist loadgroup`. Tests that start a
Ray cluster, DeepSpeed engines or long-lived servers are put in one group so that they run one at a
time on one worker (two local Ray clusters at once fight over the machine's two cores and make the
timing-sensitive fault tests flaky); the numerical unit tests fill the other worker meanwhile,
grouped by module so that a module-scoped fixture (a fit, a sweep) is built once.
"""
from __future__ import annotations

from pathlib import Path

import pytest

# Unit test files that start a real Ray cluster (they belong with the integration tests' worker).
_RAY_UNIT_FILES = {"test_manifests.py", "test_sweep_failure.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        ray = "integration" in path.parts or path.name in _RAY_UNIT_FILES
        item.add_marker(pytest.mark.xdist_group("ray" if ray else path.stem))
