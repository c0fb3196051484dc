"""Job feeds: one poll per watched job per replica, handed to every watcher of it.

What streams a job (an SSE stream, a gRPC WatchJob call) opens a `Watcher` here instead of
polling the store itself, so a thousand watchers of a job cost what one does.

Invariants:
- A replica reads a watched job at most once per `poll_seconds`, however many watchers
  follow it. The reads run on the feeds' threads, never on a request's. A read is of the
  job's status alone while the replica's latest listing of control markers (every
  reconcile pass makes one) is at most `markers_max_age` old and shows no stop or pause
  for the job (jobstore/control_markers.py); otherwise of its control too.
- A watcher holds at most one job it has not taken yet, the newest: a slow consumer skips
  to the latest (every message is the whole job, so it misses nothing it needs), and
  memory per watcher stays bounded.
- A watcher sees the job first as it was when it opened, then each change of what a
  reader sees of it (`updatedAt` alone, which moves with every heartbeat, is no change),
  never the same view twice nor one read before it opened, and last its terminal state,
  after which it is done. One that opens while its feed reads, or with another view than
  the feed last handed out, is caught up by the next read, whatever that read finds: a
  read hands its result only to the watchers it began with, whose views it follows.
- A job is no longer read once its last watcher has closed, or once its terminal state was
  handed out.
- A store that is down is waited out: the watchers get keep-alives meanwhile. Any other
  failure to read the job (it is gone, its record does not parse) that repeats
  `_FAILED_READS_TO_END` times in a row ends its watchers: `next()` raises the error
  (gRPC answers its status; an SSE stream ends, and the client's reconnect is answered
  the error), and the feed is dropped.
- Open watchers are counted per tenant and per replica; opening one past either limit
  raises TooManyRequests (429 / RESOURCE_EXHAUSTED at the faces) and opens nothing. A
  watcher's place is given back once it is closed; `close()` never blocks (it may run from
  the garbage collector, inside this module's own locked code), so it only queues the
  watcher, and the next pass of the feeds' thread, or the next open, settles it.
- Only this module reads a job for a watcher; the tenant check is `get_job`'s, made when a
  watcher opens.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from jobstore.store import Job, JobStore
from service.core.jobs import get_job, is_visibly_terminal
from service.core.schemas import JobPublic
from service.errors import StoreUnavailable, TooManyRequests

log = logging.getLogger(__name__)

# How long a watcher refused for a limit is told to wait before trying again.
_RETRY_AFTER_SECONDS = 5.0
# Watched jobs read at once.
_CONCURRENT_READS = 8
# Reads in a row that fail (other than with the store down) before a job's watchers end.
_FAILED_READS_TO_END = 3
# Watchers of one change woken per turn of their event loop (see _set_all).
_WAKE_SLICE = 50


def _view(job: Job) -> dict[str, Any]:
    """What a reader sees of the job, minus `updatedAt` (it moves with every heartbeat)."""
    return JobPublic.from_job(job).model_dump(mode="json", exclude={"updatedAt"})


class Rendered:
    """What a face makes of a job it sends to many watchers (SSE data, a gRPC message),
    made once per job handed out rather than once per watcher. Keeps the newest `size`
    jobs (holding them, so an id is never reused while kept)."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._made: OrderedDict[int, tuple[Job, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job: Job, make: Callable[[Job], Any]) -> Any:
        with self._lock:
            found = self._made.get(id(job))
            if found is not None and found[0] is job:
                self._made.move_to_end(id(job))
                return found[1]
        made = make(job)
        with self._lock:
            self._made[id(job)] = (job, made)
            while len(self._made) > self._size:
                self._made.popitem(last=False)
        return made


