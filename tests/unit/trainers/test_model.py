"""The GPT family: the N → shape rule, parameter counting, and the model's basic behaviour."""
import math

import numpy as np
import pytest
import torch

from trainers.model import GPT, Shape, build_model, count_params, non_embedding_params, shape_for


@pytest.mark.parametrize("target", np.geomspace(5e3, 1e9, 40).astype(int).tolist())
def test_realised_n_close_to_target(target):
    shape = shape_for(target)
    n = count_params(shape).non_embedding
    assert abs(n / target - 1) < 0.10
    assert shape.d_model == shape.n_heads * shape.head_dim
    assert 16 <= shape.head_dim <= 64
    assert shape.d_ff == 4 * shape.d_model
    if target >= 1e6:  # beyond the 1-layer regime the aspect ratio stays near 64
        assert 32 <= shape.d_model / shape.n_layers <= 128


def test_realised_n_is_monotone_in_target():
    realised = [count_params(shape_for(int(t))).non_embedding for t in np.geomspace(3e3, 1.2e9, 4000)]
    assert all(b >= a for a, b in zip(realised, realised[1:]))


def test_kaplan_approximation_and_known_shapes():
    # 12·L·d² dominates the exact count at scale
    s = shape_for(10**9)
    assert abs(non_embedding_params(s.d_model, s.n_layers) / (12 * s.n_layers * s.d_model**2) - 1) < 0.01
    assert shape_for(20_000) == Shape(d_model=40, n_layers=1, n_heads=1, d_ff=160, head_dim=40)
    assert shape_for(1_000_000) == Shape(d_model=165, n_layers=3, n_heads=3, d_ff=660, head_dim=55)


@pytest.mark.parametrize("target", [5_000, 80_000, 300_000])
def test_count_params_matches_module(target):
    shape = shape_for(target)
    model = GPT(shape, vocab_size=256, max_seq_len=64)
    unique = sum(p.numel() for p in model.parameters())  # tied head counted once
    emb = model.wte.weight.numel() + model.wpe.weight.numel()
    counts = count_params(shape, 256, 64)
    assert unique == counts.total
    assert unique - emb == counts.non_embedding
    assert model.head.weight is model.wte.weight


def test_initial_loss_is_uniform_and_attention_is_causal():
    torch.manual_seed(0)
    model = build_model(20_000, seq_len=32, seed=1)
    x, y = torch.randint(0, 256, (4, 32)), torch.randint(0, 256, (4, 32))
    loss = model(x, y)  # random targets: the tied head slightly favours echoing the input
    assert abs(loss.item() - math.log(256)) < 0.05
    logits = model(x)
    x2 = x.clone()
    x2[:, 20:] = (x2[:, 20:] + 1) % 256
    logits2 = model(x2)
    assert torch.allclose(logits[:, :20], logits2[:, :20], atol=1e-6)
    assert not torch.allclose(logits[:, 20:], logits2[:, 20:])


def test_build_is_deterministic_in_seed():
    a, b, c = build_model(5_000, 16, seed=3), build_model(5_000, 16, seed=3), build_model(5_000, 16, seed=4)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_rejects_non_positive_n():
    with pytest.raises(ValueError):
        shape_for(0)


def test_the_aligned_family_has_gpu_friendly_shapes_near_every_target():
    """gpt-aligned: widths in multiples of 64, head_dim exactly 64, realised N near the target at GPU scale."""
    from trainers.deepspeed_trainer import make_plan
    from trainers.contract import TrialConfig

    shapes = [shape_for(int(t), "gpt-aligned") for t in np.geomspace(1e7, 1e10, 300)]
    for s in shapes:
        assert s.d_model % 64 == 0 and s.head_dim == 64 and s.n_heads * 64 == s.d_model and s.d_ff == 4 * s.d_model
    for t in np.geomspace(1e7, 1e10, 300):
        assert 0.75 < count_params(shape_for(int(t), "gpt-aligned")).non_embedding / t < 1.3  # one member per depth
    realised = [count_params(s).non_embedding for s in shapes]
    assert realised == sorted(realised)  # monotone in the target
    assert shape_for(10**8) != shape_for(10**8, "gpt-aligned")  # the default family is unchanged
    # the trainer builds and plans the family the config names
    cfg = TrialConfig("t", n_params=300_000, tokens=4096, lr=1e-3, batch_tokens=1024, seq_len=64, family="gpt-aligned")
    plan = make_plan(cfg, 1, 256)
    assert plan.shape == shape_for(300_000, "gpt-aligned") and plan.shape.head_dim == 64
    model = build_model(300_000, 64, family="gpt-aligned")
    assert sum(p.numel() for p in model.parameters()) == count_params(plan.shape, max_seq_len=64).total
    with pytest.raises(ValueError, match="unknown model family"):
        shape_for(10**6, "mamba")


def test_the_spec_plans_the_aligned_family():
    from orchestrator.config.trials import plan_grid, trial_config
    from orchestrator.config.spec import parse_spec

    spec = parse_spec({"name": "gpu", "model": {"family": "gpt-aligned", "n_params": [3e7, 1e8], "seq_len": 128},
                       "tokens": {"per_param": [20]}, "learning_rates": [1e-3], "batch_sizes": [65536],
                       "trainer": {"backend": "simulated"}})
    for t in plan_grid(spec):
        assert t.shape == shape_for(t.n_target, "gpt-aligned").to_dict()
        assert trial_config(spec, t, None, None).family == "gpt-aligned"
