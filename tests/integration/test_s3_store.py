"""The observation store in an S3-compatible object store (issue 16), through pyarrow.fs against
moto's standalone server (a real HTTP S3 API in its own process) on loopback:

- round trip: reports, trial events and task metrics written by a store whose sweep directory
  points at s3://BUCKET/PREFIX read back identically through the URI alone (another machine, no
  shared path) and through the sweep directory; the parts are objects in the bucket and nothing
  but the pointer and the write-ahead log is local; compaction works there too;
- a killed controller: rows only in the local write-ahead log reach the bucket on `recover()`;
- a whole simulated sweep through the real controller with `store: s3://...`, then the same spec
  run from a fresh, empty sweep directory (a controller on another node): it reads what ended
  from the bucket, reruns nothing and fits the same points.

Skipped only when moto's server or boto3 is not installed (both in the `test` extra).
"""
from __future__ import annotations

import json

import pytest

from orchestrator.io.store import ended_trials
from orchestrator.io.store import LOCATION_FILE, ObservationStore, final_points
from tests.integration.conftest import SIM_SPEC, run_real_sweep
from tests.integration.services import s3_bucket

pytestmark = pytest.mark.integration

BUCKET = "scalesweep-store"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server with BUCKET, one per module (test_s3_checkpoints.py imports it too): each
    test writes under its own prefix, and a server start costs ~2 s of CPU."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with pytest.MonkeyPatch.context() as mp, s3_bucket(log, BUCKET, mp) as server:
        yield server


