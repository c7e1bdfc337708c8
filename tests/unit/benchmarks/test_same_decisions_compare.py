"""`benchmarks.same_decisions --compare`: two benchmark JSONs agree when every number does (wall-clock fields
left out), and a changed figure is reported by its path."""
from __future__ import annotations

import json

from benchmarks.same_decisions import compare_documents, main

PRUNING = {"world": "tiny", "seeds": 1, "trials_per_seed": 4,
           "per_seed": {"ours": [{"compute_saved": 0.25, "seconds": 1.0}]},
           "summary": {"ours": {"compute_saved_mean": 0.25, "stopped": 1, "winners_lost_cell": 0,
                                "winners_lost_compute": 0, "seconds": 1.0}},
           "ours_report_latency_s": {"mean": 0.001}}


def _with(doc, **summary):
    return {**doc, "summary": {"ours": {**doc["summary"]["ours"], **summary}}}


def test_the_wall_clock_is_not_compared_and_a_figure_is(tmp_path):
    slower = _with({**PRUNING, "ours_report_latency_s": {"mean": 0.5}}, seconds=9.0)
    assert compare_documents(PRUNING, slower) == {"numbers": [], "text": []}
    changed = compare_documents(PRUNING, _with(PRUNING, stopped=2))
    assert changed["numbers"] == [(".summary.ours.stopped", 1, 2)]
    assert compare_documents({"x": 1.0}, {"x": 1.0 + 1e-6}, rtol=1e-9)["numbers"] == [(".x", 1.0, 1.0 + 1e-6)]
    assert compare_documents({"x": [1]}, {"x": [1, 2]})["numbers"] == [(".x[1]", "(absent)", 2)]


def test_the_command_exits_1_on_a_difference(tmp_path, capsys):
    before, same, other = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    before.write_text(json.dumps(PRUNING))
    same.write_text(json.dumps(_with(PRUNING, seconds=3.0)))
    other.write_text(json.dumps(_with(PRUNING, compute_saved_mean=0.3)))
    assert main(["--compare", str(before), str(same)]) == 0
    assert "tiny ours" in capsys.readouterr().out
    assert main(["--compare", str(before), str(other)]) == 1
    assert "DIFFERENT .summary.ours.compute_saved_mean: 0.25 -> 0.3" in capsys.readouterr().out
