"""What a user sees of a small simulated sweep: the CLI piped to a file (run, status, propose,
fit) and the sweep's MLflow experiment opened with MlflowClient (law metrics per refit, the
proposals table, summary.md with the warnings, useful_work_fraction <= 1, run names, distinct
outcomes, only real metrics charted).

One real sweep (Ray Tune on a 2-CPU local cluster, the simulated trainer, MLflow on SQLite),
run and then resumed through the CLI; seconds, not minutes. It is conftest.py's `viewed_sweep`,
which test_report.py reads too (its report adds only report/ files and artifacts).
"""
from __future__ import annotations

import csv
import json
import re

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.app.cli import get_app
from orchestrator.io.tracking import OUTCOMES, read_sweep_runs

pytestmark = pytest.mark.integration

# box-drawing table lines of rich (any style): every line of one table has the same width
_TABLE_CHARS = set("┏┃┡│└┗┣┠╭╰|+")


@pytest.fixture(scope="module")
def sweep(viewed_sweep):
    """The shared sweep of conftest.py, run with `scalesweep run` then `scalesweep resume`."""
    return viewed_sweep


def _check_whole(text: str) -> None:
    """Nothing cut (rich's ellipsis), and each table's lines aligned (one width per table)."""
    assert "…" not in text, text
    assert not re.search(r"e[+-]\.\.\.|\.\.\.\s*[│┃]", text), text
    block: list[str] = []
    for line in text.splitlines() + [""]:
        if line[:1] in _TABLE_CHARS:
            block.append(line)
            continue
        if block:
            assert len({len(b) for b in block}) == 1, "\n".join(block)
            block = []


def test_run_output_is_whole_and_has_units(sweep):
    text = sweep["run"]
    _check_whole(text)
    # Ray Tune's own start box and results path (its searcher, scheduler, trial cap, ray/ folder) are not the
    # user's: the controller logs them; the sweep directory is printed at the end
    for tune_text in ("Configuration for experiment", "View detailed results here", "Search algorithm"):
        assert tune_text not in text and tune_text not in sweep["resumed"], text
    assert f"sweep directory: {sweep['dir']}" in text
    # its end names every state, as `status` does (here all 18 trials ran)
    assert ("done in" in text and "0 pending, 0 running, 12 finished, 0 pruned, 6 diverged, 0 failed, "
            "0 stopped by the user, 0 never started") in text, text
    fit = json.loads((sweep["dir"] / "fit.json").read_text())
    for p in fit["proposals"]:
        # integers as integers, each interval end in k/M
        assert f"{round(p['N']):,}" in text and f"{round(p['D']):,}" in text, text
        assert f"{p['batch']:,}" in text
        assert f"{p['predicted_loss']:.4f}" in text
    for unit in ("budget C (FLOPs)", "N* (params)", "D* (tokens)", "batch (tokens)", "(nats/token)"):
        assert unit in text, unit
    # lr has no interval in this sweep: no interval column beside it, no brackets in its cells
    header = next(line for line in text.splitlines() if "N* (params)" in line)
    cols = [c.strip() for c in re.split(r"[┃│|]", header) if c.strip()]
    assert cols[cols.index("lr") + 1] == "batch (tokens)", cols


def test_status_propose_fit_piped(sweep):
    runner, app = CliRunner(), get_app()
    r = runner.invoke(app, ["status", str(sweep["dir"])])
    assert r.exit_code == 0, r.output
    _check_whole(r.stdout)
    status = json.loads(runner.invoke(app, ["status", str(sweep["dir"]), "--json"]).stdout)
    for t in status["trials"]:
        assert t["trial_id"] in r.stdout  # whole ids, not `N19800-…`
        assert f"{t['N']:,}" in r.stdout and f"{t['D']:,}" in r.stdout

    r = runner.invoke(app, ["propose", str(sweep["dir"]), "--budget", "3e13", "--bootstrap", "10"])
    assert r.exit_code == 0, r.output
    _check_whole(r.stdout)
    (prop,) = json.loads(runner.invoke(app, ["propose", str(sweep["dir"]), "--budget", "3e13", "--bootstrap", "10",
                                             "--json"]).stdout)
    assert f"{round(prop['N']):,}" in r.stdout and "3e+13" in r.stdout

    cells = json.loads((sweep["dir"] / "fit.json").read_text())["cells"]
    table = sweep["root"] / "cells.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["N", "D", "loss"])
        w.writerows([c["N"], c["D"], c["loss"]] for c in cells)
    r = runner.invoke(app, ["fit", str(table), "--law", "auto", "--bootstrap", "10"])
    assert r.exit_code == 0, r.output
    _check_whole(r.stdout)
    assert "candidate forms" in r.stdout and "only 2 distinct D value(s)" in r.stdout


