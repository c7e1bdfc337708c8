"""A multi-worker trial's reports and checkpoints, the pieces without Ray (the whole path on a real
local Ray: tests/integration/test_checkpoint_on_stop.py): rank 0 waits until the controller
acknowledges a report as stored, bounded; the controller acknowledges a Ray Train trial's step only
once the store's write-ahead log holds it, and drops the key when the trial ends; every rank of a
real 2-process gloo group agrees to stop at the report where any rank saw the stop flag."""
from __future__ import annotations

import doctest
import logging
import multiprocessing
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")
pytest.importorskip("torch.distributed")  # imported before the fork below: the ranks do not import it again

from orchestrator.adapters.tune import report_ack  # noqa: E402
from orchestrator.adapters.tune.callback import SweepCallback  # noqa: E402
from orchestrator.adapters.tune.envelope import TrialEnvelope  # noqa: E402
from orchestrator.adapters.tune.trainable import _agreed  # noqa: E402
from orchestrator.app.progress import SweepProgress  # noqa: E402
from orchestrator.io.store import ObservationStore  # noqa: E402
from trainers.contract import TrialConfig  # noqa: E402


def test_report_ack_doctests():
    assert doctest.testmod(report_ack).failed == 0


def test_rank_0_waits_until_the_step_is_acknowledged():
    acked: dict = {}
    reads = []

    def read(key):
        reads.append(time.monotonic())
        return acked.get(key)

    def controller():  # stores steps 4 and then 8, a little later each
        time.sleep(0.05)
        acked["k"] = 4
        time.sleep(0.05)
        acked["k"] = 8

    t = threading.Thread(target=controller)
    t0 = time.monotonic()
    t.start()
    assert report_ack.wait_for("k", 8, read=read, timeout_s=30.0)
    t.join()
    assert acked["k"] == 8 and len(reads) >= 3 and reads[-1] - t0 >= 0.1  # waited through step 4's ack
    assert report_ack.wait_for("k", 6, read=read, timeout_s=0.0)  # an earlier step: already stored


def test_without_an_ack_the_wait_ends_at_its_timeout_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger=report_ack.__name__):
        assert not report_ack.wait_for("k", 2, read=lambda k: None, timeout_s=0.05)
        assert not report_ack.wait_for("k", 6, read=lambda k: 4, timeout_s=0.0)
    assert len(caplog.records) == 2 and "not acknowledged step 6" in caplog.records[1].getMessage()


def _report(step: int, tokens: float) -> dict:
    return {"step": step, "tokens": tokens, "flops": 6.0 * 1000 * tokens, "lr": 1e-3, "train_loss": 3.0,
            "eval_loss": 3.1, "tokens_per_s": 1.0, "step_time_s": 0.1, "done": float(tokens >= 4096)}


def _wal_steps(store_dir: Path, tid: str) -> list[int]:
    import json

    return [row["step"] for wal in sorted((store_dir / "store" / "wal").glob("*.jsonl"))
            for row in map(json.loads, wal.read_text().splitlines()) if row["trial_id"] == tid]


def test_the_controller_acknowledges_a_train_trial_s_step_once_the_store_holds_it(tmp_path, monkeypatch):
    writes, cleared = [], []

    def acknowledge(key, step):  # the GCS write, recorded with what the store's log held at that moment
        writes.append((key, step, _wal_steps(tmp_path, key.rsplit("/", 1)[1])))
        return True

    monkeypatch.setattr(report_ack, "acknowledge", acknowledge)
    monkeypatch.setattr(report_ack, "clear", cleared.append)
    store = ObservationStore(tmp_path, flush_every_s=3600)
    records = {t: {"trial_id": t, "N": 1000, "D": 4096, "flops": 1.0} for t in ("two", "one")}
    cb = SweepCallback(store, None, SweepProgress("s", 2, 2.0, None, enabled=False), records)
    trials = {t: SimpleNamespace(trial_id=f"tune-{t}", error_file=None, local_path=None, config=TrialEnvelope(
        TrialConfig(t, n_params=1000, tokens=4096, lr=1e-3, batch_tokens=1024, workers=w), stop_key="run/ab").to_config())
        for t, w in (("two", 2), ("one", 1))}
    for t in trials.values():
        cb.on_trial_start(0, [], t)
    for step in (1, 2, 1, 2, 3, 4):  # 1 and 2 re-sent after a restart from a checkpoint at step 0
        cb.on_trial_result(0, [], trials["two"], _report(step, 1024.0 * step))
        cb.on_trial_result(0, [], trials["one"], _report(step, 1024.0 * step))
    # the two-worker trial only (a one-worker trial's report is taken synchronously), each new
    # highest step once, and only after the store's write-ahead log had it
    assert [(k, s) for k, s, _ in writes] == [("run/ab/two", s) for s in (1, 2, 3, 4)]
    assert all(step in logged for _, step, logged in writes)
    cb.on_trial_complete(0, [], trials["two"])
    cb.on_trial_complete(0, [], trials["one"])
    assert cleared == ["run/ab/two"] and cb.acks == {}  # an ended trial leaves no key behind
    assert {t: r["status"] for t, r in store.trials().items()} == {"two": "finished", "one": "finished"}


def _rank(rank: int, init: str, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        calls = [0]

        def watch():  # rank 1 sees the flag from its second read on; rank 0 never does (yet)
            calls[0] += 1
            return rank == 1 and calls[0] >= 2

        stopped = _agreed(watch)
        out.put((rank, [stopped() for _ in range(3)]))
    finally:
        dist.destroy_process_group()


def test_every_rank_stops_at_the_report_where_any_rank_saw_the_flag(tmp_path):
    ctx = multiprocessing.get_context("fork")  # torch is imported here already: no second import
    out = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_rank, args=(r, init, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        results = dict(out.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
    assert results == {0: [False, True, True], 1: [False, True, True]}
    assert all(p.exitcode == 0 for p in procs)
