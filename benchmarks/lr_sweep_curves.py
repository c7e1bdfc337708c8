"""Real loss curves of a small learning-rate grid (the pruner's paired rule is checked on them).

    python -m benchmarks.lr_sweep_curves [--out FILE] [--sizes 20000 80000] [--tokens 1200000] [--eval-every 10]
                                         [--seeds 0 1] [--lrs 0.001 0.01 ...]

Trains GPT-style models with the plain PyTorch loop (``trainers.plain_loop``, CPU, one thread,
the built-in corpus) for every size × lr (√10 apart, the pruning benchmark's grid) × schedule
(WSD, cosine), plus a second seed at lr 1e-2 (same config, different seed: how far two runs that
should tie drift apart), and writes every report as one CSV row (size, schedule, lr, seed, step,
total_steps, batch_tokens, train_loss, eval_loss). ``--seeds S ...`` runs every config at each
seed instead (the recorded sweeps of issue 13: two seeds of every config); ``--lrs`` picks the
grid. Diverged runs keep their rows up to the blow-up (NaN losses). The defaults took ~10 min on
one loaded core; sizes 40000 160000 at 2.4M tokens ~70 min; the two-seed sweep (10000 and 30000
at 600,000 tokens, 5 lrs) ~40 min in two processes at ``nice -n 19`` on the loaded 2 cores; 60000 at
1.2M tokens and 120000 at 1.6M (5 lrs, 2 seeds, ``--eval-every 10``) 39 and 59 min at ``nice -n 5``.
``tests/data/lrsweep/curves.csv`` is two runs' rows concatenated, ``curves-s2-10k-30k.csv`` and
``curves-s2-60k-120k.csv`` another two each (tests/data/SOURCES.md); the default ``--out`` is
``results/lrsweep-curves.csv``.
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

from trainers.contract import Schedule, TrialConfig

LRS = (1e-3, 10**-2.5, 1e-2, 10**-1.5, 1e-1, 10**-0.5)
FIELDS = ("n_params", "schedule", "lr", "seed", "step", "total_steps", "batch_tokens", "train_loss", "eval_loss")


def main(argv: list[str] | None = None) -> None:
    from trainers.plain_loop import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Not tests/data/lrsweep/curves.csv: that file is two runs concatenated (see its SOURCES entry),
    # and a rerun with the defaults would silently replace it with half of it.
    ap.add_argument("--out", default="results/lrsweep-curves.csv")
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 80000])
    ap.add_argument("--tokens", type=int, default=1_200_000)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--cache", default=None, help="corpus shard cache directory")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="every config at each of these seeds (default: seed 0, plus seed 1 at lr 1e-2)")
    ap.add_argument("--lrs", type=float, nargs="+", default=list(LRS), help="peak learning rates")
    a = ap.parse_args(argv)
    if a.seeds is None:
        runs = [(N, kind, lr, 0) for N in a.sizes for kind in ("wsd", "cosine") for lr in a.lrs]
        runs += [(N, kind, 1e-2, 1) for N in a.sizes for kind in ("wsd", "cosine")]
    else:  # seed innermost: a recording cut short still holds whole cells of its first sizes, every seed
        runs = [(N, kind, lr, s) for N in a.sizes for kind in ("wsd", "cosine") for lr in a.lrs for s in a.seeds]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(FIELDS)
        for N, kind, lr, seed in runs:
            cfg = TrialConfig(trial_id=f"N{N}-{kind}-lr{lr:.3g}-s{seed}", n_params=N, tokens=a.tokens, lr=lr,
                              batch_tokens=a.batch, schedule=Schedule(kind=kind), eval_every=a.eval_every,
                              eval_tokens=8192, seed=seed, data_cache=a.cache)
            reps: list[dict] = []
            t0 = time.perf_counter()
            train(cfg, reps.append)
            T = math.ceil(a.tokens / a.batch)
            for r in reps:
                w.writerow((N, kind, f"{lr:.6g}", seed, int(r["step"]), T, a.batch, f"{r['train_loss']:.6g}",
                            f"{r['eval_loss']:.6g}"))
            fh.flush()
            print(f"{cfg.trial_id}: {len(reps)} reports, final eval {reps[-1]['eval_loss']:.4f}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
