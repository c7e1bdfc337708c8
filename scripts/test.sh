#!/usr/bin/env bash
# Set everything up and run the whole test suite (unit, golden-data and integration tests).
#
# With no arguments the suite runs in four pytest processes side by side on the machine's two
# cores (the integration tests mostly wait: on Ray, servers, subprocesses, sleeps):
#   serial  the integration tests marked `serial` (they kill nodes or workers, take servers down,
#           signal this process: they run one at a time, beside and not among many others);
#   unit    tests/unit, then the integration files UNIT_TOO names;
#   int-a   the integration files INT_A names (their tests not marked serial);
#   int-b   every other integration file (ditto): a new file lands here unless named above.
# The files are split so that the four take about as long. Their outputs are printed one after
# the other (serial's as it runs) and the suite fails if any fails.
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

I=tests/integration
UNIT_TOO=("$I/test_api_shutdown.py" "$I/test_graceful_stop.py" "$I/test_checkpoint_on_stop.py"
          "$I/test_transfer_sweep.py" "$I/test_api_s3.py")
# (the pruned sweep last: its background pruner's stop must land before a trunk ends, and by then
# the unit tests, which keep a core busy, are done)
INT_A=("$I/test_own_trainer.py" "$I/test_sweep.py" "$I/test_tracking.py" "$I/test_s3_store.py"
       "$I/test_llama_trial.py" "$I/test_memory_measured.py" "$I/test_warm_start_sweep.py"
       "$I/test_api.py" "$I/test_pruned_sweep.py")
# Each process collects only its files: collecting the whole folder imports every integration
# module (torch, DeepSpeed, Ray Tune...), seconds of CPU each time.
mapfile -t serial_files < <(grep -l "pytest.mark.serial" "$I"/test_*.py)
mapfile -t all_serial < <(grep -l "^pytestmark = .*pytest.mark.serial" "$I"/test_*.py)  # no test for int-b
int_b=()
for f in "$I"/test_*.py; do
  case " ${UNIT_TOO[*]} ${INT_A[*]} ${all_serial[*]} " in *" $f "*) ;; *) int_b+=("$f") ;; esac
done

logs=$(mktemp -d)
declare -A pid
# separate temp roots: no process's clean-up may touch another's live directories
"${PYTEST[@]}" --durations=10 --basetemp="$logs/unit" tests/unit "${UNIT_TOO[@]}" -m "not serial" \
  >"$logs/unit.log" 2>&1 &
pid[unit]=$!
"${PYTEST[@]}" --durations=10 --basetemp="$logs/int-a" "${INT_A[@]}" -m "not serial" >"$logs/int-a.log" 2>&1 &
pid[int-a]=$!
"${PYTEST[@]}" --durations=10 --basetemp="$logs/int-b" "${int_b[@]}" -m "not serial" >"$logs/int-b.log" 2>&1 &
pid[int-b]=$!
set +e
"${PYTEST[@]}" --durations=10 --basetemp="$logs/serial" -m serial "${serial_files[@]}" 2>&1 | tee "$logs/serial.log"
declare -A rc=([serial]=${PIPESTATUS[0]})
for name in unit int-a int-b; do
  wait "${pid[$name]}"
  rc[$name]=$?
done
set -e
failed=0
for name in unit int-a int-b; do
  echo "=============== $name (-m 'not serial') ==============="
  cat "$logs/$name.log"
done
for name in serial unit int-a int-b; do
  echo "$name: exit ${rc[$name]}"
  [ "${rc[$name]}" -eq 0 ] || failed=1
done
rm -rf "$logs"
[ "$failed" -eq 0 ]
