"""FLOP counting: 6·N per token by default, Chinchilla's exact count on request."""
import pytest

from trainers.flops import flops_per_token, training_flops
from trainers.model import Shape, count_params, shape_for


def test_default_is_six_n():
    s = shape_for(1_000_000)
    n = count_params(s).non_embedding
    assert flops_per_token(s, 128) == 6 * n
    assert training_flops(s, 128, 1000) == 6 * n * 1000


def test_exact_matches_hand_count():
    # d=64, L=2, H=2 (head 32), F=256, S=8, V=256, one sequence forward, by hand:
    s = Shape(d_model=64, n_layers=2, n_heads=2, d_ff=256, head_dim=32)
    S, d, F, V, H, L = 8, 64, 256, 256, 2, 2
    emb = 2 * S * V * d
    attn = 2 * 3 * S * d * d + 2 * S * S * d + 3 * H * S * S + 2 * S * S * d + 2 * S * d * d
    dense = 2 * S * (2 * d * F)
    logits = 2 * S * d * V
    forward = emb + L * (attn + dense) + logits
    assert flops_per_token(s, S, V, exact=True) == pytest.approx(3 * forward / S, rel=1e-15)


def test_exact_approaches_six_n_for_wide_models():
    # With d ≫ seq and vocab, attention-score and embedding terms vanish: exact → 6·12·L·d².
    s = shape_for(10**9)
    ratio = flops_per_token(s, 128, exact=True) / (6 * 12 * s.n_layers * s.d_model**2)
    assert 1.0 < ratio < 1.02
