"""What this process's listings of control markers showed: which jobs had no stop or
pause requested, as of when.

A job's `control.json` (a stop or pause request) is written after its marker,
`stops/<job-id>` (jobstore/store.py). A listing of the markers that started at time T
and shows none for a job says that, as of T, its control was empty: a reader that
accepts that age need not GET `control.json`. Every reconcile pass lists the markers of
every active job, so a job's feed (service/core/job_feed.py) reads its status alone.

Invariants:
- A job counts as unmarked only through a listing that covered its id, started at most
  `max_age` seconds ago and after this process's own last control write to the job
  ended (read-your-writes: a stop made here shows at the next read).
- Only the newest few listings are kept; anything else is "not known", and the caller
  reads `control.json`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Set
from dataclasses import dataclass

# Listings kept: a reconcile pass's (every active job) and a few list pages'.
_KEPT = 4


@dataclass(frozen=True)
class _Listing:
    started: float  # monotonic, before the listing's first request
    first: str  # the range it covered, in key order (newest id first)
    last: str
    marked: Set[str]


class ControlMarkers:
    def __init__(self) -> None:
        self._listings: deque[_Listing] = deque(maxlen=_KEPT)
        self._written: dict[str, float] = {}  # job id -> monotonic time of its last write
        self._lock = threading.Lock()

    def listed(self, started: float, first: str, last: str, marked: Set[str]) -> None:
        """A listing that began at `started` found `marked` among ids `first`..`last`."""
        with self._lock:
            self._listings.append(_Listing(started, first, last, frozenset(marked)))
            # Writes older than every kept listing are covered by them.
            oldest = min(listing.started for listing in self._listings)
            for job_id in [j for j, at in self._written.items() if at < oldest]:
                del self._written[job_id]

    def written(self, job_id: str) -> None:
        """This process has written (or tried to write) the job's control: listings that
        began before now say nothing of it."""
        with self._lock:
            self._written[job_id] = time.monotonic()

    def unmarked_since(self, job_id: str, *, max_age: float) -> float | None:
        """When a listing at most `max_age` seconds old began that shows the job had no
        control marker; None when no such listing is known (read `control.json`)."""
        now = time.monotonic()
        with self._lock:
            written = self._written.get(job_id)
            covering = [
                listing
                for listing in self._listings
                if now - listing.started <= max_age
                and (written is None or listing.started > written)  # else it says nothing
                and listing.first <= job_id <= listing.last
            ]
        if not covering:
            return None
        # The one begun last, whichever ended last: a slow listing begun before a stop
        # must not outweigh a quicker one that shows its marker.
        newest = max(covering, key=lambda listing: listing.started)
        return None if job_id in newest.marked else newest.started
