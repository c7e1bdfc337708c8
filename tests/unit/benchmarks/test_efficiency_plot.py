"""The compute-vs-regret figure of a multi-world efficiency run (benchmarks/efficiency_plot.py)."""
from __future__ import annotations

import pytest

from benchmarks.efficiency_plot import plot_compute_vs_regret


def _row(world, strategy, compute, worst, diverged=0):
    return {"world": world, "strategy": strategy, "seeds": 3, "compute_vs_full_grid": compute,
            "regret_mean": worst, "regret_worst": worst, "diverged_seeds": diverged}


def test_writes_a_png_with_diverged_points_and_arrows(tmp_path):
    after = {"summary": [_row("tiny", "full_grid", 1.0, 0.011), _row("tiny", "asha", 0.38, None, 2),
                         _row("kaplan", "scalesweep", 0.08, 0.0003)]}
    before = {"summary": [_row("kaplan", "scalesweep", 0.106, 0.0065)]}
    out = plot_compute_vs_regret(after, tmp_path / "fig.png", before)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_refuses_a_single_world_json(tmp_path):
    with pytest.raises(ValueError, match="multi-world"):
        plot_compute_vs_regret({"world": {"name": "tiny"}, "strategies": {}}, tmp_path / "x.png")
