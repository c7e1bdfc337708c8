"""The spec's resource plan: `resources: auto` plans each trial with cluster/resources.py, manual
values are checked against its memory model before launch, and proposals carry their plan."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cluster.resources import DEVICES, GiB, ZeroBuffers
from orchestrator.app.cli import get_app
from orchestrator.config.planners import GridPlanner
from orchestrator.config.trials import check_resources, plan_grid, proposal_resources, trial_config
from orchestrator.core.proposals import fit_and_propose
from orchestrator.config.spec import GPU_DEVICES, SpecError, parse_spec
from orchestrator.io.store import ObservationStore

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "tiny.yaml"
BATCH_4M = 4 * 2**20


def tiny(**over) -> dict:
    data = yaml.safe_load(EXAMPLE.read_text())
    data.update(over)
    return data


def gpu_spec(resources: dict, n_params: list[float], seq_len: int = 2048, batch: int = 2**20) -> dict:
    return tiny(model={"n_params": n_params, "seq_len": seq_len}, batch_sizes=[batch],
                tokens={"values": [batch * 8]}, budget={}, resources=resources)


def by_n(spec) -> dict[int, tuple]:
    return {t.n_target: (t.workers, t.zero_stage, t.micro_batch, t.grad_accum) for t in plan_grid(spec)}


# ---- existing specs are unchanged --------------------------------------------------------


def test_default_manual_cpu_spec_plans_exactly_as_before():
    spec = parse_spec(tiny())
    assert spec.resources.plan == "manual"
    for t in plan_grid(spec):
        # the unnamed default CPU is this machine: not checked by the spec alone, values as given
        assert (t.workers, t.zero_stage, t.micro_batch, t.memory_gib) == (1, 0, None, None)
        cfg = trial_config(spec, t, None, None)
        assert (cfg.workers, cfg.zero_stage, cfg.micro_batch) == (1, 0, None)
    check_resources(spec)  # the tiny example fits this machine


# ---- plan: auto ---------------------------------------------------------------------------


def test_resources_auto_shorthand_plans_cpu_trials():
    spec = parse_spec(tiny(resources="auto"))
    assert spec.resources.plan == "auto" and spec.resources.device is None
    for t in plan_grid(spec):
        # tiny models: one worker, no sharding, the whole share of 16 sequences in one micro-step
        assert (t.workers, t.zero_stage, t.micro_batch, t.grad_accum) == (1, 0, 16, 1)
        assert 0 < t.memory_gib < 2
        cfg = trial_config(spec, t, None, None)
        assert (cfg.workers, cfg.zero_stage, cfg.micro_batch) == (t.workers, t.zero_stage, t.micro_batch)


def test_auto_on_a_small_cpu_shrinks_the_micro_batch():
    data = tiny(model={"n_params": [20000, 1000000], "seq_len": 1024}, batch_sizes=[1024 * 64],
                tokens={"values": [1024 * 64 * 4]}, budget={},
                resources={"plan": "auto", "device": "cpu", "device_memory_gb": 1.0})
    plans = by_n(parse_spec(data))
    workers, stage, micro, accum = plans[1000000]
    assert micro < 64 and micro * accum * workers == 64
    assert plans[20000][2] >= micro  # the smaller model takes at least as large a micro-batch


def test_auto_on_h100_for_a_few_sizes():
    spec = parse_spec(gpu_spec({"plan": "auto", "device": "h100-80gb"}, [1e6, 1e8, 1e9]))
    assert spec.resources.use_gpu  # a GPU device implies one GPU per worker
    plans = {t.n_target: t for t in plan_grid(spec)}
    seqs = 2**20 // 2048
    for t in plans.values():
        assert t.workers * t.micro_batch * t.grad_accum == seqs
        assert t.memory_gib <= 80
        assert (t.workers, t.zero_stage) == (1, 0)  # up to 1B on one 80 GB card, plain data parallelism
    micros = [plans[n].micro_batch for n in sorted(plans)]
    assert micros == sorted(micros, reverse=True) and micros[0] > micros[-1]  # bigger model, smaller micro


def test_planted_7b_at_4m_batch_on_80gb_gpus_needs_sharding_or_workers():
    # Known answer: mixed-precision Adam states of 7B parameters are ~16 bytes/param ≈ 104 GiB,
    # more than one 80 GB card: ZeRO >= 2 or several workers (without recomputation: both).
    data = gpu_spec({"plan": "auto", "device": "h100-80gb"}, [7e9], seq_len=4096, batch=BATCH_4M)
    (t,) = {t.n_target: t for t in plan_grid(parse_spec(data))}.values()
    assert t.workers > 1 and t.zero_stage >= 1
    assert t.workers * t.micro_batch * t.grad_accum == BATCH_4M // 4096
    assert t.memory_gib <= 80
    # pinned to one worker it cannot fit, whatever the stage
    one = gpu_spec({"plan": "auto", "device": "h100-80gb", "workers": 1}, [7e9], seq_len=4096, batch=BATCH_4M)
    with pytest.raises(SpecError, match=r"resources\.workers=1") as err:
        parse_spec(one)
    msg = str(err.value)
    assert "N=7e+09" in msg and "optimizer states" in msg and "What would fit" in msg


def test_auto_keeps_explicit_values():
    data = gpu_spec({"plan": "auto", "device": "a100-80gb", "workers": 2, "zero_stage": 2}, [1e8])
    assert {v[:2] for v in by_n(parse_spec(data)).values()} == {(2, 2)}
    rules = gpu_spec({"plan": "auto", "device": "a100-80gb",
                      "rules": [{"min_n_params": 5e8, "workers": 4}]}, [1e7, 1e9])
    plans = by_n(parse_spec(rules))
    assert plans[1e9][0] == 4 and plans[1e7][0] == 1


# ---- plan: manual, checked ----------------------------------------------------------------


def test_manual_values_that_do_not_fit_name_trial_field_and_component():
    data = gpu_spec({"device": "a100-40gb", "workers": 1, "zero_stage": 0, "micro_batch": 512}, [1e6, 1e8])
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    msg = str(err.value)
    assert "resources:" in msg and "resources.micro_batch=512" in msg and "resources.zero_stage=0" in msg
    assert "N=1e+0" in msg and "batch 1048576 tokens" in msg
    assert "largest component: activations" in msg
    assert "What would fit: ZeRO-0 on 1 worker, micro-batch" in msg
    ok = gpu_spec({"device": "a100-40gb", "micro_batch": 16}, [1e6, 1e8])
    assert {v[2] for v in by_n(parse_spec(ok)).values()} == {16}


def test_manual_default_cpu_is_checked_against_this_machine(monkeypatch, tmp_path):
    data = tiny(output_dir=str(tmp_path / "sw"))
    spec = parse_spec(data)  # the spec alone: machine-independent
    monkeypatch.setattr("orchestrator.config.spec.machine_memory_bytes", lambda: 0.3 * GiB)
    with pytest.raises(SpecError, match="largest component"):
        check_resources(spec)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    r = CliRunner().invoke(get_app(), ["validate", str(path)])
    assert r.exit_code == 2 and "cannot run on cpu-1c" in r.output
    # a named memory is the spec's business
    with pytest.raises(SpecError, match="resources"):
        parse_spec(tiny(resources={"device_memory_gb": 0.3}))


def test_simulated_backend_is_not_checked_in_manual_mode():
    data = yaml.safe_load((EXAMPLE.parent / "simulated.yaml").read_text())
    data["resources"] = {"device": "cpu", "device_memory_gb": 0.01}
    spec = parse_spec(data)
    assert all(t.memory_gib is None for t in plan_grid(spec))


@pytest.mark.parametrize("resources, field", [
    ({"device": "tpu-v5"}, "resources.device"),
    ({"device": "cpu", "use_gpu": True}, "resources.device"),
    ({"device": "h100-80gb", "use_gpu": False}, "resources.use_gpu"),
    ({"plan": "auto", "use_gpu": True}, "resources.device"),
    ({"plan": "sometimes"}, "resources.plan"),
    ({"max_workers": 0}, "resources.max_workers"),
    ("everything", "resources"),
])
def test_bad_resources_name_the_field(resources, field):
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        parse_spec(tiny(resources=resources))


def test_unnamed_gpu_is_not_checked():
    spec = parse_spec(gpu_spec({"use_gpu": True, "workers": 1}, [1e9]))
    assert all(t.memory_gib is None for t in plan_grid(spec))
    assert proposal_resources(spec)(1e9, 2e10, 2**20)["error"]


def test_spec_devices_and_trainer_buckets_match_cluster_module():
    from trainers.deepspeed_trainer import deepspeed_config, make_plan
    from trainers.contract import TrialConfig

    assert GPU_DEVICES == tuple(DEVICES)
    cfg = TrialConfig("t", 20000, 4096 * 4, 1e-3, 4096, zero_stage=3)
    for n in (1000, 3_000_000, 10**9):
        zero = deepspeed_config(cfg, make_plan(cfg, 1, 256), False, n)["zero_optimization"]
        buf = ZeroBuffers.for_trainer(n)
        assert zero["reduce_bucket_size"] == buf.reduce_bucket_size
        assert zero["stage3_prefetch_bucket_size"] == buf.stage3_prefetch_bucket_size


# ---- proposals carry the plan ---------------------------------------------------------------


def _points(spec) -> list[dict]:
    """Finished trials whose loss follows a known Chinchilla law (lr/batch do not matter)."""
    out = []
    for t in plan_grid(spec):
        loss = 1.7 + 400.0 / t.N**0.34 + 410.0 / t.D**0.28
        out.append({**t.record(), "loss": loss})
    return out


def test_proposals_carry_the_resource_plan():
    spec = parse_spec(tiny(resources={"plan": "auto", "device": "h100-80gb"}))
    plan = proposal_resources(spec)
    fit = fit_and_propose(_points(spec), [1e14, 1e21], bootstrap=0, resources=plan)
    assert len(fit.proposals) == 2
    for p in fit.proposals:
        r = p["resources"]
        assert r["device"] == "h100-80gb" and r["fits"]
        assert r["workers"] * r["micro_batch"] * r["grad_accum"] == r["batch"] // spec.model.seq_len
        assert 0 < r["memory_gib"] <= 80 and r["memory"]["total"] == pytest.approx(r["memory_gib"] * GiB)
        assert r["device_hours"] > 0 and r["zero_stage"] in (0, 1, 2, 3)
    small, big = (p["resources"]["device_hours"] for p in fit.proposals)
    assert big > small * 1e5  # device-hours scale with the budget
    json.dumps(fit.to_json())  # JSON-ready
    # the planted 7B at a 4M-token batch on 80 GB cards: ZeRO >= 2 or several workers
    seven = plan(7e9, 1.4e11, BATCH_4M)
    assert seven["zero_stage"] >= 2 or seven["workers"] > 1
    assert seven["memory_gib"] <= 80 and seven["device_hours"] == pytest.approx(
        6 * 7e9 * 1.4e11 / (DEVICES["h100-80gb"].peak_flops * DEVICES["h100-80gb"].mfu) / 3600
        * (4 / 3 if seven["activation_checkpointing"] else 1), rel=0.02)
    # without a plan argument, proposals are as before
    assert "resources" not in fit_and_propose(_points(spec), [1e14], bootstrap=0).proposals[0]


def test_propose_cli_shows_the_plan(tmp_path):
    sweep = tmp_path / "sw"
    data = tiny(output_dir=str(sweep), resources={"plan": "auto", "device": "a100-80gb"})
    spec = parse_spec(data)
    sweep.mkdir()
    (sweep / "spec.yaml").write_text(yaml.safe_dump(data))
    store = ObservationStore(sweep)
    for p in _points(spec):
        store.set_status(p["trial_id"], "finished", config={k: v for k, v in p.items() if k != "loss"})
        store.append(p["trial_id"], {"step": 1, "tokens": p["D"], "flops": p["flops"], "eval_loss": p["loss"],
                                     "done": 1.0})
    store.flush()
    runner = CliRunner(env={"COLUMNS": "200"})
    r = runner.invoke(get_app(), ["propose", str(sweep), "--budget", "1e15", "--bootstrap", "0", "--json"])
    assert r.exit_code == 0, r.output
    (prop,) = json.loads(r.stdout)
    assert prop["resources"]["device"] == "a100-80gb" and prop["resources"]["workers"] >= 1
    r = runner.invoke(get_app(), ["propose", str(sweep), "--budget", "1e15", "--bootstrap", "0"])
    assert r.exit_code == 0 and "resource plan per proposal" in r.output and "device-hours" in r.output


def test_grid_planner_hands_out_planned_resources():
    spec = parse_spec(gpu_spec({"plan": "auto", "device": "a100-40gb", "max_workers": 4}, [1e9], batch=2**21))
    t = GridPlanner(spec).next_trial()
    assert t.memory_gib <= 40 and t.workers * t.micro_batch * t.grad_accum == 2**21 // 2048
    assert np.isfinite(t.flops)
