#!/usr/bin/env bash
# Set everything up and run the whole test suite (unit, golden-data and integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# A fixed Hypothesis seed keeps CI reproducible; pass --hypothesis-seed=N to explore others.
exec python -m pytest -q -p no:cacheprovider --timeout=900 --hypothesis-seed=0 "$@"
