"""docs/architecture-pruning.md's worked example runs (a rule added by one file and one line); every
public example in the pruning package's docstrings runs (doctest)."""
from __future__ import annotations

import doctest
import importlib
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from orchestrator.core.pruning import RULES, Patient, PruneConfig, Pruner, TrialMeta
from orchestrator.core.pruning.rules import __name__ as rules_pkg

FAST = PruneConfig(grace=0.99)  # the law rule's curve fits would only slow this file down
DOC = Path(__file__).resolve().parents[4] / "docs" / "architecture-pruning.md"
PURE = ["orchestrator.core.outcome", "orchestrator.core.pruning", "orchestrator.core.pruning.config",
        "orchestrator.core.pruning.meta", "orchestrator.core.pruning.decision", "orchestrator.core.pruning.rule",
        "orchestrator.core.pruning.pairstat", "orchestrator.core.pruning.calibration", "orchestrator.core.pruning.history",
        "orchestrator.core.pruning.frontier", "orchestrator.core.pruning.pruner", "orchestrator.core.pruning.rules.divergence",
        "orchestrator.core.pruning.rules.paired", "orchestrator.core.pruning.rules.law",
        "orchestrator.core.pruning.rules.forecast"]


@pytest.mark.parametrize("name", PURE)
def test_doctests(name):
    assert doctest.testmod(importlib.import_module(name)).failed == 0


@pytest.fixture
def plateau(monkeypatch):
    """The doc's rule file as a module, and its registration line added to RULES."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 2
    module = types.ModuleType(f"{rules_pkg}.plateau")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # as an imported file would be (dataclasses look it up)
    exec(compile(blocks[0], "plateau.py", "exec"), module.__dict__)
    line = blocks[1].strip()
    assert line.count("\n") == 0  # one registration line
    entry = eval("{" + line + "}", {"Patient": Patient, "Plateau": module.Plateau})
    for name, factory in entry.items():
        monkeypatch.setitem(RULES, name, factory)
    return module


def _feed(p: Pruner, losses) -> tuple[str, str]:
    meta = TrialMeta(N=1e6, D=1e7, total_steps=len(losses) * 10, lr=np.full(len(losses) * 10, 1e-3), flops=6e13)
    for k, x in enumerate(losses):
        d = p.on_report("t", meta, {"step": 10.0 * (k + 1), "train_loss": x, "eval_loss": x})
        if d.stops:
            return d.action, d.reason
    return "continue", ""


def test_a_rule_added_by_one_file_and_one_line(plateau):
    assert list(RULES)[-1] == "plateau"
    stalled = [5.0 / (1 + k) ** 0.3 for k in range(15)] + [5.0 / 16 ** 0.3] * 15
    action, reason = _feed(Pruner(FAST), stalled)
    assert action == "stop" and "improved 0.00% over its last 5 reports" in reason
    improving = [5.0 / (1 + k) ** 0.3 for k in range(30)]
    assert _feed(Pruner(FAST), improving) == ("continue", "")


def test_without_the_line_the_rule_is_not_asked():
    stalled = [5.0 / (1 + k) ** 0.3 for k in range(15)] + [5.0 / 16 ** 0.3] * 15
    assert "plateau" not in RULES
    assert _feed(Pruner(FAST), stalled)[0] == "continue"
