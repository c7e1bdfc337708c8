"""Trainer throughput: our DeepSpeed trainer vs a plain PyTorch loop, side by side in one run.

    python -m benchmarks.trainer_throughput [--sizes 20000,80000,300000,1000000] [--steps 24]
        [--seq-len 128] [--batch-tokens 4096] [--threads 1] [--zero-stage 0] [--json OUT]

For each model size both trainers train the same model (same init, data, batch, AdamW,
clipping, lr schedule) for the same number of steps in this process, alternating which goes
first. tokens/s is training tokens over the time inside training steps (forward, backward,
optimizer step), as both trainers report it; `wall_s` is each call's wall time including model
and engine set-up and evaluations (DeepSpeed's one-time import is paid before timing).
"""
from __future__ import annotations

import argparse
import json
import math
import time

from trainers import deepspeed_trainer, plain_loop
from trainers.contract import Schedule, TrialConfig
from trainers.model import count_params, shape_for


def _run(trainer, cfg: TrialConfig) -> dict[str, float]:
    reports: list[dict[str, float]] = []
    t0 = time.perf_counter()
    summary = trainer.train(cfg, reports.append)
    wall = time.perf_counter() - t0
    last = reports[-1]
    return {"tokens_per_s": last["tokens"] / last["step_time_s"], "step_time_s": last["step_time_s"],
            "wall_s": wall, "final_eval_loss": summary.final_eval_loss}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the table and return the results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000,80000,300000,1000000")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--zero-stage", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--data-cache", default=None)
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args(argv)
    import deepspeed  # noqa: F401  — pay the import once, outside the timed calls

    rows = []
    for i, n in enumerate(int(s) for s in args.sizes.split(",")):
        shape = shape_for(n)
        cfg = TrialConfig(
            trial_id=f"bench-{n}", n_params=n, tokens=args.steps * args.batch_tokens, lr=args.lr,
            batch_tokens=args.batch_tokens, seq_len=args.seq_len, schedule=Schedule(kind="constant", warmup=0.1),
            eval_every=0, eval_tokens=4 * args.seq_len, zero_stage=args.zero_stage, threads=args.threads,
            data_cache=args.data_cache, precision="fp32")
        order = [("deepspeed", deepspeed_trainer), ("plain", plain_loop)]
        if i % 2:
            order.reverse()
        res = {name: _run(mod, cfg) for name, mod in order}
        ds, pl = res["deepspeed"], res["plain"]
        rows.append({
            "n_target": n, "n_params": count_params(shape).non_embedding, "shape": shape.to_dict(),
            "deepspeed": ds, "plain": pl, "ratio": ds["tokens_per_s"] / pl["tokens_per_s"],
        })
    print(f"steps={args.steps} seq_len={args.seq_len} batch_tokens={args.batch_tokens} "
          f"threads={args.threads} zero_stage={args.zero_stage}")
    print(f"{'N':>9} {'shape (d,L,H)':>14} {'DS tok/s':>10} {'plain tok/s':>12} {'DS/plain':>9} "
          f"{'DS wall s':>10} {'plain wall s':>13}")
    for r in rows:
        s = r["shape"]
        dlh = f"{s['d_model']},{s['n_layers']},{s['n_heads']}"
        print(f"{r['n_params']:>9} {dlh:>14} "
              f"{r['deepspeed']['tokens_per_s']:>10.0f} {r['plain']['tokens_per_s']:>12.0f} {r['ratio']:>9.3f} "
              f"{r['deepspeed']['wall_s']:>10.1f} {r['plain']['wall_s']:>13.1f}")
    out = {"args": vars(args), "rows": rows,
           "geomean_ratio": math.exp(sum(math.log(r["ratio"]) for r in rows) / len(rows))}
    print(f"geometric-mean DS/plain throughput ratio: {out['geomean_ratio']:.3f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
