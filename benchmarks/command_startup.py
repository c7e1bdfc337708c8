"""Start-up of one `trainer.backend: command` trial program, before and after the DeepSpeed import cut.

    python -m benchmarks.command_startup [--repeats 5] [--out results/command-startup.json]

The program is the built-in trainer as a command (`{python} -m trainers.as_command
trainers.deepspeed_trainer:train --config CONFIG`) on a tiny trial (N = 20K, 4 steps of 1,024
tokens, one evaluation): what a command trial pays per trial that the built-in trainer, whose Ray
actor is reused, pays once. Two arms, alternated in one run:

- before: the same program, but DeepSpeed is imported first as a plain `import deepspeed` (which
  also imports MLflow through DeepSpeed's autotuner): the cost before the cut;
- after:  the program as it is (`deepspeed_trainer.import_deepspeed` hides MLflow from that import).

Per arm, the median and spread of: seconds from launch to the first report line, and to exit. Also
the bare imports (`import torch`; `import deepspeed` plain and through `import_deepspeed`), each in
a fresh interpreter. A warm-up run first builds the corpus cache. Noisy on a shared machine: the
arms are interleaved so load hits both alike.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAIN = ("import deepspeed, runpy, sys; sys.argv = ['as_command', *sys.argv[1:]]; "
         "runpy.run_module('trainers.as_command', run_name='__main__')")
ARMS = {
    "before": [sys.executable, "-c", PLAIN],
    "after": [sys.executable, "-m", "trainers.as_command"],
}
IMPORTS = {
    "import torch": "import torch",
    "import deepspeed (plain)": "import deepspeed",
    "import deepspeed (import_deepspeed)": "from trainers.deepspeed_trainer import import_deepspeed; import_deepspeed()",
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _config(root: Path, k: int, cache: str) -> Path:
    from trainers.contract import Schedule, TrialConfig

    cfg = TrialConfig(trial_id=f"t{k}", n_params=20_000, tokens=4 * 1024, lr=3e-3, batch_tokens=1024, seq_len=64,
                      schedule=Schedule(kind="wsd", warmup=0.25, decay=0.25), eval_every=4, eval_tokens=1024,
                      data_cache=cache)
    run = root / f"run{k}"
    run.mkdir()
    doc = {**cfg.document(), "metrics_file": str(run / "metrics.jsonl")}
    (run / "config.json").write_text(json.dumps(doc))
    return run


def _launch(argv: list[str], run: Path) -> dict[str, float]:
    metrics = run / "metrics.jsonl"
    t0 = time.monotonic()
    proc = subprocess.Popen([*argv, "trainers.deepspeed_trainer:train", "--config", str(run / "config.json")],
                            cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while proc.poll() is None:
        if first is None and metrics.exists() and metrics.read_text().strip():
            first = time.monotonic() - t0
        time.sleep(0.01)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    if first is None:
        first = wall  # the report landed between the last poll and the exit
    return {"first_report_s": first, "exit_s": wall}


def _import_time(stmt: str) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", stmt], cwd=REPO, env=_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="results/command-startup.json")
    args = ap.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    imports: dict[str, list[float]] = {name: [] for name in IMPORTS}
    with tempfile.TemporaryDirectory(prefix="bench-cmd-") as tmp:
        root, cache = Path(tmp), str(Path(tmp) / "cache")
        k = 0
        _launch(ARMS["after"], _config(root, k, cache))  # warm-up: the corpus cache, the page cache
        for _ in range(args.repeats):
            for arm, arm_argv in ARMS.items():
                k += 1
                runs[arm].append(_launch(arm_argv, _config(root, k, cache)))
            for name, stmt in IMPORTS.items():
                imports[name].append(_import_time(stmt))
    doc = {"args": vars(args), "python": sys.version.split()[0],
           "programs": {arm: {key: _stats([r[key] for r in rs]) | {"all": [r[key] for r in rs]}
                              for key in ("first_report_s", "exit_s")} for arm, rs in runs.items()},
           "imports": {name: _stats(xs) | {"all": xs} for name, xs in imports.items()}}
    print(f"{'command program':34} {'first report s (min-max)':>26} {'exit s (min-max)':>22}")
    for arm, r in doc["programs"].items():
        f, e = r["first_report_s"], r["exit_s"]
        print(f"{arm:34} {f['median']:>9.2f} ({f['min']:.2f}-{f['max']:.2f}) {e['median']:>11.2f} "
              f"({e['min']:.2f}-{e['max']:.2f})")
    print(f"{'fresh interpreter':34} {'seconds (min-max)':>26}")
    for name, r in doc["imports"].items():
        print(f"{name:34} {r['median']:>9.2f} ({r['min']:.2f}-{r['max']:.2f})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {out}")
    return doc


if __name__ == "__main__":
    main()