def _keys(s3, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    # ("": a folder marker pyarrow leaves when it deletes a folder's last child)
    return sorted(k for page in pages for o in page.get("Contents", []) if (k := o["Key"][len(prefix):]))


def _report(step: int, loss: float) -> dict:
    return {"step": step, "tokens": 1024 * step, "flops": 6e9 * step, "lr": 1e-3, "train_loss": loss,
            "eval_loss": loss + 0.1, "tokens_per_s": 1e5, "step_time_s": 0.01, "done": 0.0}


def _rows(store: ObservationStore) -> list[dict]:
    """Its reports as dicts, NaN as None (NaN != NaN)."""
    return [{k: None if v != v else v for k, v in r.items()} for r in store.observations().to_pylist()]


def test_store_round_trip_in_the_bucket(s3, tmp_path):
    uri = f"s3://{BUCKET}/sweeps/round-trip"
    sweep_dir = tmp_path / "sweep"
    store = ObservationStore(sweep_dir, location=uri, fsync=False)
    for tid in ("t0", "t1"):
        store.set_status(tid, "running", config={"N": 1e4, "D": 4096.0, "lr": 1e-3, "batch": 1024})
        for step in (1, 2, 3):
            store.append(tid, {**_report(step, 4.0 - step / 10), "task/arc_easy/acc": 0.25 + step / 100,
                               "extra": {"grad_norm": float(step)}})
        store.append(tid, _report(3, 3.7))  # a re-sent report (a restarted trial): last write wins
        store.set_status(tid, "finished", summary={"final_eval_loss": 3.8})
    store.flush()

    keys = _keys(s3, "sweeps/round-trip/")
    for table in ("observations", "trials", "task_metrics"):
        assert any(k.startswith(f"{table}/part-") and k.endswith(".parquet") for k in keys), keys
    local = sweep_dir / "store"
    assert (local / LOCATION_FILE).read_text().strip() == uri
    assert not list(local.glob("*/part-*.parquet"))  # no part on the local disk
    assert not list((local / "wal").glob("*.jsonl"))  # every logged row is in a part now

    elsewhere = ObservationStore(uri)  # another machine: the URI alone
    via_dir = ObservationStore(sweep_dir)  # this one: the sweep directory's pointer
    for other in (elsewhere, via_dir):
        assert _rows(other) == _rows(store)
        assert other.trials() == store.trials()
        assert other.task_metrics().to_pylist() == store.task_metrics().to_pylist()
        assert other.extras() == store.extras()
    rows = _rows(elsewhere)
    assert [(r["trial_id"], r["step"]) for r in rows] == [(t, s) for t in ("t0", "t1") for s in (1, 2, 3)]
    assert rows[2]["train_loss"] == pytest.approx(3.7)  # the re-sent report
    assert {t: r["status"] for t, r in elsewhere.trials().items()} == {"t0": "finished", "t1": "finished"}
    assert elsewhere.task_metrics().num_rows == 6

    before = (_rows(elsewhere), elsewhere.trials(), elsewhere.task_metrics().to_pylist())
    elsewhere.compact()
    keys = _keys(s3, "sweeps/round-trip/")
    for table in ("observations", "trials", "task_metrics"):
        assert sum(k.startswith(f"{table}/part-") for k in keys) == 1, keys
    after = ObservationStore(uri)
    assert (_rows(after), after.trials(), after.task_metrics().to_pylist()) == before


def test_killed_controller_rows_reach_the_bucket_on_recover(s3, tmp_path):
    uri = f"s3://{BUCKET}/sweeps/recover"
    sweep_dir = tmp_path / "sweep"
    store = ObservationStore(sweep_dir, location=uri, fsync=True)
    store.set_status("t0", "finished", config={"N": 1e4, "D": 4096.0}, summary={"final_eval_loss": 3.5})
    for step in (1, 2):
        store.append("t0", _report(step, 3.9))
    store._wal.close()  # the controller dies here: the rows are only in its local log
    assert ObservationStore(uri).observations().num_rows == 0

    restarted = ObservationStore(sweep_dir)  # a new controller on the same head: the pointer says where
    assert restarted.recover() == 2
    assert not list((sweep_dir / "store" / "wal").glob("*.jsonl"))
    elsewhere = ObservationStore(uri)
    assert [r["step"] for r in elsewhere.observations().to_pylist()] == [1, 2]
    ended = ended_trials(elsewhere)  # what a resumed planner skips, and the last report it sees of each
    assert list(ended) == ["t0"] and ended["t0"]["step"] == 2


def test_sweep_on_the_bucket_then_resumed_from_it_alone(s3, tmp_path, local_ray):
    uri = f"s3://{BUCKET}/sweeps/sim"
    spec_data = {**SIM_SPEC, "name": "s3-store", "fit": {"bootstrap": 0}, "store": uri}  # 6 simulated trials
    # both controllers on one shared local Ray instance (conftest.py; started with the bucket's
    # endpoint and keys in its environment, which its trials need): a cluster outlives its controller
    spec, outcome = run_real_sweep(tmp_path, spec_data, "head-a", local_ray=local_ray)
    assert outcome.statuses == {"finished": 6}, outcome.statuses
    assert not list((outcome.sweep_dir / "store").glob("*/part-*.parquet"))
    keys = _keys(s3, "sweeps/sim/")
    assert any(k.startswith("observations/part-") for k in keys) and any(k.startswith("trials/part-") for k in keys)

    store = ObservationStore(uri)
    rows = store.observations().to_pylist()
    assert len({(r["trial_id"], r["step"]) for r in rows}) == len(rows) > 6
    points = sorted((p["trial_id"], p["loss"]) for p in final_points(store))
    assert len(points) == 6
    fit_a = json.loads((outcome.sweep_dir / "fit.json").read_text())

    # a controller elsewhere, with an empty sweep directory of its own: the bucket is the whole state
    _, again = run_real_sweep(tmp_path, spec_data, "head-b", local_ray=local_ray)
    assert again.statuses == {"finished": 6}, again.statuses
    assert len(store.observations().to_pylist()) == len(rows)  # nothing ran twice
    assert sorted((p["trial_id"], p["loss"]) for p in final_points(store)) == points
    fit_b = json.loads((again.sweep_dir / "fit.json").read_text())
    assert fit_b["law"]["params"] == pytest.approx(fit_a["law"]["params"])
