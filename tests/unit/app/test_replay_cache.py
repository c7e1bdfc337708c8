"""The search replay's cache (orchestrator/app/replay_cache.py): `propose` and `status` on a law-guided sweep
answer from the cache exactly as from a replay, a changed store, spec or file means a replay, and a
cache file is data that never names code outside the package.

tests/data/transfer_sweep: a `transfer` sweep of the simulated tiny world, recorded by this module's
`drive` (see tests/data/SOURCES.md; regenerate with `python -m tests.unit.app.test_replay_cache DIR`).
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.app import query, replay_cache
from orchestrator.app.cli import get_app
from orchestrator.config.spec import load_spec
from orchestrator.io.store import ObservationStore

RECORDED = Path(__file__).resolve().parents[2] / "data" / "transfer_sweep"
runner = CliRunner()


def drive(d: Path) -> None:
    """The recorded sweep: a transfer search driven to its end one trial at a time (as test_search_query
    drives a law search), its store compacted."""
    from tests.unit.app.test_search_query import _drive

    _, store, _ = _drive(d, concurrency=1, strategy="transfer")
    store.compact()
    store.close()


def _copy(src: Path, d: Path) -> Path:
    shutil.copytree(src, d)
    spec = yaml.safe_load((d / "spec.yaml").read_text())
    (d / "spec.yaml").write_text(yaml.safe_dump({**spec, "output_dir": str(d)}))
    return d


def _answer(d: Path) -> tuple[query.SearchReplay, list[dict]]:
    spec = load_spec(d / "spec.yaml")
    data = query.SweepData.read(ObservationStore(d))
    fit = query.propose(data, spec, [1e14, 1e15])
    return query.search_replay(data, spec), fit.proposals


@pytest.fixture(scope="module")
def replays():
    """Counts the search replays (each resumes a fresh planner)."""
    from orchestrator.core.planning.search.planner import LawGuidedPlanner

    calls: list[int] = []
    real = LawGuidedPlanner.resume
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LawGuidedPlanner, "resume", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
        yield calls


@pytest.fixture(scope="module")
def cached(tmp_path_factory, replays):
    """The recorded sweep after one `propose`: replayed once, its cache written."""
    d = _copy(RECORDED, tmp_path_factory.mktemp("cache") / "transfer")
    before = len(replays)
    replayed, proposals = _answer(d)
    assert len(replays) == before + 1 and (d / replay_cache.CACHE_FILE).is_file()
    return d, replayed, proposals


def test_a_cached_replay_answers_as_the_replay(cached, replays):
    d, replayed, first = cached
    before = len(replays)
    again, second = _answer(d)
    assert len(replays) == before  # answered from the cache: no replay
    assert second == first  # proposals with the search's lr, batch and their intervals, to the bit
    assert (again.done, again.next_trials) == (replayed.done, replayed.next_trials)
    assert replayed.done and first[0]["intervals"]["lr"]  # a finished transfer search, laws with intervals
    # the CLI reads the same file
    r = runner.invoke(get_app(), ["propose", str(d), "--json", "--budget", "1e14", "--budget", "1e15"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == json.loads(json.dumps(first))
    r = runner.invoke(get_app(), ["status", str(d)])
    assert r.exit_code == 0, r.output
    assert f"search (transfer): ended: {replayed.done}" in r.stdout.splitlines()
    assert len(replays) == before


def test_a_changed_store_is_replayed(cached, replays, tmp_path):
    d = _copy(cached[0], tmp_path / "transfer")  # with its cache file
    store = ObservationStore(d, fsync=False)  # one more ended trial: another key
    store.append("extra-trial", {"step": 1, "tokens": 1e6, "flops": 6e10, "eval_loss": 3.0, "done": 1.0})
    store.set_status("extra-trial", "diverged", config={"N": 10000, "D": 1e6, "lr": 0.3, "batch": 1024})
    store.close()
    before = len(replays)
    _answer(d)
    assert len(replays) == before + 1


@pytest.mark.parametrize("damage", ["not json", "another key", "another format", "foreign class", "bad array"])
def test_a_damaged_cache_file_is_not_used(cached, tmp_path, damage):
    d, replayed, _ = cached
    doc = json.loads((d / replay_cache.CACHE_FILE).read_text())
    spec = load_spec(d / "spec.yaml")
    assert replay_cache.load(d, doc["key"], spec)[1:] == (replayed.next_trials, replayed.done)  # undamaged: used
    where = tmp_path / "d"
    where.mkdir()
    if damage == "not json":
        (where / replay_cache.CACHE_FILE).write_text("{")
    else:
        if damage == "another key":
            doc["key"] = "0" * 64
        elif damage == "another format":
            doc["format"] = replay_cache.FORMAT + 1
        elif damage == "foreign class":  # a file naming code outside the package is refused, never imported
            doc["advice"]["hparams"] = {"__object__": "subprocess:Popen", "state": {}}
        else:
            doc["advice"]["hparams"]["state"]["surface_"]["fields"]["cov"]["shape"] = [7, 7]
        (where / replay_cache.CACHE_FILE).write_text(json.dumps(doc))
    key = doc["key"] if damage != "another key" else json.loads((d / replay_cache.CACHE_FILE).read_text())["key"]
    assert replay_cache.load(where, key, spec) is None


def test_the_key_follows_the_spec_the_ended_trials_and_the_started_ones():
    base = replay_cache.replay_key('{"a": 1}', {"t1": {"eval_loss": 2.5}}, {"t2"})
    assert base == replay_cache.replay_key('{"a": 1}', {"t1": {"eval_loss": 2.5}}, {"t2"})
    assert base != replay_cache.replay_key('{"a": 2}', {"t1": {"eval_loss": 2.5}}, {"t2"})
    assert base != replay_cache.replay_key('{"a": 1}', {"t1": {"eval_loss": math.nan}}, {"t2"})
    assert base != replay_cache.replay_key('{"a": 1}', {"t1": {"eval_loss": 2.5}}, set())


def test_encode_refuses_what_is_not_data():
    import subprocess

    for value in (subprocess, print, {1: 2}, object()):
        with pytest.raises(TypeError):
            replay_cache.encode(value)
    with pytest.raises(TypeError, match="not a class of this package"):
        replay_cache.decode({"__object__": "os:_wrap_close", "state": {}})
    assert replay_cache.decode(replay_cache.encode({"x": (math.inf, -0.0)})) == {"x": (math.inf, -0.0)}


def test_doctests():
    import doctest

    result = doctest.testmod(replay_cache, report=False)
    assert result.attempted > 0 and result.failed == 0


if __name__ == "__main__":
    drive(Path(sys.argv[1]))