def test_mlflow_parent_run_tells_the_sweep(sweep):
    uri = f"sqlite:///{sweep['dir'] / 'mlflow.db'}"
    parent, children = read_sweep_runs(uri, "view")
    client = MlflowClient(uri)
    pid = parent.info.run_id
    fit = json.loads((sweep["dir"] / "fit.json").read_text())
    law = fit["law"]

    # the law per refit: a metric per parameter, one point per refit (run + resume), latest = fit.json
    assert law["params"]
    for name, value in law["params"].items():
        hist = client.get_metric_history(pid, f"law.{name}")
        assert sorted(m.step for m in hist) == [0, 1], (name, hist)
        assert parent.data.metrics[f"law.{name}"] == pytest.approx(value)
    # each parameter's interval (fit.bootstrap 20: quantiles over the chosen form's replicates) per refit too,
    # its latest value fit.json's; a parameter without an interval (held fixed by the form) has no such metric
    ivs = {p: iv for p, iv in (law.get("intervals") or {}).items() if p in law["params"]}
    assert ivs and {iv["level"] for iv in ivs.values()} == {sweep["spec"].fit.level}
    for name in law["params"]:
        for side in ("low", "high"):
            key = f"law.{name}.{side}"
            if name not in ivs:
                assert key not in parent.data.metrics, key
                continue
            assert sorted(m.step for m in client.get_metric_history(pid, key)) == [0, 1], key
            assert parent.data.metrics[key] == pytest.approx(ivs[name][side])
        if name in ivs:
            assert parent.data.metrics[f"law.{name}.low"] < parent.data.metrics[f"law.{name}.high"]
    assert not any(k.startswith("law.") for k in parent.data.params)  # no immutable law params to conflict
    # one batch size: lr*(N, D) and batch*(D) cannot be fitted, so none is logged (a recorded sweep that tried
    # 3 batches logs them: tests/unit/app/test_sweep_summary_mlflow.py)
    assert not any(k.startswith("hparam.") for k in parent.data.metrics), parent.data.metrics
    assert parent.data.tags["scalesweep.law.form"] == law["form"]
    assert parent.data.tags["scalesweep.law.reason"] == law["selection"]["reason"]

    # useful work: seconds training / (wall x slots), a fraction
    uwf = client.get_metric_history(pid, "useful_work_fraction")
    assert len(uwf) == 2 and all(0.0 <= m.value <= 1.0 for m in uwf), uwf
    assert parent.data.metrics["slots"] >= 1

    # the proposals table, rendered by the UI (listed in mlflow.loggedArtifacts)
    assert {"path": "tables/proposals.json", "type": "table"} in json.loads(parent.data.tags["mlflow.loggedArtifacts"])
    path = client.download_artifacts(pid, "tables/proposals.json", str(sweep["root"]))
    table = json.loads(open(path).read())
    assert len(table["data"]) == len(fit["proposals"]) == 2  # replaced on the refit, not appended
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    for row, p in zip(rows, fit["proposals"]):
        assert row["N (params)"] == round(p["N"]) and row["batch (tokens)"] == p["batch"]
        assert row["predicted loss (nats/token)"] == pytest.approx(p["predicted_loss"])
        assert row["loss low"] <= row["predicted loss (nats/token)"] <= row["loss high"]

    # summary.md: the form and why, the backtests, every warning, the proposals
    path = client.download_artifacts(pid, "summary.md", str(sweep["root"]))
    md = open(path).read()
    assert f"## Law: {law['form']}" in md and law["selection"]["reason"] in md
    assert "## Proposals" in md
    bts = law["selection"]["candidates"][law["form"]].get("backtests") or {}
    assert ("## Backtests" in md) == any("mean_abs_rel_error" in bt for bt in bts.values())
    ws = list(dict.fromkeys(law.get("warnings", []) + fit.get("warnings", [])))
    assert ws  # this design is warned about (two token counts)
    assert int(parent.data.tags["scalesweep.n_warnings"]) == len(ws)
    for w in ws:
        assert w in md and w in parent.data.tags["scalesweep.warnings"]

    # one experiment per sweep, named after it
    assert MlflowClient(uri).get_experiment(parent.info.experiment_id).name == "view"
    assert parent.info.status == "FINISHED" and parent.data.tags["scalesweep.outcome"] == "finished"

    # each trial's end: the store's status, a distinct outcome tag, the documented MLflow status
    status = json.loads(CliRunner().invoke(get_app(), ["status", str(sweep["dir"]), "--json"]).stdout)
    store = {t["trial_id"]: t["status"] for t in status["trials"]}
    outcomes = {}
    for c in children:
        tid = c.data.tags["scalesweep.trial_id"]
        assert c.data.tags["scalesweep.status"] == store[tid]
        outcome, mlflow_status = OUTCOMES[store[tid]]
        assert (c.data.tags["scalesweep.outcome"], c.info.status) == (outcome, mlflow_status), tid
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        # only real metrics are charted: no `done` flag, no `step` copy, no cumulative step time
        assert not {"done", "step", "step_time_s"} & set(c.data.metrics), c.data.metrics
        if outcome == "finished":
            assert c.data.metrics["train_s"] > 0
    assert outcomes == {"finished": 12, "diverged": 6}, outcomes

    # run names say what differs (size, tokens, and lr: the only setting that varies here)
    names = {c.info.run_name for c in children}
    assert len(names) == len(children) == 18
    for c in children:
        p = c.data.params
        assert c.info.run_name.startswith("N") and " D" in c.info.run_name
        assert f"lr{float(p['lr']):.3g}" in c.info.run_name and " b" not in c.info.run_name


