"""Ray's GCS key-value store, where the controller and the trials of a sweep meet on any node.

The GCS is the one thing every node of a Ray cluster reaches (a file in the sweep directory is
invisible to a node without it), so the user's stop flag (`stop_signal`) and the store's
acknowledgement of a multi-worker trial's reports (`report_ack`) are keys there, each module in its
own namespace. This is the one wrapper of Ray's internal KV API: where Ray is not connected in this
process a write does nothing (False), a read finds nothing; a GCS error is raised, and each caller
says what it means for its key.

>>> put("doc/k", "v", namespace="scalesweep-doc") == connected()
True
>>> get("doc/k", namespace="scalesweep-doc") == (b"v" if connected() else None)
True
>>> delete("doc/k", namespace="scalesweep-doc")
>>> exists("doc/k", namespace="scalesweep-doc")
False
"""
from __future__ import annotations

from typing import Optional


def _kv():
    """Ray's internal KV module when this process is connected to a Ray cluster, else None."""
    from ray.experimental import internal_kv

    return internal_kv if internal_kv._internal_kv_initialized() else None


def connected() -> bool:
    """Whether this process reaches a Ray cluster's GCS (a driver after `ray.init`, a trial, a worker)."""
    return _kv() is not None


def put(key: str, value: str, namespace: str) -> bool:
    """Set `key` to `value` (overwriting); False where Ray is not connected."""
    kv = _kv()
    if kv is None:
        return False
    kv._internal_kv_put(key, value, overwrite=True, namespace=namespace)
    return True


def get(key: str, namespace: str) -> Optional[bytes]:
    """The value of `key`, or None (no such key, or Ray not connected)."""
    kv = _kv()
    return kv._internal_kv_get(key, namespace=namespace) if kv is not None else None


def exists(key: str, namespace: str) -> bool:
    """Whether `key` is set (False where Ray is not connected)."""
    kv = _kv()
    return kv is not None and bool(kv._internal_kv_exists(key, namespace=namespace))


def delete(key: str, namespace: str) -> None:
    """Remove `key` (nothing where it is not set or Ray is not connected)."""
    kv = _kv()
    if kv is not None:
        kv._internal_kv_del(key, namespace=namespace)
