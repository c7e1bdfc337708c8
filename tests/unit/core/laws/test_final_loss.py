"""Final-loss prediction of a running trial: accuracy, honest interval width, coverage."""
from __future__ import annotations

import numpy as np
import pytest

from pathlib import Path

from orchestrator.core.laws.curves import Curve
from orchestrator.core.laws.final_loss import make_law, predict_final

DATA = Path(__file__).resolve().parents[3] / "data" / "multipowerlaw"
TRAIN = ["cosine_24000", "constant_24000", "wsdcon_9"]
TEST = ["cosine_72000", "constant_72000", "wsd_20000_24000", "wsdld_20000_24000", "wsdcon_3", "wsdcon_18"]


def load(size: str, names: list[str]) -> list[Curve]:
    return [Curve.from_file(DATA / f"csv_{size}" / f"{n}.csv", warmup_steps=2160) for n in names]

FRACTIONS = (0.2, 0.5, 0.8)


def _cases(law, size):
    fitted = make_law(law, n_boot=10).fit(load(size, TRAIN))
    out = []
    for c in load(size, TEST):
        row = []
        for f in FRACTIONS:
            k = int(np.searchsorted(c.step, f * c.step[-1]))
            row.append(predict_final(c.step[:k], c.loss[:k], (c.step, c.lr), completed=fitted, law=law))
        out.append((c, row))
    return out


@pytest.mark.parametrize("law,size", [("multipower", "100"), ("annealing", "25")])
def test_interval_shrinks_as_prefix_grows_and_covers(law, size):
    cases = _cases(law, size)
    covered = 0
    for c, row in cases:
        widths = [(hi - lo) / est for est, lo, hi in row]
        assert widths[0] > widths[1] > widths[2], (c.name, widths)
        covered += sum(lo <= c.loss[-1] <= hi for _, lo, hi in row)
    # Measured: 18/18 for both (docs/curves.md); demand most, not all.
    assert covered >= 0.8 * len(cases) * len(FRACTIONS)


def test_72000_step_runs_from_30_percent_within_1_percent():
    fitted = make_law("multipower", n_boot=5).fit(load("100", TRAIN))
    for c in load("100", ["cosine_72000", "constant_72000"]):
        k = int(np.searchsorted(c.step, 0.3 * c.step[-1]))
        est, lo, hi = predict_final(c.step[:k], c.loss[:k], (c.step, c.lr), completed=fitted)
        assert abs(est - c.loss[-1]) / c.loss[-1] < 0.01
        assert lo <= c.loss[-1] <= hi


def test_without_completed_runs_the_interval_is_wider_and_honest():
    c = load("25", ["cosine_72000"])[0]
    k = int(np.searchsorted(c.step, 0.2 * c.step[-1]))
    alone = predict_final(c.step[:k], c.loss[:k], (c.step, c.lr), law="annealing")
    helped = predict_final(c.step[:k], c.loss[:k], (c.step, c.lr), completed=load("25", TRAIN), law="annealing")
    assert (alone.high - alone.low) > (helped.high - helped.low)
    assert alone.low <= c.loss[-1] <= alone.high


def test_rejects_a_prefix_inside_warmup():
    c = load("25", ["cosine_24000"])[0]
    with pytest.raises(ValueError):
        predict_final(np.array([100.0, 200.0]), np.array([9.0, 8.0]), (c.step, c.lr), warmup_steps=2160)
