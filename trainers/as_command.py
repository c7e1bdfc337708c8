"""Run any trial-contract function as a `trainer.backend: command` program.

    python -m trainers.as_command MODULE:FUNCTION [--config CONFIG.json]

reads the config document (`--config`, else $SCALESWEEP_TRIAL_CONFIG), calls
`FUNCTION(TrialConfig, report)` and writes each report as a JSON line to the document's
`metrics_file` (rank 0 only). With WORLD_SIZE > 1 (the command backend's torchrun-style
variables) it first joins the process group (gloo, or NCCL on CUDA) from them. SIGTERM ends the
function at once (SystemExit), as the command backend's stop expects. The built-in trainer as a
command: `trainer: {backend: command, command: "{python} -m trainers.as_command
trainers.deepspeed_trainer:train --config {config}"}` (benchmarks.own_trainer compares it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path

from trainers.contract import TrialConfig
from trainers.entrypoint import load_entrypoint


def _json_number(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("entrypoint", help="MODULE:FUNCTION or path/file.py:FUNCTION taking (config, report)")
    ap.add_argument("--config", default=os.environ.get("SCALESWEEP_TRIAL_CONFIG"))
    args = ap.parse_args(argv)
    if not args.config:
        ap.error("--config (or $SCALESWEEP_TRIAL_CONFIG) is required")
    doc = json.loads(Path(args.config).read_text())
    config = TrialConfig.from_dict(doc)
    fn = load_entrypoint(args.entrypoint, os.getcwd())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    created = False
    if world > 1:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            created = True
    try:
        with open(doc["metrics_file"], "a") as out:
            def report(metrics: dict) -> None:
                if rank == 0:
                    out.write(json.dumps({k: _json_number(v) for k, v in metrics.items()}) + "\n")
                    out.flush()

            fn(config, report)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


if __name__ == "__main__":
    main()
