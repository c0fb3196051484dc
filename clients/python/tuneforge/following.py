"""Following a job's events: what `Client.events` and `RestClient.events` share.

Each client reads the wire its own way (gRPC calls, REST requests); the rules of
following are here once, so that the two behave the same: a job's events, oldest first,
page after page; when following, read again every `poll_interval` seconds from the last
page token, so that a poll re-reads one event rather than the whole history, until the
job has ended and its terminal event (the one that carries COMPLETED, FAILED or
STOPPED) has been yielded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from tuneforge import convert
from tuneforge.v1 import fine_tuning_pb2 as pb

# (page token, page size) -> (the events after it, oldest first; the next page's token,
# "" on the last page). Page tokens are opaque: they come only from earlier answers.
ReadEventsPage = Callable[[str, int], tuple[Sequence[pb.JobEvent], str]]

# Every writer of a terminal state appends its event right after the status (the
# trainer, the reconciler). A follower that sees the job ended waits this long for that
# event before it stops without it (a writer that died between the two writes).
END_EVENT_GRACE_SECONDS = 10.0


def follow_events(
    read_page: ReadEventsPage,
    get_job: Callable[[], pb.Job],
    *,
    follow: bool,
    page_size: int,
    poll_interval: float,
    end_event_grace: float = END_EVENT_GRACE_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[pb.JobEvent]:
    """The job's events, each once, in sequence order (see the module's docstring).

    Without `follow`, every event there is now, then the end. With it, the job is read
    (`get_job`) before each look at its events; the iterator ends once an event with a
    terminal state has been yielded, or the job has been seen ended for
    `end_event_grace` seconds without one. Nothing runs between two `next()` calls: a
    caller that stops iterating (break, `close()`) leaves nothing behind.
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    token = ""  # re-read from here: every event up to it has been yielded
    last_sequence = -1
    ended = False  # an event with a terminal state has been yielded
    ended_seen_at: float | None = None  # when the job was first seen terminal
    while True:
        job_over = False
        if follow:
            job_over = convert.is_terminal(get_job())
        while True:  # every page from `token` on
            events, next_token = read_page(token, page_size)
            for event in events:
                if event.sequence > last_sequence:
                    last_sequence = event.sequence
                    ended = ended or event.state in convert.TERMINAL_STATES
                    yield event
            if next_token:
                token = next_token
                continue
            if len(events) > 1:
                # The last page: a token just before its last event makes the next
                # poll read that one event again, not the whole page. Safe if more
                # arrived meanwhile: events are skipped by sequence, never by position.
                _, closer = read_page(token, len(events) - 1)
                token = closer or token
            break
        if not follow or ended:
            return
        if job_over:
            now = time.monotonic()
            if ended_seen_at is None:
                ended_seen_at = now
            elif now - ended_seen_at >= end_event_grace:
                return
        sleep(poll_interval)
