"""Replay mode: run any planner against a recorded table of runs instead of a cluster.

A "trial" looks its result up: `replay(planner, lookup)` hands the planner's trials to
`lookup(trial) -> last report | None` in the order a cluster with `concurrency` slots would finish
them (FIFO), so sample efficiency can be measured on real published grids.

`table_replay(columns)` builds a SweepSpec, the candidate trials and the lookup from a table with
columns N, D, lr, batch (tokens), loss. The spec's sizes go through `trainers.model.shape_for`, whose
realised N is only near the table's N, and `plan_grid` rounds D up to whole batches; so every
planned trial is mapped to the nearest table row (same requested size `n_target`, D within 2 %,
lr within 1 %, same batch — all in log distance), and the candidates handed to a planner are the
grid trials that map to a row, with the row's exact N, D and 6·N·D FLOPs substituted.
"""
from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ..core.laws.table import TableError, cluster_close, read_table, require_columns
from ..core.planning import Done, Planner, Wait
from ..core.planning.trial import PlannedTrial
from ..config.trials import plan_grid
from ..config.spec import SweepSpec, parse_spec

Lookup = Callable[[PlannedTrial], Optional[dict[str, Any]]]
STEPLAW_TABLE = Path(__file__).resolve().parents[2] / "tests" / "data" / "steplaw" / "dense_lr_bs_loss.csv"
STEPLAW_SEQ = 2048  # Step-Law's bs column counts sequences of 2048 tokens


@dataclass
class ReplayResult:
    """What a replayed sweep ran: trials in hand-out order, their results, compute, why it ended."""

    trials: list[PlannedTrial]
    results: dict[str, Optional[dict[str, Any]]]
    compute: float  # FLOPs of the trials run (planned)
    stopped: str

    @property
    def n_trials(self) -> int:
        """Trials run."""
        return len(self.trials)

    def table(self) -> list[dict[str, Any]]:
        """One row per trial run: config, loss (NaN if diverged or missing) and status."""
        rows = []
        for t in self.trials:
            r = self.results.get(t.trial_id)
            loss = math.nan if r is None else float(r.get("eval_loss", math.nan))
            status = "missing" if r is None else ("ok" if math.isfinite(loss) else "diverged")
            rows.append({"trial_id": t.trial_id, "N": t.N, "D": t.D, "lr": t.lr, "batch": t.batch,
                         "flops": t.flops, "loss": loss, "status": status})
        return rows


def replay(planner: Planner, lookup: Lookup, *, concurrency: int = 1, max_steps: int = 1_000_000) -> ReplayResult:
    """Run `planner` (next_trial/observe) to the end, each trial's result coming from `lookup`."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    in_flight: deque[PlannedTrial] = deque()
    trials: list[PlannedTrial] = []
    results: dict[str, Optional[dict[str, Any]]] = {}
    stopped = "planner finished"

    def finish_one() -> None:
        t = in_flight.popleft()
        results[t.trial_id] = lookup(t)
        planner.observe(t.trial_id, results[t.trial_id])

    for _ in range(max_steps):
        t = planner.next_trial() if len(in_flight) < concurrency else Wait("every slot busy")
        if isinstance(t, Done):
            while in_flight:  # a finished search lets its running trials complete
                finish_one()
            stopped = t.why or stopped
            break
        if isinstance(t, Wait):
            if not in_flight:
                raise RuntimeError("the planner returned WAIT with no trial running")
            finish_one()
            continue
        trials.append(t)
        in_flight.append(t)
    else:
        stopped = f"max_steps ({max_steps}) reached"
    return ReplayResult(trials, results, float(sum(t.flops for t in trials)), stopped)


# ------------------------------------------------------------------------------------ tables


@dataclass
class TableReplay:
    """A recorded grid as a sweep: its spec, the candidate trials, and a lookup of their results."""

    spec: SweepSpec
    rows: list[dict[str, Any]]  # N, D, lr (clustered), batch, loss, diverged
    candidates: list[PlannedTrial]
    _index: dict[int, dict[float, dict[tuple[float, int], dict[str, Any]]]] = field(default_factory=dict, repr=False)

    def row_of(self, trial: PlannedTrial) -> Optional[dict[str, Any]]:
        """The table row a planned trial stands for (None when the table has no such run)."""
        if not self._index:
            return None
        ns = list(self._index)
        n = trial.n_target if trial.n_target in self._index else \
            min(ns, key=lambda v: abs(math.log(v / trial.N)))
        if abs(math.log(n / trial.N)) > math.log(1.5) and n != trial.n_target:
            return None
        by_d = self._index[n]
        d = min(by_d, key=lambda v: abs(math.log(v / trial.D)))
        if abs(math.log(d / trial.D)) > 0.02:
            return None
        best, dist = None, math.inf
        for (lr, batch), row in by_d[d].items():
            if batch != trial.batch:
                continue
            e = abs(math.log(lr / trial.lr))
            if e < dist:
                best, dist = row, e
        return best if dist <= 0.01 else None

    def lookup(self, trial: PlannedTrial) -> Optional[dict[str, Any]]:
        """The trial's last report as the table records it (NaN losses if it diverged; None if absent)."""
        row = self.row_of(trial)
        if row is None:
            return None
        loss = math.nan if row["diverged"] else row["loss"]
        # the row stands for the trial run to its end: its planned tokens (the row's D matches within 2%)
        return {"eval_loss": loss, "train_loss": loss, "flops": 6.0 * row["N"] * row["D"],
                "tokens": trial.D, "done": 1.0, "N": row["N"], "D": row["D"]}

    def cells(self) -> list[dict[str, Any]]:
        """Per (N, D): runs, best loss and its (lr, batch)."""
        out: dict[tuple[float, float], dict[str, Any]] = {}
        for r in self.rows:
            c = out.setdefault((r["N"], r["D"]), {"N": r["N"], "D": r["D"], "runs": 0, "best_loss": math.inf})
            c["runs"] += 1
            if not r["diverged"] and r["loss"] < c["best_loss"]:
                c.update(best_loss=r["loss"], best_lr=r["lr"], best_batch=r["batch"])
        return sorted(out.values(), key=lambda c: (c["N"], c["D"]))


