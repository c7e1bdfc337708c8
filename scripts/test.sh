#!/usr/bin/env bash
# Set everything up and run the whole test suite (unit, golden-data and integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m pytest -q -p no:cacheprovider --timeout=900 "$@"
