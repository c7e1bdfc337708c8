#!/usr/bin/env bash
# Set everything up and run the demo sweep (examples/tiny.yaml) on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec scalesweep run examples/tiny.yaml "$@"
