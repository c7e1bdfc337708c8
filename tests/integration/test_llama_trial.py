"""Real DeepSpeed trials of the llama families on CPU, and `scalesweep validate` of a llama spec."""
import math

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.app.cli import get_app
from trainers.contract import Schedule, TrialConfig
from trainers.deepspeed_trainer import train
from trainers.flops import flops_per_token
from trainers.model import count_params, shape_for

pytestmark = pytest.mark.integration
LN256 = math.log(256)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("corpus"))


def _config(cache, **kw):
    base = dict(trial_id="t", n_params=53_440, tokens=30 * 2048, lr=3e-3, batch_tokens=2048, seq_len=64,
                schedule=Schedule(kind="wsd", warmup=0.1, decay=0.2), eval_every=10, eval_tokens=2048,
                zero_stage=1, data_cache=cache, micro_batch=16, family="llama")
    base.update(kw)
    return TrialConfig(**base)


def test_llama_trial_learns_under_zero1(cache):
    reports = []
    summary = train(_config(cache), reports.append)
    shape = shape_for(53_440, "llama")
    n = count_params(shape).non_embedding
    assert summary.n_params == n == 53_440 and summary.n_params_total == n + 2 * 256 * 64  # untied head
    assert summary.shape == shape.to_dict() and summary.shape["arch"] == "llama" and not summary.shape["tied"]
    assert [r["step"] for r in reports] == [10, 20, 30] and not summary.diverged
    for r in reports:
        assert r["flops"] == pytest.approx(6 * n * r["tokens"])
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["eval_loss"])
    evals = [r["eval_loss"] for r in reports]
    trains = [r["train_loss"] for r in reports]
    assert evals[-1] < evals[1] < evals[0] < LN256 and trains[-1] < trains[0]
    assert evals[-1] < LN256 - 1.5  # from uniform 5.55 to < 4.05 nats, as the gpt trial


def test_tied_llama_trial_under_zero3_with_exact_flops(cache, tmp_path):
    """ZeRO-3 partitions the Hugging Face model (the tied head shares the embedding's partition);
    the checkpoint it writes resumes to the same loss."""
    cfg = _config(cache, family="llama-tied", zero_stage=3, exact_flops=True, tokens=20 * 2048,
                  checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=10, checkpoint_steps=(10,))
    reports = []
    summary = train(cfg, reports.append)
    shape = shape_for(53_440, "llama-tied")
    assert summary.n_params_total == 53_440 + 256 * 64 and summary.shape["tied"]
    fpt = flops_per_token(shape, 64, 256, exact=True)
    assert reports[-1]["flops"] == pytest.approx(fpt * 20 * 2048) and fpt > 6 * 53_440
    evals = [r["eval_loss"] for r in reports]
    assert all(math.isfinite(e) for e in evals) and evals[-1] < evals[0] < LN256
    (tmp_path / "ckpt" / "latest").write_text("step10")
    resumed = []
    again = train(cfg, resumed.append)
    assert [r["step"] for r in resumed] == [20]
    assert again.final_eval_loss == pytest.approx(summary.final_eval_loss, abs=1e-4)


def test_validate_accepts_a_llama_spec_and_names_a_missing_transformers(tmp_path, monkeypatch):
    import importlib.util

    spec = {"name": "llama-cpu", "model": {"family": "llama", "n_params": [53440, 426624], "seq_len": 64},
            "tokens": {"per_param": [10, 20]}, "learning_rates": [0.003], "batch_sizes": [2048],
            "output_dir": str(tmp_path / "sweep")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(get_app(), ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "4 trial(s) in the grid" in result.output, result.output

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    result = CliRunner().invoke(get_app(), ["validate", str(path)])
    assert result.exit_code == 2 and "model.family: llama" in result.output and "transformers" in result.output
