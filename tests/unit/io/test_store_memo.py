"""The store keeps the table it read last (`ObservationStore._read`): one query reads the trials table
four times and the observations three times, and must read the parts once; a write (through this
store, another process's store, a compaction) must show on the next read, never a stale table."""
from __future__ import annotations

import pytest

from orchestrator.io.store import ObservationStore


def _report(step: int, loss: float) -> dict:
    return {"step": step, "tokens": 100 * step, "flops": 1e9 * step, "lr": 1e-3, "train_loss": loss, "eval_loss": loss}


def _rows(store: ObservationStore) -> str:
    """The observations as text (the unreported columns are NaN, and NaN != NaN)."""
    return repr(store.observations().to_pylist())


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """A store with two trials, and the list of part paths every store has read since."""
    store = ObservationStore(tmp_path, fsync=False)
    for tid in ("a", "b"):
        store.set_status(tid, "running", config={"N": 1, "D": 2})
        store.append(tid, _report(1, 3.0))
        store.append(tid, _report(2, 2.5))
        store.set_status(tid, "finished", summary={"final_eval_loss": 2.5})
    reads: list[str] = []
    real = type(store.location).read_table

    def read_table(self, path, schema=None):
        reads.append(path)
        return real(self, path, schema=schema)

    monkeypatch.setattr(type(store.location), "read_table", read_table)
    return store, reads


def test_a_second_read_reads_no_part(counted):
    store, reads = counted
    first = (store.trials(), _rows(store), repr(store.last_reports()))
    n = len(reads)
    assert n > 0
    again = (store.trials(), _rows(store), repr(store.last_reports()))
    assert len(reads) == n and again == first


def test_writes_through_the_store_show_on_the_next_read(counted):
    """A live controller reads and writes through one store: buffered rows, status events and flushes."""
    store, reads = counted
    assert store.trials()["a"]["status"] == "finished" and len(store.observations()) == 4
    store.set_status("c", "planned", config={"N": 3, "D": 4})  # buffered: a read flushes it
    store.append("c", _report(1, 4.0))  # buffered too
    assert store.trials()["c"]["status"] == "planned"
    assert sorted(store.last_reports()) == ["a", "b", "c"]
    store.append("a", _report(2, 2.25))  # a re-sent report: last write wins
    assert store.last_reports()["a"]["eval_loss"] == 2.25
    store.set_status("c", "diverged")
    assert store.trials()["c"]["status"] == "diverged"


def test_another_writer_and_a_compaction_show_on_the_next_read(counted, tmp_path):
    store, reads = counted
    before = store.trials()
    other = ObservationStore(tmp_path, fsync=False)  # another process writing the same sweep
    other.set_status("a", "stopped-by-user")
    other.append("b", _report(3, 2.0))
    other.flush()
    assert store.trials()["a"]["status"] == "stopped-by-user" and before["a"]["status"] == "finished"
    assert store.last_reports()["b"]["step"] == 3
    rows = _rows(store)
    trials = store.trials()
    n = len(reads)
    other.compact()  # one new part per table, the old ones deleted
    assert _rows(store) == rows and store.trials() == trials
    assert len(reads) > n  # read again from the compacted parts, not served from the kept table


def test_a_caller_changing_an_answer_does_not_change_the_next(counted):
    store, _ = counted
    store.trials()["a"]["config"]["N"] = 99
    store.last_reports()["a"]["eval_loss"] = 0.0
    assert store.trials()["a"]["config"]["N"] == 1 and store.last_reports()["a"]["eval_loss"] == 2.5
