"""Learning-rate schedules: WSD (1-sqrt decay), cosine, constant, with linear warmup."""
import math

import numpy as np
import pytest

from trainers.contract import Schedule
from trainers.schedules import lr_array, lr_at


def test_wsd_phases():
    sch = Schedule(kind="wsd", warmup=0.1, decay=0.2, final_lr_frac=0.1)
    lr = lr_array(100, 1.0, sch)
    assert np.allclose(lr[:10], np.arange(1, 11) / 10)  # linear warmup reaching the peak
    assert np.all(lr[10:80] == 1.0)  # stable
    assert lr[-1] == pytest.approx(0.1)  # ends at final_lr_frac·peak
    p = (np.arange(80, 100) - 80 + 1) / 20
    assert np.allclose(lr[80:], 0.1 + 0.9 * (1 - np.sqrt(p)))  # 1-sqrt cooldown
    assert np.all(np.diff(lr[79:]) < 0)


def test_cosine_and_constant():
    cos = lr_array(50, 2.0, Schedule(kind="cosine", warmup=0.1, final_lr_frac=0.0))
    assert cos[4] == pytest.approx(2.0)
    assert cos[-1] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.diff(cos[5:]) < 0)
    mid = 5 + (45 // 2) - 1  # p = 0.5 → halfway between peak and floor
    assert cos[mid] == pytest.approx(1.0 + math.cos(math.pi * (mid - 5 + 1) / 45), rel=1e-12)
    const = lr_array(20, 0.5, Schedule(kind="constant", warmup=0.0))
    assert np.all(const == 0.5)


@pytest.mark.parametrize("kind", ["wsd", "cosine", "constant"])
@pytest.mark.parametrize("total", [1, 2, 7, 100, 1001])
def test_lr_at_matches_array(kind, total):
    sch = Schedule(kind=kind, warmup=0.05, decay=0.3, final_lr_frac=0.2)
    arr = lr_array(total, 3e-3, sch)
    assert arr.dtype == np.float64
    assert [lr_at(s, total, 3e-3, sch) for s in range(total)] == pytest.approx(arr.tolist(), rel=1e-12)
    assert np.all(arr > 0) and np.all(arr <= 3e-3 * (1 + 1e-12))


def test_bad_inputs():
    with pytest.raises(ValueError):
        lr_array(0, 1.0, Schedule())
    with pytest.raises(ValueError):
        lr_at(10, 10, 1.0, Schedule())
