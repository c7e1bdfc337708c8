"""Before/after check of a refactor: the planners make the same decisions at git revision `--base`
as in this working tree.

    python -m benchmarks.same_decisions [--base main] [--cases law,transfer,grid-wsd,transfer-wsd]
                                        [--out results/same-decisions.json]

Each case is a spec planned by `orchestrator.config.planners.make_planner` and replayed in simulated time
(`orchestrator.app.replay.replay`, 4 slots), every trial's result the simulated world's final loss: the
bundled `examples/simulated-law.yaml` with its strategy, schedule and budget varied, and
`transfer-wsd`, the efficiency benchmark's scalesweep spec on the `crossing` world (seed 2, one
L(N, D) form), where transfer's later cells run as WSD branches and extensions. The specs are built
once, by this tree, and handed to both arms as plain documents. Two
arms, each in its own interpreter: `orchestrator/`, `trainers/` and `cluster/` as they are at `--base`
(extracted to a temporary directory, first on PYTHONPATH) and as they are in this working tree. Per
case it compares, exactly: the trials handed out in order (id, N, D, lr, batch, FLOPs, workers, ZeRO
stage, WSD branch and checkpoint steps), every decision the planner logged (with its `why`), why it
stopped and its estimate at the target. A refactor that changes no decision prints `same` for each.

    python -m benchmarks.same_decisions --compare BEFORE.json AFTER.json [--rtol 1e-9]

compares two runs of `benchmarks.efficiency` or `benchmarks.pruning` (the same command at two revisions):
one row per (world, strategy), resp. method, with its headline figures before and after, then every
number of the two documents, path by path (wall-clock fields left out: `TIMING_KEYS`), equal within
`--rtol`; text that differs (a docstring's module path, say) is listed, not counted. Exit 1 on a difference.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "examples" / "simulated-law.yaml"
# case -> changes to the example spec (a shallow merge per top-level section); None: built below
CASES: dict[str, Any] = {
    "law": {},
    "transfer": {"search": {"strategy": "transfer"}},
    "grid-wsd": {"search": {"strategy": "grid"}, "schedule": {"kind": "wsd", "branch": True},
                 "model": {"n_params": {"min": 10000, "max": 300000, "count": 3}},
                 "learning_rates": {"min": 0.003, "max": 0.3, "count": 3}, "budget": {"total_flops": 3e14}},
    "transfer-wsd": None,
}


def _doc(case: str) -> dict[str, Any]:
    """The case's spec document (plain data: both arms parse it with their own `orchestrator.config.spec`)."""
    import yaml

    if CASES[case] is None:  # transfer + WSD branching + the pruner, as tests/unit/core/planning/test_search_branching.py runs it
        from . import efficiency as E

        target = E.DEFAULT_TARGETS["crossing"]
        data = E.benchmark_spec(E.prior_for(None, target)[0], "crossing", target, 2)
        return E.scalesweep_spec(data, ("fit.law=chinchilla", "search.bootstrap=40"))
    doc = yaml.safe_load(SPEC.read_text())
    for section, change in CASES[case].items():
        doc[section] = {**doc.get(section, {}), **change} if isinstance(change, dict) else change
    return doc


def _trial(t: Any) -> dict[str, Any]:
    keys = ("trial_id", "N", "D", "lr", "batch", "flops", "workers", "zero_stage", "warmup", "checkpoint_steps",
            "branch_of", "branch_step", "branch_flops")
    return {k: getattr(t, k) for k in keys}