def test_proposals_in_an_80_column_terminal(sweep, monkeypatch):
    """In a terminal of 80 columns headers and intervals wrap, but no value is cut or pushed past the edge."""
    import io

    from rich.console import Console

    from orchestrator.app.cli import fit_output, output

    buf = io.StringIO()
    monkeypatch.setattr(output, "make_console",
                        lambda stderr=False: Console(file=buf, force_terminal=True, width=80, color_system=None))
    doc = json.loads((sweep["dir"] / "fit.json").read_text())
    fit_output.print_fit(doc)
    text = buf.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines()), text
    table = text[text.index("compute-optimal proposals"):text.index("model shape")]
    assert "…" not in table, table
    for p in doc["proposals"]:
        assert f"{round(p['N']):,}" in table and f"{round(p['D']):,}" in table
        assert f"{p['predicted_loss']:.4f}" in table and f"{p['batch']:,}" in table


def test_the_column_picker_lists_only_keys_that_say_something(sweep):
    """The runs table's column picker lists every param and metric key of the experiment (MLflow cannot
    set its default columns; docs/mlflow.md). The sweep's run logs the spec fields the user set, a trial's
    its planned fields that have a value: on this sweep fewer keys in all than the spec's defaults alone."""
    from dataclasses import fields

    from orchestrator.config.trials import PlannedTrial
    from orchestrator.io.tracking.layout import flatten_params

    spec = sweep["spec"]
    parent, children = read_sweep_runs(spec.tracking_uri(), spec.name)
    spec_set = json.loads((sweep["dir"] / "sweep.json").read_text())["spec_set"]
    assert set(parent.data.params) == set(flatten_params(spec_set))
    planned = {f.name for f in fields(PlannedTrial)}
    trial_keys: set[str] = set()
    for c in children:
        assert not {"None", "[]"} & set(c.data.params.values()), c.data.params
        assert {k.split(".")[0] for k in c.data.params} <= planned
        trial_keys |= set(c.data.params)
    metrics = set(parent.data.metrics).union(*(c.data.metrics for c in children))
    keys = set(parent.data.params) | trial_keys | metrics
    assert len(keys) < len(flatten_params(spec.model_dump(mode="json"))), sorted(keys)
    assert not any(k.startswith("branch_") for k in trial_keys)  # no WSD branch in this sweep


def _in_a_terminal(*args: str, columns: int = 80) -> str:
    """`scalesweep ARGS` in a pseudo-terminal of `columns` columns (its own process): what it shows."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios
    from pathlib import Path

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "COLUMNS", "LINES")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.app.cli", *args], stdin=child, stdout=child,
                            stderr=child, env=env, close_fds=True)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=120) == 0, out.decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.decode()).replace("\r", "")


def test_status_propose_validate_in_an_80_column_terminal(sweep):
    """Issue 17: in a terminal of 80 columns no line is wider than the terminal and nothing is cut: every
    trial id and count whole; a table too wide for that prints one `header: value` block per row."""
    status = json.loads(CliRunner().invoke(get_app(), ["status", str(sweep["dir"]), "--json"]).stdout)
    (prop,) = json.loads(CliRunner().invoke(get_app(), ["propose", str(sweep["dir"]), "--budget", "3e13",
                                                        "--bootstrap", "10", "--json"]).stdout)
    spec_file = sweep["root"] / "spec.yaml"
    for args in (["status", str(sweep["dir"])], ["propose", str(sweep["dir"]), "--budget", "3e13", "--bootstrap", "10"],
                 ["validate", str(spec_file)], ["validate", str(spec_file), "--trials"]):
        text = _in_a_terminal(*args)
        assert "…" not in text and all(len(line) <= 80 for line in text.splitlines()), text
        if args[0] == "status":
            for t in status["trials"]:
                assert f"trial: {t['trial_id']}" in text  # whole ids, not `N19800-…`
                assert f"N (params): {t['N']:,}" in text and f"D (tokens): {t['D']:,}" in text
        if args[0] == "propose":
            assert "3e+13" in text and f"{round(prop['N']):,}" in text and f"{round(prop['D']):,}" in text
        if args[-1] == "--trials":
            assert all(f"trial: {t['trial_id']}" in text for t in status["trials"]), text
