"""Every shipped example spec passes `scalesweep validate` (spec, data, this machine), and the BPE demo
keeps the design of examples/tiny.yaml (the same token budgets at every size, one lr, WSD branches)."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.app.cli import get_app
from orchestrator.config.trials import plan_grid
from orchestrator.config.spec import load_spec

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SPECS = sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("*/*.yaml"))


def test_the_examples_are_found():
    assert {p.name for p in SPECS} >= {"tiny.yaml", "tiny-bpe.yaml", "simulated.yaml", "simulated-law.yaml"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_validates(path, monkeypatch, tmp_path):
    if "bpe" in path.read_text():
        pytest.importorskip("tokenizers")  # the built-in BPE corpus is built (once, cached) by validate
    # The examples name paths relative to the repository root, their output folders too: validate
    # from a copy of the root's layout (links) without the sweeps a developer may have run there,
    # which validate rightly refuses to merge a changed example into.
    for entry in EXAMPLES.parent.iterdir():
        if entry.name not in ("sweeps", "sweep", "results"):
            (tmp_path / entry.name).symlink_to(entry)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(get_app(), ["validate", str(path.relative_to(EXAMPLES.parent))])
    assert result.exit_code == 0, result.output
    assert f"{load_spec(path).name}:" in result.output


def test_bpe_demo_has_the_current_design():
    tiny, bpe = (plan_grid(load_spec(EXAMPLES / name)) for name in ("tiny.yaml", "tiny-bpe.yaml"))
    assert len(bpe) == len(tiny) == 16
    assert {t.N for t in bpe} == {t.N for t in tiny}
    assert len({t.lr for t in bpe}) == 1
    budgets = {n: sorted(t.cell.D for t in bpe if t.N == n) for n in {t.N for t in bpe}}
    assert len({tuple(v) for v in budgets.values()}) == 1  # every size sees the same token budgets
    assert max(t.D for t in bpe) <= 3_500_000  # the built-in BPE corpus's training tokens: no repeats
    assert sum(t.branch_of is not None for t in bpe) == 12  # one WSD trunk per size, 3 cooldown branches