def worker(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Plan and replay each case's spec with the orchestrator first on the path; JSON-ready."""
    try:  # the layout of issue 15 (config/, app/)
        from orchestrator.app.replay import replay
        from orchestrator.config.planners import make_planner
        from orchestrator.config.trials import trial_config
    except ImportError:  # a --base from before it: the same functions at the top of orchestrator/
        from orchestrator.planner import trial_config  # type: ignore[no-redef]
        from orchestrator.planners import make_planner  # type: ignore[no-redef]
        from orchestrator.replay import replay  # type: ignore[no-redef]
    from orchestrator.config.spec import parse_spec
    from trainers.simulated import final_loss

    out = {}
    with tempfile.TemporaryDirectory() as d:
        for case, doc in docs.items():
            spec = parse_spec({**doc, "output_dir": d}, source=case)

            def lookup(trial, spec=spec):
                loss = final_loss(trial_config(spec, trial, None, None), spec.trainer.world)
                return {"eval_loss": loss, "train_loss": loss, "done": 1.0, "step": trial.D // trial.batch}

            t0 = time.perf_counter()
            planner = make_planner(spec)
            res = replay(planner, lookup, concurrency=4)
            estimate = planner.estimate() if hasattr(planner, "estimate") else None
            out[case] = {"planner": type(planner).__name__, "trials": [_trial(t) for t in res.trials],
                         "decisions": planner.decisions, "stopped": res.stopped, "compute": res.compute,
                         "estimate": estimate, "seconds": time.perf_counter() - t0}
    return json.loads(json.dumps(out, default=str))


def _extract(rev: str, dest: Path) -> None:
    """The packages as they are at git revision `rev`, into dest."""
    archive = subprocess.run(["git", "archive", rev, "orchestrator", "trainers", "cluster"], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def _arm(first: Path, docs_file: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(first), os.environ.get("PYTHONPATH")) if p)}
    # run as a file from `first`, so `import orchestrator` finds that arm's package before anything else
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(docs_file)], cwd=first,
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"the arm at {first} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout)


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if type(a) is not type(b):
        return f"{path}: {a!r} != {b!r}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'after' if k in b else 'before'}"
            d = _first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return ""
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} != {len(b)} entries"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return ""
    return "" if a == b or (a != a and b != b) else f"{path}: {a!r} != {b!r}"


# fields that measure this machine's wall clock, not a decision: left out of --compare
TIMING_KEYS = {"seconds", "wall_s", "ours_report_latency_s", "command", "plot"}
# --compare's headline columns per benchmark: (summary field, label, format)
HEADLINES = {"efficiency": (("compute_vs_full_grid", "compute/grid", "{:.3f}"),
                            ("regret_mean", "regret mean", "{:.4%}"), ("regret_worst", "regret worst", "{:.4%}")),
             "pruning": (("compute_saved_mean", "saved mean", "{:.2%}"), ("stopped", "stopped", "{}"),
                         ("winners_lost_cell", "lost/(N,D)", "{}"), ("winners_lost_compute", "lost/C", "{}"))}


def _leaves(doc: Any, path: str = "") -> dict[str, Any]:
    """Every leaf of a JSON document by its path (`.strategies.asha.regret.mean`), timing fields left out.

    >>> _leaves({"a": [1, {"seconds": 2.0, "b": "x"}], "wall_s": 3})
    {'.a[0]': 1, '.a[1].b': 'x'}
    """
    if isinstance(doc, dict):
        return {k: v for key, val in doc.items() if key not in TIMING_KEYS
                for k, v in _leaves(val, f"{path}.{key}").items()}
    if isinstance(doc, list):
        return {k: v for i, val in enumerate(doc) for k, v in _leaves(val, f"{path}[{i}]").items()}
    return {path: doc}


