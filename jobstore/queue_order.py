"""The order of the jobs waiting for a slot: one document, `queue.json` in the state
bucket, `{"jobs": [job ids, first in line first]}`.

Every reconcile pass computes the order from the store (waiting jobs, oldest first) and
writes the document only when the order differs from what this process last wrote. A
job's `queuePosition` is read from it when the job is described or listed. Before, each
pass rewrote the `status.json` of every queued job whose place changed: one
compare-and-swap per queued job at every launch.

Across replicas: each computes the same order from the same store, so a write from a
replica that had not yet seen the latest launch is corrected by its own next pass (its
order then differs from what it wrote). A position is as fresh as the last pass plus
`cache_seconds`, about what the per-job writes gave.
"""

from __future__ import annotations

import threading
import time

from jobstore.storage import ObjectStore, S3Location

_KEY = "queue.json"


class QueueOrder:
    def __init__(self, storage: ObjectStore, bucket: str, *, cache_seconds: float = 1.0) -> None:
        self.location = S3Location(bucket, _KEY)
        self.storage = storage
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._written: list[str] | None = None
        # (when read, job id -> position) for readers.
        self._read: tuple[float, dict[str, int]] | None = None

    def publish(self, waiting: list[str]) -> None:
        """Record `waiting` (first in line first) as the queue, unless this process last
        wrote the same order."""
        with self._lock:
            if waiting == self._written:
                return
        self.storage.put_json(self.location, {"jobs": waiting})
        with self._lock:
            self._written = list(waiting)
            self._read = (time.monotonic(), _positions(waiting))

    def remembered_position(self, job_id: str) -> tuple[bool, int | None]:
        """(True, what `position` answers) when that needs no read, else (False, None)."""
        with self._lock:
            read = self._read
        if read is None or time.monotonic() - read[0] >= self.cache_seconds:
            return False, None
        return True, read[1].get(job_id)

    def position(self, job_id: str) -> int | None:
        """The job's place in the queue (1: next to start), None when not in it."""
        now = time.monotonic()
        with self._lock:
            read = self._read
        if read is None or now - read[0] >= self.cache_seconds:
            found = self.storage.get_json(self.location)
            jobs = found[0].get("jobs", []) if found is not None else []
            read = (now, _positions([j for j in jobs if isinstance(j, str)]))
            with self._lock:
                self._read = read
        return read[1].get(job_id)


def _positions(waiting: list[str]) -> dict[str, int]:
    return {job_id: place for place, job_id in enumerate(waiting, start=1)}
