#!/usr/bin/env bash
# Set everything up and run the whole test suite (unit, golden-data and integration tests).
#
# With no arguments the suite runs in two pytest processes side by side on the machine's two cores:
# one runs the tests that start Ray clusters (tests/integration, one cluster at a time: a second
# local cluster would find the first through Ray's address discovery), the other everything else
# (tests/unit and the integration tests marked `no_ray`: DeepSpeed, MLflow servers, the API fuzzer).
# Their outputs are printed one after the other and the suite fails if either fails.
# With arguments, one pytest process runs exactly what they say, e.g.
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
"${PYTEST[@]}" --durations=15 --basetemp="$logs/u" -m "not integration or no_ray" tests/unit tests/integration \
  >"$logs/unit.log" 2>&1 &
unit=$!
set +e
"${PYTEST[@]}" --durations=15 --basetemp="$logs/i" -m "integration and not no_ray" tests/integration 2>&1 \
  | tee "$logs/integration.log"
integration=${PIPESTATUS[0]}
wait "$unit"
unit_rc=$?
set -e
echo "=============== unit tests and integration tests without Ray (-m 'not integration or no_ray') ==============="
cat "$logs/unit.log"
echo "without Ray: exit $unit_rc; with Ray clusters: exit $integration"
rm -rf "$logs"
[ "$unit_rc" -eq 0 ] && [ "$integration" -eq 0 ]
