"""Per-trial start-up of the built-in trainer vs the same trainer as a `command` program, cold and warm.

    python -m benchmarks.command_startup [--repeats 3] [--out results/command-startup.json]

The trial is tiny (N = 20K, 8 steps of 1,024 tokens, an evaluation every 4 steps: the first report
is at step 4), so what is measured is start-up. Three arms, interleaved in one run (same
interpreter, venv and corpus cache), each trial timed from its launch to its first report:

- builtin: `trainers.deepspeed_trainer.train` called in this process, as in the built-in trainer's
  Ray actor, which Tune reuses for the next trial of its slot (reuse_actors): the first call of the
  process pays the imports and the corpus read, later calls do not;
- command: `trainer.backend: command`, `{python} -m trainers.as_command
  trainers.deepspeed_trainer:train --config {config}` through `trainers.command.run_command` (the
  trial's runner: its report reaches the callback through the runner's tailer), a fresh process
  per trial (the default);
- command-warm: the same with `trainer.warm_start: [trainers.deepspeed_trainer:preload,
  trainers.deepspeed_trainer:preload_builtin_corpus]` (trainers.warm_start): the first trial of the
  process starts the zygote (its imports), later ones are forked from it.

Per arm: the first trial of the process (a slot's cold start) and the median (range) of the later
ones: seconds to the first report through the runner, to the end; the tailer's share (first
report's arrival − the metrics file's mtime). Then where a trial's start-up goes, by phase, in a
fresh process, forked warm, and in-process after the first call (the same trainer with its set-up
steps timed: `--phases-probe` is that program): interpreter, imports, data, model,
`deepspeed.initialize`, first evaluated report. Noisy on a shared machine: the arms are
interleaved so load hits them alike; the load average is recorded.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = ("builtin", "command", "command-warm")
PROGRAM = ("{python}", "-m", "trainers.as_command", "trainers.deepspeed_trainer:train", "--config", "{config}")
WARM = ("trainers.deepspeed_trainer:preload", "trainers.deepspeed_trainer:preload_builtin_corpus")
PHASES = ("interpreter", "import torch", "import deepspeed", "data", "model", "deepspeed.initialize", "first report")


def _config(k: int, cache: str):
    from trainers.contract import Schedule, TrialConfig

    return TrialConfig(trial_id=f"t{k}", n_params=20_000, tokens=8 * 1024, lr=3e-3, batch_tokens=1024, seq_len=64,
                       schedule=Schedule(kind="wsd", warmup=0.25, decay=0.25), eval_every=4, eval_tokens=1024,
                       data_cache=cache, threads=1)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def _builtin(cfg) -> dict[str, float]:
    from trainers.deepspeed_trainer import train

    t0, first = time.monotonic(), []
    train(cfg, lambda r: first.append(time.monotonic() - t0) if not first else None)
    return {"first_report_s": first[0], "exit_s": time.monotonic() - t0}


def _command(cfg, run_dir: Path, warm: tuple[str, ...]) -> dict[str, float]:
    from trainers.command import CommandSettings, run_command

    settings = CommandSettings(command=PROGRAM, cwd=str(REPO), env=(("PYTHONPATH", _env()["PYTHONPATH"]),), warm_start=warm,
                               grace_s=5.0, poll_s=0.05)
    t0, seen = time.monotonic(), {}

    def report(r):
        if not seen:
            seen["first_report_s"] = time.monotonic() - t0
            metrics = next(run_dir.glob("attempt-*/metrics.jsonl"))
            if len(metrics.read_text().splitlines()) == 1:  # the tailer's delay: arrival - the line's write
                seen["tailer_s"] = time.time() - metrics.stat().st_mtime

    info = run_command(cfg, report, settings, run_dir, n_params=cfg.n_params)
    if info["returncode"] != 0:
        raise RuntimeError(f"the command failed: {info}")
    if warm and not info.get("warm_start", {}).get("used"):
        raise RuntimeError(f"the warm start was not used: {info.get('warm_start')}")
    return {**seen, "exit_s": time.monotonic() - t0}


# ---------------------------------------------------------------- phases
def _probe(t_launch: float, cache: str) -> dict[str, float]:
    """The built-in trainer's set-up steps, each stamped (seconds since `t_launch`, wall clock)."""
    marks = {"interpreter": time.time() - t_launch}

    def mark(name: str) -> None:
        marks.setdefault(name, time.time() - t_launch)

    importlib.import_module("torch")
    mark("import torch")
    import trainers.deepspeed_trainer as dt

    ds = dt.import_deepspeed()
    mark("import deepspeed")
    wrapped = {(dt, "load_data"): "data", (dt, "build_model"): "model", (ds, "initialize"): "deepspeed.initialize"}
    saved = {key: getattr(*key) for key in wrapped}

    def stamp(fn, name):
        def inner(*a, **k):
            out = fn(*a, **k)
            mark(name)
            return out
        return inner

    for (obj, attr), name in wrapped.items():
        setattr(obj, attr, stamp(saved[(obj, attr)], name))
    try:
        dt.train(_config(0, cache), lambda r: mark("first report"))
    finally:
        for (obj, attr), fn in saved.items():
            setattr(obj, attr, fn)
    return marks


