"""benchmarks.efficiency lays its grid from a prior, never from the world it scores on (issue 13)."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml

from benchmarks.efficiency import (PUBLISHED_C_RANGE, benchmark_spec, prior_distance, prior_for,
                                   run_benchmark)
from trainers.worlds import load_world

ROOT = Path(__file__).resolve().parents[3]


def _no_trainer(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "trainer"}


def _odd_tiny(tmp_path: Path) -> Path:
    """tiny's user-facing ranges (same scale, same target) with very different laws: another truth."""
    d = yaml.safe_load((ROOT / "trainers/worlds/tiny.yaml").read_text())
    d["name"] = "odd"
    d["lr"].update(coef=100.0, N_exp=-0.3)
    d["batch"].update(coef=7.0, D_exp=0.4)
    d["loss"].update(A=40.0, B=30.0)
    d["noise"]["ref_tokens"] = 12345
    d["reference_schedule"] = {"kind": "constant", "warmup": 0.1}
    p = tmp_path / "odd.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_swapping_the_truth_gives_the_same_grid(tmp_path):
    odd = _odd_tiny(tmp_path)
    docs = [run_benchmark(ref, 1e17, 1, ("full_grid",), quick=True) for ref in ("tiny", "bent", str(odd))]
    specs = [d["grid"]["spec"] for d in docs]
    assert specs[0] == specs[1] == specs[2]
    assert docs[0]["grid"]["trials"] == docs[1]["grid"]["trials"] == docs[2]["grid"]["trials"]
    # ... while the truths, their optima and the prior's distance from them differ.
    assert len({d["world"]["fingerprint"] for d in docs}) == 3
    assert len({d["true_optimum"]["lr"] for d in docs}) == 3
    dist = [d["prior"]["distance_at_target"]["lr_star_ratio"] for d in docs]
    assert dist[0] == pytest.approx(1.0) and dist[1] != pytest.approx(1.0) and dist[2] != pytest.approx(1.0)
    # The spec a strategy sees differs only in which world simulates its trials.
    a = benchmark_spec(prior_for(None, 1e17)[0], "tiny", 1e17, 0)
    b = benchmark_spec(prior_for(None, 1e17)[0], str(odd), 1e17, 0)
    assert _no_trainer(a) == _no_trainer(b) and a["trainer"] != b["trainer"]


def test_default_prior_is_the_published_laws_rescaled_only_outside_their_range():
    chin = load_world("chinchilla")
    p22, info22 = prior_for(None, 1e22)
    assert info22["rescale_k"] == 1.0 and p22.loss == chin.loss and p22.lr == chin.lr and p22.batch == chin.batch
    p17, info17 = prior_for(None, 1e17)
    k = info17["rescale_k"]
    assert k == pytest.approx(math.sqrt(PUBLISHED_C_RANGE[0] / 1e17))
    # The rescaled surface at the target is the published one at the range's edge (N, D × k).
    assert p17.loss_star(1e6, 2e7) == pytest.approx(chin.loss_star(k * 1e6, k * 2e7), rel=1e-12)
    o = p17.optimum(1e17)
    e = chin.optimum(PUBLISHED_C_RANGE[0])
    assert o["D"] / o["N"] == pytest.approx(e["D"] / e["N"], rel=1e-9)
    # lr*(N, D) and batch*(D) are formulas in N and D: applied as published, not moved.
    assert p17.lr == chin.lr and p17.batch == chin.batch
    assert prior_for(None, 1e27)[1]["rescale_k"] == pytest.approx(math.sqrt(1e25 / 1e27))


def test_prior_file_world_or_rule(tmp_path):
    rule = tmp_path / "rule.yaml"
    rule.write_text(yaml.safe_dump({"name": "my-rule", "lr": {"coef": 3.58, "N_exp": -0.713, "D_exp": 0.307}}))
    pr, info = prior_for(str(rule), 1e17)
    assert info["kind"] == "rule file" and info["sections"] == ["lr"]
    default = prior_for(None, 1e17)[0]
    assert pr.lr.coef == 3.58 and pr.batch == default.batch and pr.loss == default.loss
    a, b = (benchmark_spec(x, "tiny", 1e17, 0) for x in (default, pr))
    assert b["learning_rates"] == pytest.approx([2 * x for x in a["learning_rates"]], rel=1e-3)
    assert b["batch_sizes"] == a["batch_sizes"]
    bent, info = prior_for("bent", 1e17)  # a world: used as it is
    assert info["kind"] == "world" and bent == load_world("bent")


def test_prior_distance_at_the_target():
    prior, _ = prior_for(None, 1e17)
    d = prior_distance(prior, load_world("bent"), 1e17)
    t = load_world("bent").optimum(1e17)
    assert d["lr_star_ratio"] == pytest.approx(float(prior.lr_star(t["N"], t["D"])) / t["lr"])
    assert d["lr_star_ratio"] > 1.3  # the bent world's lr* at the target is below Step Law's
    assert d["tokens_per_param_true"] == pytest.approx(t["D"] / t["N"])
    tiny = prior_distance(prior, load_world("tiny"), 1e17)
    assert tiny["lr_star_ratio"] == pytest.approx(1.0) and tiny["batch_star_ratio"] == pytest.approx(1.0)


def test_several_worlds_in_one_run_write_each_and_a_summary(tmp_path):
    import json

    from benchmarks.efficiency import main

    out = tmp_path / "eff.json"
    main(["--world", "tiny,repeated", "--quick", "--seeds", "1", "--strategies", "full_grid", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert set(doc["worlds"]) == {"tiny", "repeated"}
    assert [r["world"] for r in doc["summary"]] == ["tiny", "repeated"]
    for name in ("tiny", "repeated"):
        one = json.loads((tmp_path / f"eff-{name}.json").read_text())
        assert one["strategies"]["full_grid"]["regret"] == doc["worlds"][name]["strategies"]["full_grid"]["regret"]
    # Same user-facing ranges, same prior: the same grid for both truths.
    assert doc["worlds"]["tiny"]["grid"]["spec"] == doc["worlds"]["repeated"]["grid"]["spec"]
    row = doc["summary"][1]
    assert row["prior_tpp"] == pytest.approx(2.08 * row["true_tpp"], rel=0.01)  # documented in docs/worlds.md
