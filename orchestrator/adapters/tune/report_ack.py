"""The store's acknowledgement of a multi-worker trial's reports: a key in Ray's GCS key-value store.

A trial on several workers (Ray Train's `TorchTrainer` inside the trial) reports asynchronously:
rank 0's report is queued to the trial's Tune session and reaches the controller's store later,
while training goes on. A checkpoint saved right after the report could then be past the last step
the store holds (the controller killed in between: at resume, a gap in the store, or with the store
on S3 a checkpoint dropped and the trial run again from step 0). So the controller writes, per
trial, the highest step it has stored (`acknowledge`, after the store's write-ahead log has it), and
rank 0 waits for it (`wait_for`) before the report returns: a checkpoint written after a report
covers only stored steps, as it does for a one-worker trial, whose report Tune takes synchronously.
The wait is bounded (`ACK_TIMEOUT_S`); past it the trial goes on with a warning (the old ordering).
One key per trial and controller run (`key`, from the run's stop key): a resumed sweep starts afresh.

>>> k = key("ladder/0123", "t-1")
>>> k
'ladder/0123/t-1'
>>> acked = {k: 6}
>>> wait_for(k, 6, read=acked.get, timeout_s=1.0)
True
>>> wait_for(k, 8, read=acked.get, timeout_s=0.0)
False
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from . import gcs_kv

log = logging.getLogger(__name__)

NAMESPACE = "scalesweep-ack"  # Ray's internal KV namespace of the acknowledged steps
ACK_TIMEOUT_S = 60.0  # rank 0 waits at most this long for the store to acknowledge a report
POLL_S = (0.005, 0.1)  # first and longest pause between two reads (a GCS round trip each, ~1 ms)


def key(stop_key: str, trial_id: str) -> str:
    """The acknowledgement key of trial `trial_id` in the controller run whose stop key is `stop_key`."""
    return f"{stop_key}/{trial_id}"


def acknowledge(ack_key: str, step: int) -> bool:
    """Controller side: the store holds every report of the trial up to `step`. False where Ray is not connected."""
    try:
        return gcs_kv.put(ack_key, str(int(step)), NAMESPACE)
    except Exception:  # noqa: BLE001 -- a GCS hiccup: the trial's wait times out and it goes on
        return False


def clear(ack_key: str) -> None:
    """Remove a trial's key (it ended): a long-lived cluster keeps no stale keys."""
    try:
        gcs_kv.delete(ack_key, NAMESPACE)
    except Exception:  # noqa: BLE001 -- a leftover key misleads nothing: the next run has its own
        pass


def acknowledged(ack_key: str) -> Optional[int]:
    """The highest step the controller has stored of the trial (one GCS read), or None."""
    try:
        value = gcs_kv.get(ack_key, NAMESPACE)
        return int(value) if value is not None else None
    except Exception:  # noqa: BLE001 -- unreadable: reads as not yet, the wait is bounded
        return None


def wait_for(ack_key: str, step: int, read: Optional[Callable[[str], Optional[int]]] = None,
             timeout_s: float = ACK_TIMEOUT_S) -> bool:
    """Trial side (rank 0): wait until the store holds step `step` of the trial; False after
    `timeout_s` without it (then it warns: a checkpoint saved next may be past the store's last report)."""
    read = read or acknowledged
    deadline = time.monotonic() + timeout_s
    pause = POLL_S[0]
    while True:
        at = read(ack_key)
        if at is not None and at >= step:
            return True
        if time.monotonic() >= deadline:
            log.warning("the controller has not acknowledged step %d of %s after %.0f s; going on (a checkpoint "
                        "saved now may be past the store's last report)", step, ack_key, timeout_s)
            return False
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(2 * pause, POLL_S[1])
