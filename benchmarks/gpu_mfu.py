"""GPU throughput and model-FLOPs utilisation (MFU) of our DeepSpeed trainer, beside a plain loop.

    python -m benchmarks.gpu_mfu [--sizes 10e6,30e6,100e6,300e6] [--steps 20] [--seq-len 1024]
        [--batch-tokens 131072] [--micro-tokens 16384] [--zero-stages 1] [--peak-tflops auto]
        [--family gpt|gpt-aligned|llama|llama-tied[,...]] [--json OUT]

Needs a CUDA GPU; without one it prints why and exits 0 having run nothing (its JSON, if asked
for, says `"skipped"`). For each family (a comma list runs them side by side in one process,
e.g. `--family llama,gpt-aligned`) and model size it trains the same model with our DeepSpeed trainer
(bf16, ZeRO, NCCL process group) and with a plain PyTorch loop (bf16 autocast, fp32 weights),
alternating which goes first. tokens/s is the trainer's own figure over the steps after the
first evaluation (so cuBLAS/cuDNN warm-up is not counted). MFU = tokens/s × training FLOPs per
token / the GPU's dense bf16 peak, with FLOPs counted two ways: 6·N (N non-embedding, the
sweep's compute convention) and Chinchilla's exact count (attention and embeddings included).
"""
from __future__ import annotations

import argparse
import json
import math
import time

# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}


def peak_tflops(name: str) -> float:
    """The dense bf16 peak for a CUDA device name, e.g. 'NVIDIA H100 80GB HBM3'."""
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name.upper():
            return value
    raise ValueError(f"no bf16 peak known for {name!r}; pass --peak-tflops")


def _run(trainer, cfg) -> dict[str, float]:
    import torch

    reports: list[dict[str, float]] = []
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    summary = trainer.train(cfg, reports.append)
    wall = time.perf_counter() - t0
    return {"tokens_per_s": reports[-1]["tokens_per_s"], "wall_s": wall,
            "final_eval_loss": summary.final_eval_loss, "steps": summary.steps,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the table and return the results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10e6,30e6,100e6,300e6")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-tokens", type=int, default=131072)
    ap.add_argument("--micro-tokens", type=int, default=16384, help="tokens per micro-batch")
    ap.add_argument("--zero-stages", default="1", help="DeepSpeed ZeRO stages to run, e.g. 1,2,3")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--peak-tflops", default="auto")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain-loop baseline")
    ap.add_argument("--family", default="gpt", help="model families, comma-separated: gpt (default), "
                    "gpt-aligned (widths in multiples of 64, head_dim 64), llama, llama-tied")
    ap.add_argument("--data-cache", default=None)
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args(argv)

    import torch

    from trainers.model import FAMILIES

    families = [f.strip() for f in args.family.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise SystemExit(f"--family: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(FAMILIES)}")
    if not torch.cuda.is_available():
        out = {"skipped": "no CUDA GPU here: gpu_mfu measures GPU throughput only", "args": vars(args)}
        print(f"gpu_mfu: skipped — {out['skipped']}")
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(out, f, indent=2)
        return out
    import deepspeed  # noqa: F401  — pay the import once, outside the timed calls

    from trainers import deepspeed_trainer, plain_loop
    from trainers.contract import Schedule, TrialConfig
    from trainers.flops import flops_per_token
    from trainers.model import count_params, shape_for

    name = torch.cuda.get_device_name()
    peak = (peak_tflops(name) if args.peak_tflops == "auto" else float(args.peak_tflops)) * 1e12
    stages = [int(s) for s in args.zero_stages.split(",")]
    # Evaluate (and report) once after a quarter of the steps: the last report's tokens/s
    # then covers only warm steps.
    eval_every = max(1, args.steps // 4)
    rows = []
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    for i, (family, n) in enumerate((f, n) for f in families for n in sizes):
        shape = shape_for(n, family)
        common = dict(n_params=n, tokens=args.steps * args.batch_tokens, lr=args.lr, batch_tokens=args.batch_tokens,
                      seq_len=args.seq_len, schedule=Schedule(kind="constant", warmup=0.1), eval_every=eval_every,
                      eval_tokens=4 * args.seq_len, micro_batch=max(1, args.micro_tokens // args.seq_len),
                      precision="bf16", data_cache=args.data_cache, family=family)
        runs = [(f"deepspeed-z{z}", deepspeed_trainer,
                 TrialConfig(trial_id=f"mfu-{family}-{n}-z{z}", zero_stage=z, **common)) for z in stages]
        if not args.no_plain:
            runs.append(("plain", plain_loop, TrialConfig(trial_id=f"mfu-{family}-{n}-plain", **common)))
        if i % 2:
            runs.reverse()
        f6 = flops_per_token(shape, args.seq_len)
        fx = flops_per_token(shape, args.seq_len, exact=True)
        row = {"family": family, "n_target": n, "n_params": count_params(shape, max_seq_len=args.seq_len).non_embedding,
               "shape": shape.to_dict(), "flops_per_token_6n": f6, "flops_per_token_exact": fx}
        for label, trainer, cfg in runs:
            res = _run(trainer, cfg)
            res["mfu_6n"] = res["tokens_per_s"] * f6 / peak
            res["mfu_exact"] = res["tokens_per_s"] * fx / peak
            row[label] = res
            print(f"  {family} N={row['n_params']:.3g} {label}: {res['tokens_per_s']:.0f} tok/s, MFU {res['mfu_exact']:.1%} "
                  f"(6N: {res['mfu_6n']:.1%}), peak mem {res['peak_mem_gib']:.1f} GiB, loss {res['final_eval_loss']:.3f}",
                  flush=True)
        rows.append(row)

    labels = [f"deepspeed-z{z}" for z in stages] + ([] if args.no_plain else ["plain"])
    print(f"\n{name}, bf16 peak {peak / 1e12:.0f} TFLOP/s; seq_len={args.seq_len} batch_tokens={args.batch_tokens} "
          f"micro_tokens={args.micro_tokens} steps={args.steps}")
    print(f"{'family':>11} {'N':>10} {'shape (d,L,H)':>14} " + " ".join(f"{lab + ' tok/s':>18} {'MFU':>6}" for lab in labels)
          + ("  DS/plain" if not args.no_plain else ""))
    for r in rows:
        s = r["shape"]
        line = f"{r['family']:>11} {r['n_params']:>10.3g} {s['d_model']:>6},{s['n_layers']},{s['n_heads']:<4} "
        line += " ".join(f"{r[lab]['tokens_per_s']:>18.0f} {r[lab]['mfu_exact']:>6.1%}" for lab in labels)
        if not args.no_plain:
            line += f"  {r[labels[0]]['tokens_per_s'] / r['plain']['tokens_per_s']:>8.3f}"
        print(line)
    import transformers

    versions = {"torch": torch.__version__, "deepspeed": deepspeed.__version__, "transformers": transformers.__version__,
                "cuda": torch.version.cuda}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    out = {"device": name, "peak_tflops": peak / 1e12, "versions": versions, "args": vars(args), "rows": rows}
    if not args.no_plain:
        ratios = [r[labels[0]]["tokens_per_s"] / r["plain"]["tokens_per_s"] for r in rows]
        out["geomean_ds_over_plain"] = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"geometric-mean DeepSpeed/plain throughput: {out['geomean_ds_over_plain']:.3f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
