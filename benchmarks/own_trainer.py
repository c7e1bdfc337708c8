"""The built-in trainer vs the same trainer through `backend: python` and `backend: command`, side by side.

    python -m benchmarks.own_trainer [--n-params 80000] [--steps 64] [--trials 4] [--cpus 2]
        [--out results/own-trainer.json]

Each arm runs the same small sweep (one size, `--trials` learning rates, same D, batch, schedule,
evaluation; checkpoints and pruning off) through the real controller on a fresh local Ray
cluster, one after the other in this process:

- builtin: `trainer.backend: deepspeed`;
- python:  `backend: python`, entrypoint `trainers.deepspeed_trainer:train` (the same function);
- command: `backend: command`, `{python} -m trainers.as_command trainers.deepspeed_trainer:train`
  (the same function as a program: a fresh process per trial, its reports through the file);
- command-warm: the same program with `trainer.warm_start: [trainers.deepspeed_trainer:preload,
  trainers.deepspeed_trainer:preload_builtin_corpus]`: forked per trial from a zygote that the
  trial process (a reused Ray actor) started once (trainers.warm_start).

So the model, data and optimizer are identical and only the backend differs. Per arm: training
tokens/s (all trials' tokens over their time inside training steps, as reported), per-trial
start-up (first report's wall time − the trial's start event − its time in training steps: process
start, imports, data, model and engine set-up, the first evaluation), and the sweep's wall time.
A slot's first trial pays a cold Ray actor (and, warm, the zygote's imports); the start-up of the
later trials, which reuse the actor, is reported apart (`later`: trials started after some trial
had ended). Ratios are against builtin, measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

ARMS = ("builtin", "python", "command", "command-warm")
COMMAND = "{python} -m trainers.as_command trainers.deepspeed_trainer:train --config {config}"
WARM = ["trainers.deepspeed_trainer:preload", "trainers.deepspeed_trainer:preload_builtin_corpus"]


def _spec(arm: str, args, root: Path) -> dict:
    trainer = {"builtin": {"backend": "deepspeed"},
               "python": {"backend": "python", "entrypoint": "trainers.deepspeed_trainer:train"},
               "command": {"backend": "command", "command": COMMAND},
               "command-warm": {"backend": "command", "command": COMMAND, "warm_start": WARM}}[arm]
    batch = args.batch_tokens
    return {"name": f"bench-{arm}", "trainer": trainer,
            "model": {"n_params": [args.n_params], "seq_len": args.seq_len},
            "tokens": {"values": [args.steps * batch]},
            "learning_rates": {"min": 1e-3, "max": 4e-3, "count": args.trials} if args.trials > 1 else [2e-3],
            "batch_sizes": [batch], "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.2},
            "eval": {"every": args.eval_every, "tokens": 4096}, "checkpoints": {"enabled": False},
            "fit": {"bootstrap": 0}, "output_dir": str(root / arm)}


def _measure(sweep_dir: Path) -> dict:
    import pyarrow.parquet as pq

    from orchestrator.io.store import ObservationStore

    store = ObservationStore(sweep_dir)
    events = []
    for part in sorted((sweep_dir / "store" / "trials").glob("part-*.parquet")):
        events.extend(pq.read_table(part).to_pylist())
    started, ended = {}, {}
    for e in sorted(events, key=lambda e: e["seq"]):
        if e["status"] == "running":
            started.setdefault(e["trial_id"], e["time"])
        else:  # finished, stopped, failed, ...
            ended.setdefault(e["trial_id"], e["time"])
    rows = store.observations().to_pylist()
    first, last = {}, {}
    for r in rows:  # sorted by trial and step
        first.setdefault(r["trial_id"], r)
        last[r["trial_id"]] = r
    startup = {t: first[t]["wall_time"] - started[t] - first[t]["step_time_s"] for t in first if t in started}
    # a later trial of its slot: started once some trial had ended, so it reuses that trial's actor
    later = [s for t, s in startup.items() if any(e <= started[t] for e in ended.values())]
    startup = list(startup.values())
    tokens = sum(r["tokens"] for r in last.values())
    step_s = sum(r["step_time_s"] for r in last.values())
    statuses = [rec["status"] for rec in store.trials().values()]
    return {"trials": len(last), "finished": statuses.count("finished"), "tokens_per_s": tokens / step_s,
            "startup_s": startup, "startup_median_s": statistics.median(startup), "startup_later_s": later,
            "startup_later_median_s": statistics.median(later) if later else float("nan"),
            "final_eval_loss": {t: r["eval_loss"] for t, r in last.items()}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-params", type=int, default=80000)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--eval-every", type=int, default=16)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--out", default="results/own-trainer.json")
    args = ap.parse_args(argv)
    import ray

    from orchestrator.app.session import run_sweep
    from orchestrator.config.spec import parse_spec

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-own-") as tmp:
        for arm in args.arms.split(","):
            spec = parse_spec(_spec(arm, args, Path(tmp)))
            ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
            try:
                t0 = time.monotonic()
                outcome = run_sweep(spec, None, show_progress=False)
                wall = time.monotonic() - t0
            finally:
                ray.shutdown()
            results[arm] = {**_measure(outcome.sweep_dir), "wall_s": wall}
    base = results.get("builtin")
    # start-up: the first trial of each concurrent slot pays the cold start (a new Ray actor: imports,
    # corpus); later ones reuse the actor (builtin, python) -- a command starts a new program every time
    print(f"{'arm':12} {'trials':>6} {'tokens/s':>10} {'vs builtin':>10} {'start-up med s':>15} "
          f"{'vs builtin':>11} {'min / max s':>14} {'later med s':>12} {'vs builtin':>11} {'sweep wall s':>13}")
    for arm, r in results.items():
        ratio = r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
        dstart = r["startup_median_s"] - base["startup_median_s"] if base else float("nan")
        dlater = r["startup_later_median_s"] - base["startup_later_median_s"] if base else float("nan")
        r["tokens_per_s_ratio"], r["startup_delta_s"], r["startup_later_delta_s"] = ratio, dstart, dlater
        print(f"{arm:12} {r['finished']:>3}/{r['trials']:<2} {r['tokens_per_s']:>10.0f} {ratio:>10.3f} "
              f"{r['startup_median_s']:>15.2f} {dstart:>+11.2f} "
              f"{min(r['startup_s']):>6.1f} / {max(r['startup_s']):<6.1f} {r['startup_later_median_s']:>12.2f} "
              f"{dlater:>+11.2f} {r['wall_s']:>13.1f}")
    doc = {"args": vars(args), "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {out}")
    return doc


if __name__ == "__main__":
    main()