def table_replay(columns: Mapping[str, Sequence[Any]], *, name: str = "replay", seq_len: Optional[int] = None,
                 targets: Optional[Sequence[float]] = None, total_flops: Optional[float] = None,
                 seed: int = 0) -> TableReplay:
    """A TableReplay from columns N, D, lr, batch (tokens), loss and optionally diverged."""
    missing = [c for c in ("N", "D", "lr", "batch", "loss") if c not in columns]
    if missing:
        raise TableError(f"missing column(s) {', '.join(missing)}")
    cols = require_columns(dict(columns), ["N", "D", "lr", "batch"], positive=["N", "D", "lr", "batch"])
    try:
        cols["loss"] = np.asarray(columns["loss"], dtype=np.float64)  # NaN/inf loss = diverged
    except (TypeError, ValueError) as exc:
        raise TableError("column loss: not numeric") from exc
    div = np.asarray(columns["diverged"], dtype=bool) if "diverged" in columns else np.zeros(len(cols["N"]), bool)
    N = np.round(cols["N"]).astype(np.int64)
    D = np.round(cols["D"]).astype(np.int64)
    batch = np.round(cols["batch"]).astype(np.int64)
    lr_map = cluster_close(cols["lr"].tolist())
    loss = cols["loss"]
    div = div | ~np.isfinite(loss)
    rows = [{"N": int(n), "D": int(d), "lr": float(lr_map[float(lr)]), "batch": int(b), "loss": float(l),
             "diverged": bool(v)} for n, d, lr, b, l, v in zip(N, D, cols["lr"], batch, loss, div)]
    index: dict[int, dict[float, dict[tuple[float, int], dict[str, Any]]]] = {}
    for r in rows:
        cell = index.setdefault(r["N"], {}).setdefault(float(r["D"]), {})
        key = (r["lr"], r["batch"])
        if key in cell:
            raise TableError(f"duplicate run N={r['N']}, D={r['D']}, lr={r['lr']:.4g}, batch={r['batch']}")
        cell[key] = r
    seq = int(seq_len or np.gcd.reduce(batch))
    max_c = max(6.0 * r["N"] * r["D"] for r in rows)
    doc = {
        "name": name,
        "model": {"n_params": sorted({r["N"] for r in rows}), "seq_len": seq},
        "tokens": {"values": sorted({r["D"] for r in rows})},
        "learning_rates": sorted(set(lr_map.values())),
        "batch_sizes": sorted({r["batch"] for r in rows}),
        "budget": {"targets": list(targets) if targets else [100.0 * max_c],
                   **({"total_flops": total_flops} if total_flops else {})},
        "seed": seed,
    }
    spec = parse_spec(doc, source=name)
    tr = TableReplay(spec=spec, rows=rows, candidates=[], _index=index)
    cands = []
    for t in plan_grid(spec):
        row = tr.row_of(t)
        if row is not None:
            # The table's exact N and D (the family only realises N approximately; D was rounded up
            # to whole batches) so that the planner's fits see what the table measured.
            cands.append(dataclasses.replace(t, N=row["N"], D=row["D"], flops=6.0 * row["N"] * row["D"]))
    tr.candidates = cands
    return tr


def steplaw_replay(path: str | Path = STEPLAW_TABLE, **kw: Any) -> TableReplay:
    """The Step-Law dense grid as a TableReplay: loss = `smooth loss`, batch = bs × 2048 tokens."""
    t = read_table(path)
    cols = {"N": t["N"], "D": t["D"], "lr": t["lr"], "batch": t["bs"] * STEPLAW_SEQ, "loss": t["smooth loss"]}
    return table_replay(cols, name=kw.pop("name", "steplaw-replay"), seq_len=STEPLAW_SEQ, **kw)


__all__ = ["replay", "ReplayResult", "TableReplay", "table_replay", "steplaw_replay", "STEPLAW_TABLE"]
