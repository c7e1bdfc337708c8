"""docs/architecture.md's worked example runs: a law of L(N, D) added by one file and one registration line
(`orchestrator.core.laws.candidates.FORMS`) is fitted alone when named and backtested in every `auto` fit."""
from __future__ import annotations

import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from orchestrator.core.laws import candidates
from orchestrator.core.laws.candidates import FORMS, candidate_forms
from orchestrator.core.laws.selection import fit_auto

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
SECTION = "## A law in one file and one line"
PLANTED = {"E": 1.6, "A": 60.0, "gamma": 0.12}


def _blocks() -> list[str]:
    text = DOC.read_text()
    assert SECTION in text
    return re.findall(r"```python\n(.*?)```", text.split(SECTION, 1)[1], flags=re.S)


@pytest.fixture
def compute_law(monkeypatch):
    """The doc's law file as a module, and its registration line added to FORMS."""
    blocks = _blocks()
    assert len(blocks) == 2
    module = types.ModuleType(f"{candidates.__package__}.compute_form")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # as an imported file would be (dataclasses look it up)
    exec(compile(blocks[0], "compute_form.py", "exec"), module.__dict__)
    line = blocks[1].strip()
    assert line.count("\n") == 0  # one registration line
    entry = eval("{" + line + "}", {"math": math, "ComputeForm": module.ComputeForm})
    for name, factory in entry.items():
        monkeypatch.setitem(FORMS, name, factory)
    return module


def _planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    N = np.repeat([1e7, 3e7, 1e8, 3e8, 1e9], 4)
    D = N * np.tile([5.0, 10.0, 20.0, 40.0], 5)
    L = PLANTED["E"] + PLANTED["A"] / (6 * N * D) ** PLANTED["gamma"]
    return N, D, L * np.exp(rng.normal(0, 1e-4, len(L)))


def test_a_law_added_by_one_file_and_one_line_is_fitted_by_name(compute_law):
    N, D, L = _planted()
    assert [f.name for f in candidate_forms(N, D)][-1] == "compute"
    fit = fit_auto(N, D, L, forms=("compute",), bootstrap=0)
    assert fit.form == "compute"
    p = fit.result.params
    assert p["gamma"] == pytest.approx(PLANTED["gamma"], rel=0.02)
    assert p["E"] == pytest.approx(PLANTED["E"], rel=0.02)
    assert p["A"] == pytest.approx(PLANTED["A"], rel=0.05)


def test_every_auto_fit_backtests_the_registered_law(compute_law):
    N, D, L = _planted(1)
    fit = fit_auto(N, D, L, bootstrap=0)
    scored = {f.name: f.score for f in fit.fits}
    assert "compute" in scored and math.isfinite(scored["compute"])
    assert fit.form == "compute"  # on its own world it extrapolates best


def test_without_the_line_the_law_is_not_a_candidate():
    N, D, _ = _planted()
    assert "compute" not in FORMS
    assert "compute" not in [f.name for f in candidate_forms(N, D)]