def _phase_durations(marks: dict[str, float]) -> dict[str, float]:
    out, prev = {}, 0.0
    for name in PHASES:
        out[name] = marks[name] - prev
        prev = marks[name]
    out["total"] = prev
    return out


def _phases(root: Path, cache: str) -> dict[str, dict[str, float]]:
    import subprocess

    from trainers import warm_start

    res = {}
    argv = [sys.executable, "-m", "benchmarks.command_startup", "--phases-probe", cache]
    out = root / "phases-fresh.json"
    t = time.time()
    subprocess.run([*argv, str(out)], cwd=REPO, env={**_env(), "T_LAUNCH": repr(t)}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res["fresh process"] = _phase_durations(json.loads(out.read_text()))
    z = warm_start.zygote(sys.executable, WARM, str(REPO), _env())
    assert z.wait_ready(600.0), z.refused
    out = root / "phases-warm.json"
    t = time.time()
    p = z.spawn([*argv, str(out)], str(REPO), {**_env(), "T_LAUNCH": repr(t)}, os.devnull, str(root / "probe.err"))
    if p.wait() != 0:
        raise RuntimeError((root / "probe.err").read_text()[-2000:])
    res["forked warm"] = _phase_durations(json.loads(out.read_text()))
    _probe(time.time(), cache)  # the process's first trial (if the builtin arm has not run yet)
    res["in-process, later trial"] = _phase_durations(_probe(time.time(), cache))
    return res


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)} if xs else {}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="later trials per arm (after each arm's first)")
    ap.add_argument("--out", default="results/command-startup.json")
    ap.add_argument("--phases-probe", nargs=2, metavar=("CACHE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phases_probe:  # the probe program, fresh or forked: stamps relative to $T_LAUNCH
        cache, out = args.phases_probe
        Path(out).write_text(json.dumps(_probe(float(os.environ["T_LAUNCH"]), cache)))
        return {}
    load = [os.getloadavg()[0]]
    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        root, cache = Path(tmp), str(Path(tmp) / "cache")
        from trainers.corpus import builtin_corpus_dir

        os.environ["SCALESWEEP_CACHE"] = cache  # as the controller passes it: preload_builtin_corpus reads it
        builtin_corpus_dir(cache)  # built once, before any arm
        k = 0
        for _ in range(1 + args.repeats):
            for arm in ARMS:
                k += 1
                cfg = _config(k, cache)
                runs[arm].append(_builtin(cfg) if arm == "builtin" else
                                 _command(cfg, root / f"run{k}", WARM if arm == "command-warm" else ()))
        phases = _phases(root, cache)
    load.append(os.getloadavg()[0])
    keys = ("first_report_s", "exit_s", "tailer_s")
    doc = {"args": vars(args), "python": sys.version.split()[0], "load_average": load,
           "arms": {arm: {"first_trial": rs[0], **{k: _stats([r[k] for r in rs[1:] if k in r]) | {
               "all": [r.get(k) for r in rs[1:]]} for k in keys}} for arm, rs in runs.items()},
           "phases": phases}
    base = doc["arms"]["builtin"]["first_report_s"]["median"]

    def cell(st: dict[str, float]) -> str:
        return f"{st['median']:>6.2f} ({st['min']:.2f}-{st['max']:.2f})" if 'median' in st else "-"

    print(f"load average {load[0]:.1f} -> {load[1]:.1f}; later trials: median (range) of {args.repeats}")
    print(f"{'arm':14} {'1st trial: 1st report':>22} {'later: 1st report s':>22} {'vs builtin':>11} "
          f"{'later: end s':>20} {'tailer s':>20}")
    for arm, r in doc["arms"].items():
        r["startup_delta_s"] = r["first_report_s"]["median"] - base
        print(f"{arm:14} {r['first_trial']['first_report_s']:>22.2f} {cell(r['first_report_s']):>22} "
              f"{r['startup_delta_s']:>+11.2f} {cell(r['exit_s']):>20} {cell(r['tailer_s']):>20}")
    print(f"\n{'phase (s)':22}" + "".join(f"{name:>24}" for name in phases))
    for ph in (*PHASES, "total"):
        print(f"{ph:22}" + "".join(f"{p[ph]:>24.2f}" for p in phases.values()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {out}")
    return doc


if __name__ == "__main__":
    main()