def _same_number(a: Any, b: Any, rtol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return a == b
    if a != a or b != b:  # NaN
        return a != a and b != b
    return a == b or abs(a - b) <= rtol * max(abs(a), abs(b))


def compare_documents(before: dict[str, Any], after: dict[str, Any], rtol: float = 1e-9) -> dict[str, list]:
    """Paths whose numbers differ (beyond `rtol`) or exist on one side only, and paths whose text differs.

    >>> compare_documents({"x": 1.0, "t": "a", "seconds": 1}, {"x": 1.0 + 1e-12, "t": "b", "seconds": 9})
    {'numbers': [], 'text': [('.t', 'a', 'b')]}
    """
    a, b = _leaves(before), _leaves(after)
    numbers, text = [], []
    for path in sorted(set(a) | set(b)):
        if path not in a or path not in b:
            numbers.append((path, a.get(path, "(absent)"), b.get(path, "(absent)")))
        elif isinstance(a[path], str) and isinstance(b[path], str):
            if a[path] != b[path]:
                text.append((path, a[path], b[path]))
        elif not _same_number(a[path], b[path], rtol):
            numbers.append((path, a[path], b[path]))
    return {"numbers": numbers, "text": text}


def _summary_rows(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The benchmark's summary, one row per (world, strategy) (efficiency) or method (pruning)."""
    if isinstance(doc.get("summary"), list):  # efficiency, several worlds
        return {f"{r['world']} {r['strategy']}": r for r in doc["summary"]}
    if "strategies" in doc:  # efficiency, one world: the per-strategy entries
        return {f"{doc['world']['name']} {name}": {"compute_vs_full_grid": e["compute_vs_full_grid"],
                                                   "regret_mean": e["regret"]["mean"],
                                                   "regret_worst": None if e["regret"]["diverged_seeds"]
                                                   else e["regret"]["max"]}
                for name, e in doc["strategies"].items()}
    return {f"{doc.get('world', '')} {name}": r for name, r in doc["summary"].items()}  # pruning


def compare_files(before: Path, after: Path, rtol: float) -> bool:
    """Print the side-by-side table of two benchmark JSONs and their differences; whether they agree."""
    b, a = json.loads(before.read_text()), json.loads(after.read_text())
    kind = "pruning" if "per_seed" in b and "trials_per_seed" in b else "efficiency"
    heads = HEADLINES[kind]
    rows_b, rows_a = _summary_rows(b), _summary_rows(a)
    fmt = lambda f, v: "-" if v is None else f.format(v)  # noqa: E731
    print(f"{kind}: {before} (before) vs {after} (after)")
    print(f"{'':<26}" + "".join(f"{label + ' before':>22}{'after':>12}" for _, label, _ in heads))
    for key in sorted(set(rows_b) | set(rows_a)):
        rb, ra = rows_b.get(key, {}), rows_a.get(key, {})
        print(f"{key:<26}" + "".join(f"{fmt(f, rb.get(k)):>22}{fmt(f, ra.get(k)):>12}" for k, _, f in heads))
    diff = compare_documents(b, a, rtol)
    n = len(_leaves(b))
    print(f"numbers compared: {n} (wall-clock fields left out); differing: {len(diff['numbers'])}; "
          f"text differing: {len(diff['text'])}")
    for path, x, y in diff["numbers"][:20]:
        print(f"  DIFFERENT {path}: {x!r} -> {y!r}")
    for path, x, y in diff["text"][:10]:
        print(f"  text {path}: {str(x)[:80]!r} -> {str(y)[:80]!r}")
    return not diff["numbers"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="main", help="git revision of the 'before' arm")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--out", default="results/same-decisions.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"),
                    help="compare two benchmark JSONs (efficiency or pruning) instead")
    ap.add_argument("--rtol", type=float, default=1e-9, help="--compare: relative tolerance for numbers")
    args = ap.parse_args(argv)
    if args.compare:
        return 0 if compare_files(*args.compare, args.rtol) else 1
    if args.worker:
        json.dump(worker(json.loads(Path(args.worker).read_text())), sys.stdout)
        return 0
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s): {', '.join(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        docs_file = Path(tmp) / "cases.json"
        docs_file.write_text(json.dumps({case: _doc(case) for case in cases}))
        base = Path(tmp) / "base"
        base.mkdir()
        _extract(args.base, base)
        before = _arm(base, docs_file)
        after = _arm(REPO, docs_file)
    rows, same_all = [], True
    print(f"{'case':<14} {'planner':<18} {'trials':>7} {'branched':>8} {'decisions':>9} {'before s':>9} "
          f"{'after s':>8}  result")
    for case in cases:
        b, a = before[case], after[case]
        diff = _first_difference({k: v for k, v in b.items() if k != "seconds"},
                                 {k: v for k, v in a.items() if k != "seconds"})
        same_all &= not diff
        branched = sum(1 for t in a["trials"] if t["branch_of"])
        rows.append({"case": case, "same": not diff, "difference": diff or None, "trials": len(a["trials"]),
                     "branched": branched,
                     "decisions": len(a["decisions"]), "stopped": a["stopped"], "seconds_before": b["seconds"],
                     "seconds_after": a["seconds"]})
        print(f"{case:<14} {a['planner']:<18} {len(a['trials']):>7} {branched:>8} {len(a['decisions']):>9} {b['seconds']:>9.1f} "
              f"{a['seconds']:>8.1f}  {'same' if not diff else 'DIFFERENT: ' + diff[:200]}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"base": args.base, "cases": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0 if same_all else 1


if __name__ == "__main__":
    sys.exit(main())
