"""Do the built-in tasks carry signal? Tiny GPTs trained on the built-in corpus, tasks at checkpoints.

    python -m benchmarks.task_signal [--sizes 20000 80000] [--tokens 1000000] [--evals 5] [--json OUT]

Each size is trained on CPU with AdamW (lr 3e-3, 5 % warm-up, cosine to 10 %; batch 2,048 tokens,
seq 64) and evaluated ``--evals`` times on the built-in ``cloze``, ``cloze_lines`` (chance 0.25,
200 items each) and ``next_line`` (chance 0, 100 items) tasks, built from the corpus's validation
split, plus the validation loss. Prints accuracy against tokens per size; writes JSON. Not a sweep: the loop is
the smallest that trains the trainers' model on the trainers' data (for the task check only).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from trainers.corpus import eval_windows, load_data, sample_batch
from trainers.model import build_model
from trainers.tasks import builtin_task, run_task

SEQ = 64
BATCH_TOKENS = 2048


def run(sizes=(20_000, 80_000), tokens=1_000_000, evals=5, seed=0) -> dict:
    """Train each size, evaluating the tasks at ``evals`` evenly spaced points."""
    torch.set_num_threads(1)
    data = load_data("builtin")
    tasks = {name: builtin_task(name, data.val, SEQ, n)
             for name, n in (("cloze", 200), ("cloze_lines", 200), ("next_line", 100))}
    windows = eval_windows(data.val, SEQ, 16_384)
    steps = tokens // BATCH_TOKENS
    at = set(np.linspace(0, steps, evals + 1).round().astype(int).tolist())
    rows = []
    for n in sizes:
        model = build_model(n, SEQ, data.vocab_size, seed=seed)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        warm = max(1, steps // 20)
        t0 = time.time()
        for step in range(steps + 1):
            if step in at:
                model.eval()
                with torch.no_grad():
                    val = float(np.mean([model(w[None, :-1], w[None, 1:]).item() for w in windows[:64]]))
                row = {"N": n, "step": step, "tokens": step * BATCH_TOKENS, "eval_loss": val}
                for name, task in tasks.items():
                    m = run_task(name, task, model)
                    row.update({f"{name}_acc": m["acc"], f"{name}_task_loss": m["task_loss"]})
                    if "acc_norm" in m:
                        row[f"{name}_acc_norm"] = m["acc_norm"]
                rows.append(row)
                print(f"N={n:>7d} tokens={row['tokens']:>9d} eval_loss={val:.3f} "
                      f"cloze={row['cloze_acc']:.3f} (norm {row['cloze_acc_norm']:.3f}) "
                      f"cloze_lines={row['cloze_lines_acc']:.3f} next_line={row['next_line_acc']:.3f} "
                      f"cloze task loss={row['cloze_task_loss']:.3f}  [{time.time() - t0:.0f}s]", flush=True)
                model.train()
            if step == steps:
                break
            lr = 3e-3 * (step + 1) / warm if step < warm else \
                3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm))))
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = sample_batch(data.train, SEQ, BATCH_TOKENS // SEQ, seed, 0, step)
            loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return {"seq_len": SEQ, "batch_tokens": BATCH_TOKENS, "chance": {"cloze": 0.25, "cloze_lines": 0.25, "next_line": 0.0},
            "rows": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 80_000])
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--evals", type=int, default=5)
    ap.add_argument("--json", type=Path, default=Path("results") / "task_signal.json")
    args = ap.parse_args(argv)
    out = run(tuple(args.sizes), args.tokens, args.evals)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
