"""Jobs this process has read lately, for readers that accept an answer a moment old.

Describe and list of a job that is not finished read its status (and control) from the
store on every call; under load most of those reads return what the last one did. A
reader that states how old an answer it accepts (`max_age`, seconds) is served from here
instead while the entry is young enough.

Invariants:
- An entry is the job as the store held it no earlier than its `known_at` (a monotonic
  time taken before the reads that made it): served while `now - known_at <= max_age`,
  never later. So a change by another process (a trainer, another replica) shows within
  `max_age` seconds.
- A write by this process to a job's status or control (`written()`, called after the
  write) drops its entry and refuses any read that started before the write: the next
  reader reads afresh and sees the write (read-your-writes on this replica).
- Finished jobs are not kept here: they never change, and the store keeps them apart.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobstore.store import Job

# Entries kept at most (a job is a few KB): the jobs read in the last second or so.
RECENT_JOBS_SIZE = 10_000


class RecentJobs:
    def __init__(self, size: int = RECENT_JOBS_SIZE) -> None:
        # job id -> (known_at, the job; None: this process wrote it at known_at)
        self._entries: OrderedDict[str, tuple[float, Job | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size
        # The newest `known_at` of an entry pushed out to keep the size: a read that began
        # before it may be older than a write whose mark was pushed out, so it is not kept.
        self._evicted_up_to = float("-inf")

    def remember(self, job: Job, known_at: float) -> None:
        """Keep `job`, read no earlier than `known_at`, unless what is kept is newer (a
        later read, or a write of this process after the read began)."""
        kept = replace(job, status=job.status.model_copy())  # callers may set queuePosition
        with self._lock:
            if known_at <= self._evicted_up_to:
                return
            current = self._entries.get(job.spec.jobId)
            if current is not None and current[0] >= known_at:
                return
            self._put(job.spec.jobId, (known_at, kept))

    def fresh(self, job_id: str, max_age: float) -> Job | None:
        """A copy of the job if it was known at most `max_age` seconds ago, else None."""
        with self._lock:
            current = self._entries.get(job_id)
        if current is None:
            return None
        known_at, job = current
        if job is None or time.monotonic() - known_at > max_age:
            return None
        return replace(job, status=job.status.model_copy())

    def written(self, job_id: str) -> None:
        """This process has just written the job's status or control (or read it
        finished: it is kept apart from now on)."""
        with self._lock:
            self._put(job_id, (time.monotonic(), None))

    def _put(self, job_id: str, entry: tuple[float, Job | None]) -> None:
        self._entries[job_id] = entry
        self._entries.move_to_end(job_id)
        while len(self._entries) > self._size:
            _, (evicted_at, _) = self._entries.popitem(last=False)
            self._evicted_up_to = max(self._evicted_up_to, evicted_at)
