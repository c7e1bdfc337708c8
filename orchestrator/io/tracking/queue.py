"""The tracker's ordered operation queue: one background thread delivers it in order, in
batches, retrying with exponential backoff through outages and mirroring the backlog to a spool.

Callers only append (`put`, microseconds); a `deliver(group)` callable does the remote work
and raises on failure. An error it calls permanent (`is_permanent`: the request is wrong and
will stay wrong) drops that operation with an error log; any other error is an outage: the
backlog stays in memory and in the spool, and delivery is retried from where it stopped.
"""
from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from typing import Callable, Optional

from .ops import BATCHED, Queued
from .spool import Spool

log = logging.getLogger(__name__)

METRICS_PER_WINDOW = 10_000  # metric rows regrouped per delivery step (then acknowledged)


class OpQueue:
    """Ordered, batched, outage-tolerant delivery of `Queued` operations on one thread."""

    def __init__(self, deliver: Callable[[list[Queued]], None], is_permanent: Callable[[BaseException], bool],
                 spool: Spool, *, where: str, name: str, flush_interval_s: float = 1.0,
                 max_backoff_s: float = 30.0, stats: Optional[dict[str, int]] = None) -> None:
        self._deliver = deliver
        self._is_permanent = is_permanent
        self.spool = spool
        self.where = where  # what is unreachable, in the warnings ("MLflow at <uri>")
        self.flush_interval_s = float(flush_interval_s)
        self.max_backoff_s = float(max_backoff_s)
        self.stats = stats if stats is not None else {}
        for key in ("ops", "delivered", "dropped", "outages", "failed_attempts", "replayed"):
            self.stats.setdefault(key, 0)
        self._cond = threading.Condition()
        self._inbox: deque[Queued] = deque()  # filled by callers
        self._pending: deque[Queued] = deque()  # owned by the worker, in order
        self._seq = 0  # last sequence number handed out
        self._done_seq = 0  # every op with seq <= this is delivered or dropped
        self._attempts = 0  # delivery cycles finished (for callers waiting on a create)
        self._spooling = False  # True while an outage backlog is mirrored to the spool
        self._warned = False
        self._backoff = 0.0
        self._next_try = 0.0
        self._force = False
        self._stopping = False
        self.replayed = self._replay()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._worker, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers
    @property
    def pending(self) -> int:
        """Operations enqueued but not yet delivered (or dropped)."""
        return self._seq - self._done_seq

    @property
    def spooling(self) -> bool:
        """True while an outage's backlog is kept in the spool."""
        return self._spooling

    def put(self, entry: Queued, wake: bool = True) -> bool:
        """Append an operation; False when the queue is stopped (then it went to the spool)."""
        with self._cond:
            self._seq += 1
            entry.seq = self._seq
            if self._stopping:
                # Never raise into the caller: the next tracker on this spool picks it up.
                self.spool.write([entry])
                return False
            self._inbox.append(entry)
            self.stats["ops"] += 1
        if wake:
            self._wake.set()
        return True

    def wake(self) -> None:
        """Deliver at the next chance instead of the next flush interval."""
        self._wake.set()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Deliver everything enqueued so far; True if done within `timeout` seconds."""
        target = self._seq
        deadline = None if timeout is None else time.monotonic() + timeout
        last_poke = -math.inf
        with self._cond:
            while self._done_seq < target:
                if not self._thread.is_alive():
                    return False
                now = time.monotonic()
                left = None if deadline is None else deadline - now
                if left is not None and left <= 0:
                    return False
                if now - last_poke >= 0.25:
                    # Re-poke at most 4x/s so a flush retries an outage promptly instead of
                    # waiting out the backoff, without hammering a dead server.
                    last_poke = now
                    self._force = True
                    self._wake.set()
                self._cond.wait(0.25 if left is None else min(0.25, left))
        return True

    def wait_for(self, ready: Callable[[], bool], timeout: float) -> None:
        """Wait until `ready()`, or `timeout` seconds, or two failed attempts show the remote is down."""
        deadline = time.monotonic() + timeout
        with self._cond:
            start_attempts = self._attempts
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if self._spooling and self._attempts >= start_attempts + 2:
                    return
                self._force = True
                self._wake.set()
                self._cond.wait(min(left, 0.1))

    def stop(self, timeout: float) -> bool:
        """Stop the worker after a last attempt (what is left stays spooled); True once it ended."""
        with self._cond:
            self._stopping = True
        self._wake.set()
        self._thread.join(timeout=timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ worker
    def _replay(self) -> list[Queued]:
        """Load what an earlier tracker on this spool could not deliver, renumbered into this queue."""
        entries = self.spool.take()
        for e in entries:
            e.replayed = True
            self._seq += 1
            e.seq = self._seq
            self._pending.append(e)
        self.stats["replayed"] = len(entries)
        if entries:
            self._spooling = True
            self.spool.write(entries)
            log.warning("replaying %d undelivered MLflow operation(s) from %s", len(entries), self.spool.path)
        return entries

    def _worker(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            with self._cond:
                drained = list(self._inbox)
                self._inbox.clear()
                stopping = self._stopping
                force = self._force
                self._force = False
            if drained:
                self._pending.extend(drained)
                if self._spooling:
                    self.spool.write(drained)
            if self._pending and (force or stopping or time.monotonic() >= self._next_try):
                try:
                    self._deliver_all()
                except Exception:  # noqa: BLE001 - the worker must outlive any bug or I/O error
                    log.exception("MLflow tracker: unexpected error; will retry")
                    self._retry_later()
            with self._cond:
                self._attempts += 1
                self._cond.notify_all()
                if stopping:
                    if not self._pending and not self._inbox:
                        self._finish_spool()
                    elif self._pending and not self._spooling:
                        self._start_spool()
                    return

    def _deliver_all(self) -> None:
        while self._pending:
            group = self.next_group()
            try:
                self._deliver(group)
            except Exception as exc:  # noqa: BLE001 - a remote raises many types when down
                if not self._is_permanent(exc):
                    self._outage(exc)
                    return
                if len(group) == 1:
                    self._drop(group[0], exc)
                    continue
                try:
                    self._deliver_singly(group)
                except Exception as exc2:  # noqa: BLE001 - went down meanwhile
                    self._outage(exc2)
                    return
            else:
                self._ack(group)
        self._backoff = 0.0
        self._next_try = 0.0

    def _deliver_singly(self, group: list[Queued]) -> None:
        for entry in group:
            try:
                self._deliver([entry])
            except Exception as exc:  # noqa: BLE001
                if not self._is_permanent(exc):
                    raise
                self._drop(entry, exc)
            else:
                self._ack([entry])

    def next_group(self) -> list[Queued]:
        """The head op; or, for metrics and tags, the run of consecutive metric and tag ops (any trial).

        Metric and tag ops of different runs commute, and so do a run's metrics and tags;
        reports from concurrent trials arrive interleaved: regrouping them per run makes one
        `log_batch` per trial per flush instead of one per report, and a trial's closing tags
        ride with its last metrics (each MLflow call costs ~4 ms of SQLite work at least).
        """
        head = self._pending[0]
        group = [head]
        if not isinstance(head.op, BATCHED):
            return group
        n = head.size
        for entry in itertools.islice(self._pending, 1, None):
            if not isinstance(entry.op, BATCHED) or n + entry.size > METRICS_PER_WINDOW:
                break
            group.append(entry)
            n += entry.size
        return group

    def _ack(self, group: list[Queued]) -> None:
        for _ in group:
            self._pending.popleft()
        last = group[-1].seq
        if self._spooling and not self._pending:
            log.warning("%s is reachable again: delivered the buffered operations", self.where)
            self._finish_spool()  # before waiters wake: a flushed tracker has no spool
        elif self._spooling:
            self.spool.mark_done(last)
        with self._cond:
            self._done_seq = last
            self.stats["delivered"] += len(group)
            self._cond.notify_all()

    def _drop(self, entry: Queued, exc: BaseException) -> None:
        log.error("MLflow rejected a %s operation for %s (dropped): %s",
                  entry.kind, entry.trial or "the sweep", exc)
        self.stats["dropped"] += 1
        self._ack([entry])

    def _outage(self, exc: BaseException) -> None:
        self.stats["failed_attempts"] += 1
        if not self._spooling:
            self.stats["outages"] += 1
            self._start_spool()
            if not self._warned:
                self._warned = True
                log.warning(
                    "%s is unreachable (%s); buffering %d operation(s) in memory and in %s, retrying with backoff",
                    self.where, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                    len(self._pending), self.spool.path)
        self._retry_later()

    def _retry_later(self) -> None:
        self._backoff = min(self.max_backoff_s, max(0.5, self._backoff * 2))
        self._next_try = time.monotonic() + self._backoff

    def _start_spool(self) -> None:
        self._spooling = True
        self.spool.write(self._pending)

    def _finish_spool(self) -> None:
        self._spooling = False
        self.spool.remove()
