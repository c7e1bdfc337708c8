"""The robust losses: values, derivatives, asymmetry."""
import numpy as np
import scipy.special

from orchestrator.core.laws.objectives import LOSSES, asymmetric, get_loss, huber


def test_huber_matches_scipy_and_its_derivative():
    r = np.linspace(-0.01, 0.01, 401)
    values, derivs = huber(r, 1e-3)
    np.testing.assert_allclose(values, scipy.special.huber(1e-3, r), rtol=0, atol=1e-18)
    eps = 1e-8
    numeric = (huber(r + eps)[0] - huber(r - eps)[0]) / (2 * eps)
    np.testing.assert_allclose(derivs, numeric, atol=1e-7)


def test_asymmetric_penalises_over_prediction():
    v, d = asymmetric(np.array([-0.01, 0.01]), 1e-3, over_weight=4.0)
    assert v[1] == 4.0 * v[0] > 0
    assert d[1] == -4.0 * d[0] > 0
    eps = 1e-8
    r = np.linspace(-0.01, 0.01, 101)
    numeric = (asymmetric(r + eps)[0] - asymmetric(r - eps)[0]) / (2 * eps)
    np.testing.assert_allclose(asymmetric(r)[1], numeric, atol=1e-6)


def test_registry():
    assert set(LOSSES) == {"huber", "asymmetric"}
    assert get_loss("huber") is huber
    try:
        get_loss("l2")
    except ValueError as exc:
        assert "huber" in str(exc)
    else:
        raise AssertionError("unknown loss accepted")
