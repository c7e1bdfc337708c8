"""A user's stop, seen by trials on every node: a key in Ray's GCS key-value store.

The controller raises the flag when the user stops the sweep (Ctrl-C, SIGTERM, `scalesweep
stop`); each running trial's reporter reads it after a report (at most every `POLL_S`), then
saves a checkpoint at that step and ends (`trainers.contract.StopRequested`). The GCS is the one
thing every node of a Ray cluster reaches, so no shared path is needed (a file in the sweep
directory is invisible to a node without it). One key per controller run: a stale flag of an
earlier run cannot stop a resumed sweep.

>>> key = new_key("ladder")
>>> key.startswith("ladder/") and len(key) == len("ladder/") + 32
True
>>> watch = Watcher(key, read=lambda k: k == key, poll_s=0.0)
>>> watch()
True
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import Callable, Optional

from . import gcs_kv

log = logging.getLogger(__name__)

NAMESPACE = "scalesweep-stop"  # Ray's internal KV namespace of the stop flags
POLL_S = 0.2  # a trial reads the flag at most this often (a GCS round trip, ~1 ms)


def new_key(sweep: str) -> str:
    """A fresh stop key for one run of sweep `sweep`."""
    return f"{sweep}/{uuid.uuid4().hex}"


def raise_flag(key: str, signame: str) -> bool:
    """Tell every trial of this run that the user stopped the sweep; False where Ray is not connected.
    (Then trials end when Tune stops them, after `checkpoints.stop_timeout_s`.)"""
    try:
        return gcs_kv.put(key, signame, NAMESPACE)
    except Exception:  # noqa: BLE001 -- a GCS hiccup must not turn a stop into a crash
        log.warning("could not publish the stop request to the trials; they end when Ray Tune stops them")
        return False


def clear_flag(key: str) -> None:
    """Remove the flag (the stop is recorded, or the run ended): a long-lived cluster keeps no stale keys."""
    try:
        gcs_kv.delete(key, NAMESPACE)
    except Exception:  # noqa: BLE001 -- a leftover key stops nothing: the next run has its own
        pass


def flag_raised(key: str) -> bool:
    """Whether the flag `key` is up (one GCS read; False where Ray is not connected)."""
    try:
        return gcs_kv.exists(key, NAMESPACE)
    except Exception:  # noqa: BLE001 -- unreadable: carry on; Tune's own stop remains
        return False


class Watcher:
    """`watch()`: whether the stop flag `key` is up, read at most every `poll_s` seconds (the first
    read `poll_s` after creation, so trials shorter than that never pay for one); once up, stays up."""

    def __init__(self, key: str, read: Optional[Callable[[str], bool]] = None, poll_s: float = POLL_S):
        self.key, self.read, self.poll_s = key, read or flag_raised, poll_s
        self.last = time.monotonic()
        self.up = False

    def __call__(self) -> bool:
        if not self.up and time.monotonic() - self.last >= self.poll_s:
            self.last = time.monotonic()
            self.up = self.read(self.key)
        return self.up
