#!/usr/bin/env bash
# Set everything up and run the whole test suite (unit, golden-data and integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# A fixed Hypothesis seed keeps CI reproducible; pass --hypothesis-seed=N to explore others.
# Two workers: the Ray/integration tests run one at a time on one (tests/conftest.py groups them)
# while the unit tests fill the other; pass -n 0 to run everything in one process.
exec python -m pytest -q -p no:cacheprovider --timeout=900 --hypothesis-seed=0 -n 2 --dist loadgroup "$@"
