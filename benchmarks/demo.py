"""The demo sweep's useful-work fraction, beside the trainer's tokens/s vs a plain PyTorch loop.

    python -m benchmarks.demo [--spec examples/tiny.yaml] [--json OUT]

Runs the spec through the real controller (Ray Tune + DeepSpeed + MLflow) into a fresh
directory, then measures the trainer against a plain PyTorch loop on the same model sizes,
all in one run. Useful-work fraction = seconds inside training steps (summed over trials, as
reported by the trainer) / (wall time of the sweep × concurrent trial slots): the share of
the CPU time the sweep could have spent training that it did spend training.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from orchestrator.app.cli.output import make_console
from rich.table import Table


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print a table and return (and optionally write) the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(Path(__file__).resolve().parents[1] / "examples" / "tiny.yaml"))
    ap.add_argument("--json", dest="json_out", default=None)
    ap.add_argument("--throughput-steps", type=int, default=24)
    args = ap.parse_args(argv)

    import ray

    from benchmarks import trainer_throughput
    from orchestrator.app.session import run_sweep
    from orchestrator.config.spec import load_spec
    from orchestrator.app.sweep_summary import useful_work_fraction

    spec = load_spec(args.spec)
    out_dir = Path(tempfile.mkdtemp(prefix="scalesweep-demo-bench-"))
    spec = spec.model_copy(update={"output_dir": str(out_dir / spec.name)})
    t0 = time.monotonic()
    outcome = run_sweep(spec, args.spec, show_progress=False)
    wall = time.monotonic() - t0
    slots = outcome.slots  # the sweep's concurrent trial slots on this Ray cluster, as its summary counted them
    fraction = useful_work_fraction(outcome.train_s, wall, slots)
    ray.shutdown()
    sizes = ",".join(str(n) for n in spec.model.sizes())
    tp = trainer_throughput.main(["--sizes", sizes, "--steps", str(args.throughput_steps),
                                  "--seq-len", str(spec.model.seq_len),
                                  "--batch-tokens", str(spec.batches()[0])])
    doc = {
        "spec": args.spec,
        "sweep_wall_s": wall,
        "train_s": outcome.train_s,
        "concurrent_slots": slots,
        "useful_work_fraction": math.nan if fraction is None else fraction,
        "trials": outcome.statuses,
        "throughput": tp,
    }
    table = Table(title="demo sweep: useful work")
    for col in ("wall s", "train s (sum)", "slots", "useful-work fraction"):
        table.add_column(col, justify="right")
    table.add_row(f"{wall:.0f}", f"{outcome.train_s:.0f}", str(slots), f"{doc['useful_work_fraction']:.2f}")
    make_console().print(table)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=2, default=str))
    return doc


if __name__ == "__main__":
    main()