class Watcher:
    """One follower of a job: `first` at once, then `next()` until `done`."""

    def __init__(self, feeds: JobFeeds, job_id: str, tenant: str, first: Job) -> None:
        self.job_id = job_id
        self.tenant = tenant
        self.first = first
        self.done = is_visibly_terminal(first)
        self._feeds = feeds
        self._latest: Job | None = None
        self._error: Exception | None = None  # why its feed ended, to raise from next()
        self._closed = False
        # The feed's version of the job it last got (ints: compared for every watcher at
        # each change), and until its first change, its first view (compared once).
        self._version = -1
        self._first_view: dict[str, Any] | None = _view(first)
        # Set from the feeds' thread; waited on in the consumer's event loop.
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    async def next(self, timeout: float) -> Job | None:
        """The newest change not taken yet, waiting up to `timeout` seconds for one;
        None when none came (the caller sends a keep-alive and asks again). Raises why
        the job can no longer be read (see the module docstring); then it is done."""
        with self._lock:
            if self._event is None:
                self._loop = asyncio.get_running_loop()
                self._event = asyncio.Event()
                if self._latest is not None or self._error is not None:
                    self._event.set()
            event = self._event
        try:
            async with asyncio.timeout(timeout):  # no task of its own, unlike wait_for
                await event.wait()
        except TimeoutError:
            return None
        with self._lock:
            event.clear()
            job, self._latest = self._latest, None
            error = self._error
            if job is not None and error is not None:
                event.set()  # the next call raises it at once
        if job is None and error is not None:
            self.done = True
            # One error may end many watchers: raised without the tracebacks of the others.
            raise error.with_traceback(None)
        if job is not None and is_visibly_terminal(job):
            self.done = True
        return job

    def close(self) -> None:
        """Stop following (idempotent; never blocks): the job's poll stops with its last
        watcher, and its place is given back (see the module docstring)."""
        if not self._closed:
            self._closed = True
            self._feeds._closing.put(self)
            self._feeds._settle_closed_if_free()

    def _hand(
        self, job: Job, view: dict[str, Any], version: int
    ) -> tuple[asyncio.AbstractEventLoop, asyncio.Event] | None:
        """From the feeds' threads: replace what is waiting with `job`; the consumer's loop
        and event to wake, when it waits on one. Nothing when it was handed this view
        already (its first, a read that raced it)."""
        with self._lock:
            if version <= self._version or self._closed:
                return None
            self._version = version
            first, self._first_view = self._first_view, None
            if first is not None and view == first:
                return None
            self._latest = job
            if self._loop is None or self._event is None:
                return None  # it has not waited yet: its first next() finds the job
            return self._loop, self._event

    def end(self, error: Exception) -> None:
        """End the watcher from any thread (its job can no longer be read, the server
        stops): its `next()` raises `error`."""
        with self._lock:
            if self._closed:
                return
            self._error = error
            loop, event = self._loop, self._event
        if event is not None:
            _wake(loop, event)


def _wake(loop: asyncio.AbstractEventLoop | None, *events: asyncio.Event) -> None:
    """Set `events` in their loop, with one thread-safe call however many there are (a
    thousand watchers on one server's loop are woken by one call, not a thousand)."""
    if loop is not None and events:
        try:
            loop.call_soon_threadsafe(_set_all, events)
        except RuntimeError:  # its loop has closed: the consumers are gone
            pass


def _set_all(events: tuple[asyncio.Event, ...], start: int = 0) -> None:
    """Set `events` a slice at a time, each slice a callback of its own: the loop polls
    its sockets between slices, so requests that came meanwhile (a describe) wait for
    one slice of woken watchers, not for a thousand."""
    end = start + _WAKE_SLICE
    for event in events[start:end]:
        event.set()
    if end < len(events):
        asyncio.get_running_loop().call_soon(_set_all, events, end)


