"""A real sweep of the llama family on a user's memory-mapped token file (issue 14), end to end:
spec → Ray Tune (local cluster) → DeepSpeed on CPU (Hugging Face LlamaForCausalLM) → Parquet store
+ MLflow → an L(N, D) fit. Nothing is mocked.

Two llama sizes (53,440 and 426,624 non-embedding parameters: the family's first two members) by
three token counts: six tiny trials, enough cells for the 5-parameter law to be fitted.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from orchestrator.io.store import ObservationStore
from tests.integration.conftest import run_real_sweep

pytestmark = pytest.mark.integration

VOCAB = 512
STEPS = (8, 16, 24)
BATCH = 1024  # 16 sequences of 64 tokens


def _spec(bin_path: str) -> dict:
    return {
        "name": "llama-bin",
        "model": {"family": "llama", "n_params": [53440, 426624], "seq_len": 64},
        "data": {"format": "bin", "path": bin_path, "dtype": "uint16", "val_fraction": 0.05},
        "tokens": {"values": [s * BATCH for s in STEPS]},
        "learning_rates": [0.003],
        "batch_sizes": [BATCH],
        "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.2},
        "eval": {"every": 8, "tokens": 2048},
        "checkpoints": {"enabled": False},
        "budget": {"targets": [1e12]},
        "fit": {"bootstrap": 0},
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, local_ray):
    root = tmp_path_factory.mktemp("llama-sweep")
    # a learnable stream over VOCAB ids (a fixed permutation walk), more tokens than the largest D
    ids = (np.arange(40_000) * 7 % VOCAB).astype(np.uint16)
    ids.tofile(root / "train.bin")
    return run_real_sweep(root, _spec(str(root / "train.bin")), "llama-bin", local_ray=local_ray)


def test_every_llama_trial_finished_with_its_rows(sweep):
    spec, outcome = sweep
    store = ObservationStore(outcome.sweep_dir)
    trials = store.trials()
    assert len(trials) == 6 and {r["status"] for r in trials.values()} == {"finished"}, trials
    assert {rec["config"]["N"] for rec in trials.values()} == {53440, 426624}
    for tid, rec in trials.items():
        rows = store.observations(tid).to_pylist()
        steps = rows[-1]["step"]
        assert [r["step"] for r in rows] == sorted({*range(8, steps + 1, 8), steps})  # one row per (trial, step)
        assert rows[-1]["done"] and rows[-1]["tokens"] == rec["config"]["D"]
        assert rows[-1]["flops"] == pytest.approx(6 * rec["config"]["N"] * rec["config"]["D"])
        assert all(math.isfinite(r["eval_loss"]) for r in rows)
        assert rows[-1]["eval_loss"] < math.log(VOCAB)  # it learned something of the walk
        assert rec["summary"]["final_eval_loss"] == pytest.approx(rows[-1]["eval_loss"])


def test_the_sweep_fits_a_law_with_finite_parameters(sweep):
    spec, outcome = sweep
    doc = json.loads((outcome.sweep_dir / "fit.json").read_text())
    assert doc["law"] is not None, doc["warnings"]
    assert all(math.isfinite(v) for v in doc["law"]["params"].values())
    assert len(doc["cells"]) == 6
    (prop,) = doc["proposals"]
    assert prop["N"] > 0 and math.isfinite(prop["predicted_loss"])
