"""The append-only JSONL spool of a tracker's undelivered operations.

While MLflow is unreachable every pending operation is appended here (fsync'd), then one
`{"done": seq}` line per delivered step; a later tracker on the same directory replays what
is left. A torn last line (a crash mid-write) is skipped.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

from .ops import Queued

log = logging.getLogger(__name__)


class Spool:
    """One sweep's spool file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._failed = False

    def write(self, entries: Iterable[Queued]) -> None:
        """Append operations (a full disk is logged once: memory still holds everything)."""
        self._append(e.to_record() for e in entries)

    def mark_done(self, seq: int) -> None:
        """Every operation up to `seq` is delivered."""
        self._append([{"done": seq}])

    def _append(self, records: Iterable[dict]) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r, separators=(",", ":")) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.error("cannot write the MLflow spool %s (%s); buffering in memory only", self.path, exc)

    def take(self) -> list[Queued]:
        """The undelivered operations of an earlier tracker, in order; the file is removed."""
        if not self.path.exists():
            return []
        recs, done = [], 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash mid-write
                if "done" in rec:
                    done = max(done, int(rec["done"]))
                elif "seq" in rec:
                    recs.append(rec)
        self.remove()
        return [Queued.from_record(r) for r in sorted((r for r in recs if r["seq"] > done), key=lambda r: r["seq"])]

    def remove(self) -> None:
        """Everything delivered: the file goes."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
