"""Spec validation: every bad input names its field, exits 2, and starts nothing."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.app.cli import get_app
from orchestrator.core.planning import Done
from orchestrator.core.planning import WAIT
from orchestrator.config.planners import GridPlanner
from orchestrator.config.trials import plan_grid
from orchestrator.config.spec import SpecError, load_spec, parse_spec

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "tiny.yaml"


def base() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_spec_is_valid_and_plans_the_grid():
    spec = load_spec(EXAMPLE)
    trials = plan_grid(spec)
    assert len(trials) == 4 * 4
    assert len({t.N for t in trials}) == 4 and len({t.cell for t in trials}) == 4 * 4 and len({t.lr for t in trials}) == 1
    # every size sees the same token budgets: 94 (the largest size) to 1,680 (the smallest) tokens per parameter
    assert {round(t.cell.D, -3) for t in trials} == {3_000_000, 4_000_000, 5_300_000, 7_000_000}
    assert all(90 <= t.D / t.N <= 1700 for t in trials)
    assert [t.flops for t in trials] == sorted(t.flops for t in trials)
    for t in trials:
        # the example branches WSD cooldowns: a branch spends its decay only, its trunk the rest
        assert t.flops + t.branch_flops == pytest.approx(6 * t.N * t.D)
        assert (t.branch_of is not None) == (t.cell.D < 6_000_000)
        assert t.D % t.batch == 0  # whole batches
        assert 0.8 < t.N / t.n_target < 1.25


def _set(d: dict, dotted: str, value) -> dict:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = value
    return d


BAD = [
    ("unknown field", lambda d: d.update(learning_rate=[1e-3]), "learning_rate: unknown field"),
    ("nested unknown", lambda d: _set(d, "model.width", 3), "model.width: unknown field"),
    ("wrong type", lambda d: _set(d, "eval.every", "often"), "eval.every"),
    ("empty N", lambda d: _set(d, "model.n_params", []), "model.n_params"),
    ("empty lrs", lambda d: d.update(learning_rates=[]), "learning_rates"),
    ("negative lr", lambda d: d.update(learning_rates=[1e-3, -1e-3]), "learning_rates"),
    ("zero batch", lambda d: d.update(batch_sizes=[0]), "batch_sizes"),
    ("non-positive N", lambda d: _set(d, "model.n_params", [0, 1000]), "model.n_params"),
    ("both token forms", lambda d: _set(d, "tokens.per_param", [20]), "tokens"),
    ("range reversed", lambda d: _set(d, "model.n_params", {"min": 1e6, "max": 1e4, "count": 3}), "model.n_params"),
    ("budget below smallest trial", lambda d: _set(d, "budget.total_flops", 1e6), "budget.total_flops"),
    ("target below smallest trial", lambda d: _set(d, "budget.targets", [1e6]), "budget.targets"),
    ("bad zero stage", lambda d: _set(d, "resources.zero_stage", 5), "resources.zero_stage"),
    ("missing model", lambda d: d.pop("model"), "model: Field required"),
    ("bad schedule", lambda d: _set(d, "schedule.kind", "linear"), "schedule.kind"),
    ("negative seed list empty", lambda d: d.update(seeds=[]), "seeds"),
]


@pytest.mark.parametrize("label,mutate,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_spec_names_the_field(label, mutate, needle):
    data = base()
    mutate(data)
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert needle in str(err.value)


@pytest.mark.parametrize("label,mutate,needle", BAD[:4] + BAD[10:11], ids=[b[0] for b in BAD[:4] + BAD[10:11]])
def test_cli_exits_2_and_starts_nothing(tmp_path, label, mutate, needle):
    data = base()
    data["output_dir"] = str(tmp_path / "sweep")
    mutate(data)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(get_app(), ["run", str(path), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not (tmp_path / "sweep").exists()  # nothing was started


def test_cli_missing_file_and_bad_yaml(tmp_path):
    app = get_app()
    r = CliRunner().invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "no such spec file" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    r = CliRunner().invoke(app, ["run", str(bad)])
    assert r.exit_code == 2 and "not valid YAML" in r.output


def test_budget_caps_the_grid():
    data = base()
    full = plan_grid(parse_spec(data))
    total = sum(t.flops for t in full)
    _set(data, "budget.total_flops", total / 3)
    planner = GridPlanner(parse_spec(data))
    run = planner.runnable()
    assert 0 < len(run) < len(full)
    assert sum(t.flops for t in run) <= total / 3
    handed = []
    while not isinstance(t := planner.next_trial(), Done):
        assert t != WAIT  # each trial below ends before the next is asked for
        handed.append(t)
        planner.observe(t.trial_id, {"step": t.D // t.batch})  # it ran to its end
    assert [t.trial_id for t in handed] == [t.trial_id for t in run]
    # a WSD branch is run only with its trunk (the example branches its cooldowns)
    ids = {t.trial_id for t in handed}
    assert all(t.branch_of in ids for t in handed if t.branch_of)


def test_resource_rules_pick_workers_and_stage():
    data = base()
    data["resources"]["rules"] = [{"min_n_params": 20000, "workers": 2, "zero_stage": 3}]
    spec = parse_spec(data)
    by_n = {t.n_target: (t.workers, t.zero_stage) for t in plan_grid(spec)}
    assert by_n[32000] == (2, 3)
    assert by_n[4000] == (1, 0)  # auto: stage 0 for one worker


def test_spec_reference_doc_is_current():
    from orchestrator.config.spec import reference_markdown

    doc = (Path(__file__).resolve().parents[3] / "docs" / "spec.md").read_text()
    assert doc.strip() == reference_markdown().strip(), "regenerate docs/spec.md (see its first lines)"
