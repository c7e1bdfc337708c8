#!/usr/bin/env bash
# Set everything up and run the whole test suite (unit, golden-data and integration tests).
#
# With no arguments the suite runs in two pytest processes side by side on the machine's two cores:
# one runs the integration tests marked `serial` (they kill processes, take servers down or time a
# fault, so they run one at a time and not among many other tests), then a few heavy integration
# files (SERIAL_TOO) so that both processes take about as long; the other runs tests/unit, then the
# other integration tests (real Ray clusters, DeepSpeed, MLflow, PostgreSQL, S3). Their outputs are
# printed one after the other and the suite fails if either fails.
# With arguments, one pytest process runs exactly what they say, e.g.
#   bash scripts/test.sh tests/unit/core/test_cells.py -x
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
# Heavy integration files the serial process runs after its serial tests (not `serial` themselves),
# chosen so that both processes take about as long (clean-clone CI, 7 Dec, db794f7: serial tests 6.9
# min, these 10.2; the other process, tests/unit and the other integration files, 16.9).
# In this order: the files whose tests use the session's shared local Ray instance (conftest.py's
# `local_ray`) one after the other, so that it starts once, not once per file (a test that does not
# ask for it stops it); test_checkpoint_on_stop.py, whose last test does not, and test_s3_store.py
# (its instance has the bucket's keys in its environment) last.
SERIAL_TOO=("$I/test_benchmarks_smoke.py" "$I/test_own_trainer.py" "$I/test_graceful_stop.py"
            "$I/test_branched_sweep.py" "$I/test_failed_sweep.py" "$I/test_warm_start_sweep.py"
            "$I/test_checkpoint_on_stop.py" "$I/test_s3_store.py")
# The other process's integration files: first those that do not use the shared instance, then
# those that do, one after the other, the 4-CPU one (test_sweep.py) last and the one whose instance
# has the bucket's keys in its environment (test_s3_artifacts.py) first; test_report.py and
# test_own_trainer_tasks.py, whose last tests do not use it, at the end.
SHARED_RAY_LAST=("$I/test_s3_artifacts.py" "$I/test_forget_tune.py" "$I/test_llama_sweep.py"
                 "$I/test_postgres_store.py" "$I/test_pruned_sweep.py" "$I/test_scheduler_tune.py"
                 "$I/test_sweep_view.py" "$I/test_task_sweep.py" "$I/test_transfer_sweep.py"
                 "$I/test_report.py" "$I/test_own_trainer_tasks.py" "$I/test_sweep.py")
# Each process collects only its files: collecting the whole folder imports every integration
# module (torch, DeepSpeed, Ray Tune...), ~8 s of CPU more than needed.
# test_submit.py, then test_node_loss.py, last: they share one two-node cluster (conftest.py's
# loopback_cluster), which node_loss's last test leaves with one node.
pair=("$I/test_submit.py" "$I/test_node_loss.py")
mapfile -t serial_files < <(grep -l "pytest.mark.serial" "$I"/test_*.py | grep -vxF -e "${pair[0]}" -e "${pair[1]}"
                            grep -l "pytest.mark.serial" "${pair[@]}")
rest_files=()
for f in "$I"/test_*.py; do
  case " ${SERIAL_TOO[*]} ${SHARED_RAY_LAST[*]} " in *" $f "*) ;; *) rest_files+=("$f") ;; esac
done
for f in "${SHARED_RAY_LAST[@]}"; do
  case " ${SERIAL_TOO[*]} " in *" $f "*) ;; *) [ -e "$f" ] && rest_files+=("$f") ;; esac
done
logs=$(mktemp -d)
# separate temp roots: neither process's clean-up may touch the other's live directories
"${PYTEST[@]}" --durations=15 --basetemp="$logs/rest" -m "not serial" tests/unit "${rest_files[@]}" \
  >"$logs/rest.log" 2>&1 &
rest=$!
set +e
{
  "${PYTEST[@]}" --durations=15 --basetemp="$logs/serial" -m serial "${serial_files[@]}"
  serial_rc=$?
  "${PYTEST[@]}" --durations=10 --basetemp="$logs/serial-too" -m "not serial" "${SERIAL_TOO[@]}"
  too_rc=$?
  exit $(( serial_rc || too_rc ))
} 2>&1 | tee "$logs/serial.log"
serial_rc=${PIPESTATUS[0]}
wait "$rest"
rest_rc=$?
set -e
echo "=============== tests/unit and the other integration tests (-m 'not serial') ==============="
cat "$logs/rest.log"
echo "serial tests, then ${#SERIAL_TOO[@]} heavy files: exit $serial_rc; the others: exit $rest_rc"
rm -rf "$logs"
[ "$rest_rc" -eq 0 ] && [ "$serial_rc" -eq 0 ]
