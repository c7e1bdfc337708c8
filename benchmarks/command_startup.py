"""Start-up of one `trainer.backend: command` trial program, before and after the start-up cuts.

    python -m benchmarks.command_startup [--repeats 3] [--base main] [--out results/command-startup.json]

The program is the built-in trainer as a command (`{python} -m trainers.as_command
trainers.deepspeed_trainer:train --config CONFIG`) on a tiny trial (N = 20K, 4 steps of 1,024
tokens, one evaluation): what a command trial pays per trial that the built-in trainer, whose Ray
actor is reused, pays once. Two arms, alternated in one run, same interpreter and venv:

- before: `trainers/` as it is at git revision `--base` (extracted to a temporary directory, first
  on PYTHONPATH; the programs run in their own directory, so `python -m` does not put this
  checkout's `trainers/` first);
- after:  `trainers/` of this working tree (DeepSpeed imported without MLflow, no shared-memory
  op for a 1-rank trial, corpus shards read without pyarrow.dataset:
  `trainers.deepspeed_trainer.import_deepspeed`, `_no_shm_op`, `trainers.corpus._read_split`).

Per arm, the median and range of: wall seconds from launch to the first report line and to exit,
and CPU seconds (user + sys, the program and its children) to exit. Also bare imports, each in a fresh interpreter: `import torch`, `import deepspeed` (plain) and
`import_deepspeed()`. A warm-up run of each arm first (corpus cache, page cache, DeepSpeed's JIT op
cache). Noisy on a shared machine: the arms are interleaved so load hits both alike.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = ("before", "after")
IMPORTS = {
    "import torch": "import torch",
    "import deepspeed (plain)": "import deepspeed",
    "import deepspeed (import_deepspeed)": "from trainers.deepspeed_trainer import import_deepspeed; import_deepspeed()",
}


def _env(first: str | None = None) -> dict[str, str]:
    path = [p for p in (first, str(REPO), os.environ.get("PYTHONPATH")) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _extract(rev: str, dest: Path) -> None:
    """`trainers/` as it is at git revision `rev`, into dest/trainers."""
    archive = subprocess.run(["git", "archive", rev, "trainers"], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


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


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _launch(base: str | None, run: Path) -> dict[str, float]:
    metrics = run / "metrics.jsonl"
    cpu0 = _cpu_children()
    t0 = time.monotonic()
    argv = [sys.executable, "-m", "trainers.as_command", "trainers.deepspeed_trainer:train"]
    proc = subprocess.Popen([*argv, "--config", str(run / "config.json")],
                            cwd=run, env=_env(base), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
    return {"first_report_s": first, "exit_s": wall, "cpu_s": _cpu_children() - cpu0}


def _import_time(stmt: str) -> dict[str, float]:
    cpu0 = _cpu_children()
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", stmt], cwd=REPO, env=_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {"wall_s": time.monotonic() - t0, "cpu_s": _cpu_children() - cpu0}


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--base", default="main", help="git revision of the 'before' arm's trainers/")
    ap.add_argument("--out", default="results/command-startup.json")
    args = ap.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    imports: dict[str, list[dict[str, float]]] = {name: [] for name in IMPORTS}
    with tempfile.TemporaryDirectory(prefix="bench-cmd-") as tmp:
        root, cache = Path(tmp), str(Path(tmp) / "cache")
        (root / "base").mkdir()
        _extract(args.base, root / "base")
        first = {"before": str(root / "base"), "after": None}
        k = 0
        for arm in ARMS:  # warm-up: the corpus cache, the page cache, DeepSpeed's op cache
            k += 1
            _launch(first[arm], _config(root, k, cache))
        for _ in range(args.repeats):
            for arm in ARMS:
                k += 1
                runs[arm].append(_launch(first[arm], _config(root, k, cache)))
            for name, stmt in IMPORTS.items():
                imports[name].append(_import_time(stmt))
    doc = {"args": vars(args), "base": subprocess.run(["git", "rev-parse", args.base], cwd=REPO, capture_output=True,
                                                      text=True).stdout.strip(), "python": sys.version.split()[0],
           "programs": {arm: {key: _stats([r[key] for r in rs]) | {"all": [r[key] for r in rs]}
                              for key in ("first_report_s", "exit_s", "cpu_s")} for arm, rs in runs.items()},
           "imports": {name: {key: _stats([r[key] for r in rs]) | {"all": [r[key] for r in rs]}
                              for key in ("wall_s", "cpu_s")} for name, rs in imports.items()}}

    def cell(st: dict[str, float]) -> str:
        return f"{st['median']:>7.2f} ({st['min']:.2f}-{st['max']:.2f})"

    # CPU seconds (user + sys of the process and its children) are what load on a shared machine
    # disturbs least; wall seconds are what a trial waits
    print(f"{'command program':36} {'first report, wall s':>22} {'exit, wall s':>22} {'CPU s to exit':>22}")
    for arm, r in doc["programs"].items():
        print(f"{arm:36} {cell(r['first_report_s']):>22} {cell(r['exit_s']):>22} {cell(r['cpu_s']):>22}")
    print(f"{'fresh interpreter':36} {'wall s':>22} {'CPU s':>22}")
    for name, r in doc["imports"].items():
        print(f"{name:36} {cell(r['wall_s']):>22} {cell(r['cpu_s']):>22}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {out}")
    return doc


if __name__ == "__main__":
    main()