def _close_if_opened(opening: asyncio.Future[Watcher]) -> None:
    """A watcher opened for a caller that was cancelled meanwhile: closed."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


@dataclass
class _Feed:
    """One watched job: its watchers and the last view handed to them."""

    job_id: str
    tenant: str
    view: dict[str, Any]
    watchers: set[Watcher] = field(default_factory=set)
    due: float = 0.0  # monotonic time of its next read
    failing: bool = False  # its last read failed (logged once, until one succeeds)
    failed_reads: int = 0  # in a row, the store being down aside
    version: int = 0  # one up for each change handed out
    reading: bool = False  # a read is under way
    # Watchers the next read hands what it reads, changed or not (see the invariants).
    catching_up: set[Watcher] = field(default_factory=set)
    # When the last read that included the job's control began (monotonic): a listing of
    # control markers begun before it says nothing newer.
    control_read_at: float = float("-inf")


class JobFeeds:
    """Every watched job of this replica, read by one thread (see the module docstring).
    `max_per_tenant` / `max_total`: open watchers allowed (0: no limit)."""

    def __init__(
        self,
        store: JobStore,
        *,
        poll_seconds: float,
        max_per_tenant: int = 0,
        max_total: int = 0,
        markers_max_age: float = 0.0,
        on_open_count: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self.markers_max_age = markers_max_age
        # Told the number of open watchers when it changes (a /metrics gauge): by the
        # feeds' thread at each pass (closes) and by each open.
        self._on_open_count = on_open_count
        self._reported = 0
        self._report_lock = threading.Lock()
        self.max_per_tenant = max_per_tenant
        self.max_total = max_total
        self._feeds: dict[str, _Feed] = {}
        self._open: dict[str, int] = {}  # per tenant
        self._closing: queue.SimpleQueue[Watcher] = queue.SimpleQueue()  # to settle
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        # Reads of several watched jobs at once (a pass waits for its slowest).
        self._readers = ThreadPoolExecutor(_CONCURRENT_READS, thread_name_prefix="job-feed")
        self._stopping = False
        # Reads of jobs for watchers since start (tests, metrics).
        self.reads = 0

    def open_watchers(self, tenant: str | None = None) -> int:
        with self._lock:
            return self._open.get(tenant, 0) if tenant else sum(self._open.values())

    async def open(self, job_id: str, *, tenant: str) -> Watcher:
        """`watch` from an event loop: the read in a thread; a caller cancelled meanwhile
        (its client went away) leaves no watcher open behind it."""
        opening = asyncio.ensure_future(asyncio.to_thread(self.watch, job_id, tenant=tenant))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_if_opened)
            raise

    def watch(self, job_id: str, *, tenant: str) -> Watcher:
        """Open a watcher of the tenant's job: reads it now (JobNotFound for an id that is
        not the tenant's), so call it off the event loop. TooManyRequests past a limit."""
        self._reserve(tenant)
        try:
            first = get_job(self.store, job_id, tenant=tenant)
        except BaseException:
            self._release(tenant)
            raise
        watcher = Watcher(self, job_id, tenant, first)
        if watcher.done:  # nothing will change: no feed to join
            self._release(tenant)
            watcher._closed = True
            return watcher
        self._report_open_count()
        with self._changed:
            feed = self._feeds.get(job_id)
            if feed is None:
                feed = _Feed(job_id, tenant, _view(first), due=time.monotonic() + self.poll_seconds)
                self._feeds[job_id] = feed
            elif feed.reading or feed.view != watcher._first_view:
                # The read under way may be older than this watcher's first view, and
                # goes only to those it began with; or this watcher read another job
                # than the feed last handed out. The next read, at once, catches it up.
                feed.catching_up.add(watcher)
                feed.due = 0.0
            else:
                watcher._version = feed.version  # it has what the feed has
                watcher._first_view = None
            feed.watchers.add(watcher)
            self._start_thread()
            self._changed.notify()
        return watcher

    def stop(self) -> None:
        """Stop the feeds' thread (the server stops); open watchers get nothing more."""
        with self._changed:
            self._stopping = True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._readers.shutdown(wait=False)

    # -- counts ------------------------------------------------------------------------

    def _reserve(self, tenant: str) -> None:
        with self._lock:
            self._settle_closed()
            mine, total = self._open.get(tenant, 0), sum(self._open.values())
            if self.max_per_tenant and mine >= self.max_per_tenant:
                raise TooManyRequests(
                    f"tenant {tenant} already follows {mine} job streams on this server, its "
                    f"limit (TUNEFORGE_MAX_WATCHERS_PER_TENANT); close one, or try again later",
                    retry_after_seconds=_RETRY_AFTER_SECONDS,
                )
            if self.max_total and total >= self.max_total:
                raise TooManyRequests(
                    f"this server already serves {total} job streams, its limit "
                    "(TUNEFORGE_MAX_WATCHERS); try again later, or another replica",
                    retry_after_seconds=_RETRY_AFTER_SECONDS,
                )
            self._open[tenant] = mine + 1

    def _release(self, tenant: str) -> None:
        with self._lock:
            self._give_back(tenant)

    def _give_back(self, tenant: str) -> None:
        """With the lock held: one watcher of the tenant fewer."""
        left = self._open.get(tenant, 0) - 1
        if left > 0:
            self._open[tenant] = left
        else:
            self._open.pop(tenant, None)

    def _report_open_count(self) -> None:
        """Tell `on_open_count` how many watchers are open, when that changed: outside the
        feeds' lock, and never from a close (which may run in the garbage collector)."""
        if self._on_open_count is None:
            return
        with self._report_lock:
            with self._lock:
                count = sum(self._open.values())
            if count != self._reported:
                self._reported = count
                self._on_open_count(count)

    def _settle_closed_if_free(self) -> None:
        """Settle closed watchers now unless the lock is taken (perhaps by this very
        thread, when a close runs from the garbage collector): then later."""
        if self._lock.acquire(blocking=False):
            try:
                self._settle_closed()
            finally:
                self._lock.release()

    def _settle_closed(self) -> None:
        """With the lock held: leave the feeds of closed watchers, give their places back."""
        while True:
            try:
                watcher = self._closing.get_nowait()
            except queue.Empty:
                return
            feed = self._feeds.get(watcher.job_id)
            if feed is not None:
                feed.watchers.discard(watcher)
                if not feed.watchers:
                    del self._feeds[watcher.job_id]
            self._give_back(watcher.tenant)

    # -- the thread --------------------------------------------------------------------

    def _start_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="job-feeds", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            due: list[_Feed] = []
            with self._changed:
                self._settle_closed()
                if self._stopping:
                    return
                now = time.monotonic()
                if not self._feeds:
                    self._changed.wait(self.poll_seconds)  # closes to settle meanwhile
                else:
                    due = [feed for feed in self._feeds.values() if feed.due <= now]
                    if not due:
                        self._changed.wait(min(feed.due for feed in self._feeds.values()) - now)
            self._report_open_count()
            if due:
                list(self._readers.map(self._read, due))

    def _read(self, feed: _Feed) -> None:
        """Read the job once and hand a change to each of its watchers (those it had when
        the read began: one that opened since read the job itself). Never raises: the
        thread goes on for every other feed."""
        started = time.monotonic()
        feed.due = started + self.poll_seconds
        with self._lock:
            watchers = list(feed.watchers)
            catching_up, feed.catching_up = feed.catching_up, set()
            feed.reading = True
            self.reads += 1
        try:
            unmarked_since = self.store.markers.unmarked_since(
                feed.job_id, max_age=self.markers_max_age
            )
            if unmarked_since is not None and unmarked_since < feed.control_read_at:
                unmarked_since = None  # older than what this feed last read: read it again
            job = get_job(
                self.store, feed.job_id, tenant=feed.tenant, markers_listed_at=unmarked_since
            )
            if unmarked_since is None:
                feed.control_read_at = started
            view = _view(job)
            terminal = is_visibly_terminal(job)
        except Exception as error:  # the next read retries; the thread goes on
            with self._lock:
                feed.reading = False
                feed.catching_up |= catching_up
            if not feed.failing:
                log.warning("reading job %s for its watchers failed: %s", feed.job_id, error)
            feed.failing = True
            if not isinstance(error, StoreUnavailable):  # the store away: waited out
                feed.failed_reads += 1
                if feed.failed_reads >= _FAILED_READS_TO_END:
                    self._end_feed(feed, watchers, error)
            return
        if feed.failing:
            log.info("reading job %s for its watchers works again", feed.job_id)
            feed.failing = False
        feed.failed_reads = 0
        with self._changed:
            feed.reading = False
            changed = view != feed.view or terminal
            if changed:
                feed.view = view
                feed.version += 1
            version = feed.version
            if (
                terminal
                and not feed.catching_up  # none opened during this read: none left behind
                and self._feeds.get(feed.job_id) is feed
            ):
                del self._feeds[feed.job_id]  # handed out once: nothing reads it again
        woken: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = {}
        # Each skips a view it has (by version; one catching up, by its first view).
        for watcher in watchers if changed else [w for w in watchers if w in catching_up]:
            waiting = watcher._hand(job, view, version)
            if waiting is not None:
                woken.setdefault(waiting[0], []).append(waiting[1])
        for loop, events in woken.items():
            _wake(loop, *events)

    def _end_feed(self, feed: _Feed, watchers: list[Watcher], error: Exception) -> None:
        """The job can no longer be read: no more reads; each watcher raises `error`."""
        log.warning("ending the %d stream(s) of job %s: %s", len(watchers), feed.job_id, error)
        with self._changed:
            if self._feeds.get(feed.job_id) is feed:
                del self._feeds[feed.job_id]
            ending = set(watchers) | feed.watchers  # those that joined since the read too
        for watcher in ending:
            watcher.end(error)
