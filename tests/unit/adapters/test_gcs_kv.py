"""The one wrapper of Ray's GCS key-value store (`tune.gcs_kv`), used by the stop flag and the report
acknowledgement: without a Ray connection a write does nothing and a read finds nothing; connected,
each key lives in its caller's namespace. Ray's internal KV module is replaced by a dict here (the
real GCS round trip: tests/integration/test_checkpoint_on_stop.py, test_graceful_stop.py)."""
from __future__ import annotations

import doctest

import pytest

pytest.importorskip("ray")

from orchestrator.adapters.tune import gcs_kv, report_ack, stop_signal  # noqa: E402


class FakeKV:
    """Ray's `internal_kv` functions over a dict keyed by (namespace, key), values as bytes as Ray returns them."""

    def __init__(self):
        self.data: dict[tuple[str, str], bytes] = {}

    def _internal_kv_put(self, key, value, overwrite=True, *, namespace=None):
        self.data[(namespace, key)] = value.encode() if isinstance(value, str) else value
        return True

    def _internal_kv_get(self, key, *, namespace=None):
        return self.data.get((namespace, key))

    def _internal_kv_exists(self, key, *, namespace=None):
        return (namespace, key) in self.data

    def _internal_kv_del(self, key, *, namespace=None):
        return int(self.data.pop((namespace, key), None) is not None)


def test_gcs_kv_doctests():
    assert doctest.testmod(gcs_kv).failed == 0


def test_without_ray_writes_do_nothing_and_reads_find_nothing(monkeypatch):
    monkeypatch.setattr(gcs_kv, "_kv", lambda: None)
    assert not gcs_kv.connected()
    assert gcs_kv.put("k", "v", "ns") is False
    assert gcs_kv.get("k", "ns") is None and gcs_kv.exists("k", "ns") is False
    gcs_kv.delete("k", "ns")
    # what the callers make of it: no flag published or seen, no acknowledgement
    assert not stop_signal.raise_flag("run/1", "SIGTERM") and not stop_signal.flag_raised("run/1")
    assert not report_ack.acknowledge("run/1/t", 4) and report_ack.acknowledged("run/1/t") is None


def test_the_stop_flag_and_the_acks_share_the_store_in_their_own_namespaces(monkeypatch):
    kv = FakeKV()
    monkeypatch.setattr(gcs_kv, "_kv", lambda: kv)
    assert gcs_kv.connected()
    assert stop_signal.raise_flag("run/1", "SIGTERM") and stop_signal.flag_raised("run/1")
    assert report_ack.acknowledge("run/1", 6) and report_ack.acknowledged("run/1") == 6  # the same key, apart
    assert kv.data == {(stop_signal.NAMESPACE, "run/1"): b"SIGTERM", (report_ack.NAMESPACE, "run/1"): b"6"}
    stop_signal.clear_flag("run/1")
    assert not stop_signal.flag_raised("run/1") and report_ack.acknowledged("run/1") == 6
    report_ack.clear("run/1")
    assert kv.data == {}


def test_a_gcs_error_is_the_caller_s_to_judge(monkeypatch):
    class Broken(FakeKV):
        def _internal_kv_get(self, *args, **kwargs):
            raise ConnectionError("GCS unreachable")

        _internal_kv_exists = _internal_kv_put = _internal_kv_del = _internal_kv_get

    monkeypatch.setattr(gcs_kv, "_kv", Broken)
    with pytest.raises(ConnectionError):
        gcs_kv.get("k", "ns")
    # the stop flag and the acknowledgement carry on (a stop still ends trials through Tune; a wait is bounded)
    assert not stop_signal.raise_flag("run/1", "SIGTERM") and not stop_signal.flag_raised("run/1")
    assert not report_ack.acknowledge("run/1/t", 4) and report_ack.acknowledged("run/1/t") is None
    stop_signal.clear_flag("run/1")
    report_ack.clear("run/1/t")
