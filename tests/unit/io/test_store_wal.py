"""The store's write-ahead log under a stop: a report the log holds is never lost.

A second Ctrl-C raises KeyboardInterrupt wherever the controller's main thread is, which is
often inside the store (Tune's callback appends every report and flushes every few seconds).
The sequence of a hard stop is replayed here without signals or timing: the interrupt is raised
from inside the store, then the controller records the stop (`flush`, as
`session._finish_interrupted` does) or dies, and the resumed controller calls `recover()`.
"""
from __future__ import annotations

import pytest

from orchestrator.io.store import ObservationStore


def _report(step: int) -> dict:
    return {"step": step, "tokens": 8192 * step, "flops": 1e9 * step, "lr": 0.03, "train_loss": 5.0 / step,
            "eval_loss": 5.1 / step, "tokens_per_s": 1e4, "step_time_s": 0.1}


def _steps(store: ObservationStore, trial_id: str = "t0") -> list[int]:
    return [row["step"] for row in store.observations(trial_id).to_pylist()]


def _interrupt_next_part(store: ObservationStore, monkeypatch) -> None:
    """The next part the store writes raises KeyboardInterrupt before it exists (a Ctrl-C lands there)."""
    real = store._write_part

    def interrupted(table_name, table):
        monkeypatch.setattr(store, "_write_part", real)  # only once
        raise KeyboardInterrupt("SIGINT")

    monkeypatch.setattr(store, "_write_part", interrupted)


@pytest.mark.parametrize("then", ["flush", "die"])
def test_a_flush_interrupted_mid_write_loses_no_logged_report(tmp_path, monkeypatch, then):
    store = ObservationStore(tmp_path, flush_every_s=1e9, fsync=False)
    for step in (2, 4):
        store.append("t0", _report(step))  # acknowledged: the trial checkpoints at step 4 next
    _interrupt_next_part(store, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        store.flush()
    if then == "flush":  # the controller records the stop: its flush writes what the interrupted one did not
        store.set_status("t0", "stopped-by-user")
        store.flush()
        assert _steps(store) == [2, 4]
    else:  # the controller dies before it can: only the log holds the reports
        store._wal = None
    resumed = ObservationStore(tmp_path, flush_every_s=1e9, fsync=False)
    resumed.recover()
    assert _steps(resumed) == [2, 4]  # the checkpoint at step 4 is not ahead of the store
    assert not list((tmp_path / "store" / "wal").glob("*.jsonl"))  # recovered or superseded: nothing left over


def test_an_append_interrupted_after_its_log_write_loses_no_report(tmp_path, monkeypatch):
    store = ObservationStore(tmp_path, flush_every_s=1e9, fsync=False)
    store.append("t0", _report(2))
    real = store._log

    def logged_then_interrupted(row):
        real(row)
        raise KeyboardInterrupt("SIGINT")

    monkeypatch.setattr(store, "_log", logged_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.append("t0", _report(4))
    monkeypatch.setattr(store, "_log", real)
    store.flush()  # the stop is recorded
    resumed = ObservationStore(tmp_path, flush_every_s=1e9, fsync=False)
    resumed.recover()
    assert _steps(resumed) == [2, 4]


def test_a_failed_flush_keeps_its_log_until_a_later_flush_writes_the_rows(tmp_path, monkeypatch):
    store = ObservationStore(tmp_path, flush_every_s=1e9, fsync=False)
    store.append("t0", _report(2))
    def disk_full(table_name, table):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.location, "write_table", disk_full)
    with pytest.raises(Exception):
        store.flush()
    assert len(list((tmp_path / "store" / "wal").glob("*.jsonl"))) == 1  # the only copy on disk stays
    store.append("t0", _report(4))
    monkeypatch.undo()
    store.flush()
    assert not list((tmp_path / "store" / "wal").glob("*.jsonl"))
    assert _steps(ObservationStore(tmp_path)) == [2, 4]
