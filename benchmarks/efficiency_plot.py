"""Compute vs regret for every world and strategy of a multi-world `benchmarks.efficiency` run, in one figure.

    python -m benchmarks.efficiency_plot results/efficiency-all.json --out results/efficiency-compute-vs-regret.png
    python -m benchmarks.efficiency_plot after.json --before before.json --out results/compare.png

x: compute as a fraction of the full grid's (log); y: worst regret over the seeds at the target
(%, log). One colour per strategy, one marker per world; a strategy whose proposal diverged on
some seed (worst regret ∞) sits on the top edge as an open marker. Dotted lines: the issue's bar
(worst regret 0.5 %, compute 10 % of the grid). With `--before`, an arrow joins each
(world, strategy) point of the earlier run to the later one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

MARKERS = "osD^vP*Xhp<>"
REGRET_BAR, COMPUTE_BAR = 0.5, 0.10  # issue 13: worst regret <= 0.5 % with <= 10 % of the grid's compute


def _rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if "summary" not in doc:
        raise ValueError("not a multi-world efficiency JSON (no 'summary'): run it with --world all or a comma list")
    return doc["summary"]


def plot_compute_vs_regret(doc: dict[str, Any], out: Path, before: Optional[dict[str, Any]] = None) -> Path:
    """Draw the figure for `doc` (the JSON of a multi-world run) and write it to `out` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(doc)
    worlds = sorted({r["world"] for r in rows})
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    finite = [100 * r["regret_worst"] for r in rows + (_rows(before) if before else [])
              if r["regret_worst"] is not None and r["regret_worst"] > 0]
    top = 2 * max(finite + [REGRET_BAR * 4])  # where a diverged worst (∞) is drawn
    bottom = min(finite + [REGRET_BAR]) / 2

    def y_of(r: dict[str, Any]) -> float:
        w = r["regret_worst"]
        return top if w is None else max(100 * w, bottom)

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in rows:
        c = f"C{strategies.index(r['strategy'])}"
        m = MARKERS[worlds.index(r["world"]) % len(MARKERS)]
        diverged = r["regret_worst"] is None
        ax.scatter(r["compute_vs_full_grid"], y_of(r), marker=m, s=46, edgecolors=c,
                   facecolors="none" if diverged else c, linewidths=1.3, zorder=3)
    if before:
        old = {(r["world"], r["strategy"]): r for r in _rows(before)}
        for r in rows:
            b = old.get((r["world"], r["strategy"]))
            if b is None or (b["compute_vs_full_grid"], y_of(b)) == (r["compute_vs_full_grid"], y_of(r)):
                continue
            ax.annotate("", xy=(r["compute_vs_full_grid"], y_of(r)), xytext=(b["compute_vs_full_grid"], y_of(b)),
                        arrowprops={"arrowstyle": "->", "color": f"C{strategies.index(r['strategy'])}",
                                    "alpha": 0.6, "lw": 1.0})
    ax.axhline(REGRET_BAR, color="grey", ls=":", lw=1)
    ax.axvline(COMPUTE_BAR, color="grey", ls=":", lw=1)
    ax.axhline(top, color="lightgrey", lw=0.8)
    ax.text(1.0, top, " ∞ (a proposal diverged)", va="bottom", ha="right", fontsize=7,
            color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute spent / full grid's")
    ax.set_ylabel("worst regret over seeds at the target (%)")
    seeds = max(r["seeds"] for r in rows)
    ax.set_title(f"compute vs regret, {len(worlds)} world(s), {seeds} seed(s)"
                 + (" (arrows: before → after)" if before else ""))
    handles = [plt.Line2D([], [], color=f"C{i}", marker="o", ls="", label=s) for i, s in enumerate(strategies)]
    handles += [plt.Line2D([], [], color="black", marker=MARKERS[i % len(MARKERS)], ls="", mfc="none", label=w)
                for i, w in enumerate(worlds)]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path, help="the JSON of `benchmarks.efficiency --world all --json FILE`")
    ap.add_argument("--before", type=Path, default=None, help="an earlier run's JSON: arrows from it to this one")
    ap.add_argument("--out", type=Path, default=Path("results/efficiency-compute-vs-regret.png"))
    args = ap.parse_args(argv)
    before = json.loads(args.before.read_text()) if args.before else None
    print(f"wrote {plot_compute_vs_regret(json.loads(args.json.read_text()), args.out, before)}")


if __name__ == "__main__":
    main()
