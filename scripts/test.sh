#!/usr/bin/env bash
# Set everything up and run the whole test suite (unit, golden-data and integration tests).
#
# With no arguments the suite runs in two pytest processes side by side on the machine's two cores:
# one runs the integration tests marked `serial` (they kill processes, take servers down or time a
# fault, so they run one at a time and not among many other tests), the other everything else
# (tests/unit, then the other integration tests: real Ray clusters, DeepSpeed, MLflow, PostgreSQL,
# S3). Their outputs are printed one after the other and the suite fails if either fails.
# With arguments, one pytest process runs exactly what they say, e.g.
#   bash scripts/test.sh tests/unit/test_cells.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# DeepSpeed JIT-builds its CPU shared-memory all-reduce op for multi-rank trials into
# $TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions, shared by every venv on the machine). The
# build's command names this venv's paths, so another venv's build there makes ninja rebuild it (~70 s
# of CPU) on the next run; one folder per venv keeps the build of this one.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}"
# A fixed Hypothesis seed keeps CI reproducible; pass --hypothesis-seed=N to explore others.
PYTEST=(python -m pytest -q -p no:cacheprovider --timeout=900 --hypothesis-seed=0)
if [ $# -gt 0 ]; then
  exec "${PYTEST[@]}" "$@"
fi
logs=$(mktemp -d)
# separate temp roots: neither process's clean-up may touch the other's live directories
"${PYTEST[@]}" --durations=15 --basetemp="$logs/rest" -m "not serial" tests/unit tests/integration \
  >"$logs/rest.log" 2>&1 &
rest=$!
set +e
# The serial process collects only the files that mark a test `serial` (every serial test is in one):
# collecting the whole folder imports every integration module (torch, DeepSpeed, Ray Tune...), ~8 s
# of CPU more than these nine files.
mapfile -t serial_files < <(grep -l "pytest.mark.serial" tests/integration/test_*.py)
"${PYTEST[@]}" --durations=15 --basetemp="$logs/serial" -m serial "${serial_files[@]}" 2>&1 | tee "$logs/serial.log"
serial_rc=${PIPESTATUS[0]}
wait "$rest"
rest_rc=$?
set -e
echo "=============== unit and integration tests (-m 'not serial') ==============="
cat "$logs/rest.log"
echo "serial tests: exit $serial_rc; the others: exit $rest_rc"
rm -rf "$logs"
[ "$rest_rc" -eq 0 ] && [ "$serial_rc" -eq 0 ]
