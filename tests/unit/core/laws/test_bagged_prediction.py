"""Bagged point predictions of `fit_auto` (`AutoFit.predict_interval(point="bagged")`): each form's median
over its bootstrap replicates, weighted like the fits. Planted truth, over-training design, 10-17x out."""
import numpy as np
import pytest

from benchmarks.overtraining import planted_cases
from orchestrator.core.laws.selection import fit_auto


@pytest.mark.parametrize("world, fit_err, bagged_err", [("chinchilla", 0.00369, 0.00323),
                                                        ("kaplan-E", 0.00480, 0.00454)])
def test_bagged_point_is_no_worse_against_the_truth(world, fit_err, bagged_err):
    """Mean |error| against the noiseless truth at N = 4e9, 6.9e9 (5, 20, 640 tokens per parameter), 6
    replications, 20 replicates per form. Measured (also in benchmarks.overtraining, 20 replications
    and public data: docs/benchmarks.md) -- the values asserted below."""
    fit_errs, bag_errs = [], []
    for i, (_, N, D, L, U, Nt, Dt, Lt, Ut, truth) in enumerate(planted_cases(world, 6)):
        fit = fit_auto(N, D, L, U, bootstrap=20, seed=i)
        p, lo, hi = fit.predict_interval(Nt, Dt, Ut)
        q, lo_b, hi_b = fit.predict_interval(Nt, Dt, Ut, point="bagged")
        np.testing.assert_array_equal(lo, lo_b)  # only the point changes, not the interval
        np.testing.assert_array_equal(hi, hi_b)
        fit_errs.append(np.mean(np.abs(p / truth - 1)))
        bag_errs.append(np.mean(np.abs(q / truth - 1)))
    assert np.mean(fit_errs) == pytest.approx(fit_err, abs=2e-5)
    assert np.mean(bag_errs) == pytest.approx(bagged_err, abs=2e-5)
    assert np.mean(bag_errs) <= np.mean(fit_errs)


def test_without_replicates_bagged_is_the_fit():
    _, N, D, L, U, Nt, Dt, _, Ut, _ = next(iter(planted_cases("chinchilla", 1)))
    fit = fit_auto(N, D, L, bootstrap=0)
    np.testing.assert_allclose(fit.predict_interval(Nt, Dt, point="bagged")[0], fit.law.predict(Nt, Dt),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="point must be"):
        fit.predict_interval(Nt, Dt, point="mean")
