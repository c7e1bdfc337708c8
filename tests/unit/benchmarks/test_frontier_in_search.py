"""benchmarks.frontier_in_search: when the pruner's law rule could stop a run at the earliest (the probe's
`in time` column), as the rule's grace, report count and second vote allow."""
from __future__ import annotations

import doctest

from benchmarks import frontier_in_search as F


def test_docstring_examples_hold():
    assert doctest.testmod(F, report=False).failed == 0


def test_earliest_stop_needs_grace_four_reports_after_warmup_and_a_second_vote():
    steps = [float(s) for s in range(10, 101, 10)]
    assert F.earliest_stop(steps, 100, warm=5) == 0.6  # first vote at 40 (4 reports, ≥ 30 %), second at 60
    assert F.earliest_stop(steps, 100, warm=35) == 0.9  # only 4 reports after warmup by 70: second at 90
    assert F.earliest_stop(steps, 100, warm=65) is None  # the second vote would be the final report
    assert F.earliest_stop(steps[:3], 100, warm=0) is None  # too few reports
