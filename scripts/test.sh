#!/usr/bin/env bash
# Set everything up and run the whole test suite (unit, golden-data and integration tests).
#
# With no arguments the unit tests (tests/unit) and the integration tests (tests/integration: real
# Ray clusters, DeepSpeed, MLflow servers, one at a time) run side by side in two pytest processes
# on the machine's two cores; their outputs are printed one after the other and the suite fails if
# either fails. With arguments, one pytest process runs exactly what they say, e.g.
#   bash scripts/test.sh tests/unit/test_cells.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# A fixed Hypothesis seed keeps CI reproducible; pass --hypothesis-seed=N to explore others.
PYTEST=(python -m pytest -q -p no:cacheprovider --timeout=900 --hypothesis-seed=0)
if [ $# -gt 0 ]; then
  exec "${PYTEST[@]}" "$@"
fi
logs=$(mktemp -d)
# separate temp roots: neither process's clean-up may touch the other's live directories
"${PYTEST[@]}" --durations=15 --basetemp="$logs/u" tests/unit >"$logs/unit.log" 2>&1 &
unit=$!
set +e
"${PYTEST[@]}" --durations=15 --basetemp="$logs/i" tests/integration 2>&1 | tee "$logs/integration.log"
integration=${PIPESTATUS[0]}
wait "$unit"
unit_rc=$?
set -e
echo "=============================== unit tests (tests/unit) ==============================="
cat "$logs/unit.log"
echo "unit tests: exit $unit_rc; integration tests: exit $integration"
rm -rf "$logs"
[ "$unit_rc" -eq 0 ] && [ "$integration" -eq 0 ]
