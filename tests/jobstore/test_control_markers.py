"""What listings of control markers tell about a job (jobstore/control_markers.py): only
a listing that covered its id, is young enough and began after this process's last
control write says it has no control."""

from __future__ import annotations

import time

from jobstore.control_markers import ControlMarkers


def test_a_listing_that_covered_the_job_and_showed_no_marker_says_since_when() -> None:
    markers = ControlMarkers()
    began = time.monotonic()
    markers.listed(began, "job-b", "job-d", marked={"job-c"})
    assert markers.unmarked_since("job-b", max_age=60) == began
    assert markers.unmarked_since("job-d", max_age=60) == began
    assert markers.unmarked_since("job-c", max_age=60) is None  # marked: read control
    assert markers.unmarked_since("job-a", max_age=60) is None  # outside its range
    assert markers.unmarked_since("job-e", max_age=60) is None


def test_an_old_listing_says_nothing() -> None:
    markers = ControlMarkers()
    markers.listed(time.monotonic() - 10, "job-a", "job-z", marked=set())
    assert markers.unmarked_since("job-m", max_age=5) is None
    assert markers.unmarked_since("job-m", max_age=20) is not None


def test_a_control_written_here_voids_the_listings_that_began_before_it() -> None:
    markers = ControlMarkers()
    markers.listed(time.monotonic(), "job-a", "job-z", marked=set())
    markers.written("job-m")
    assert markers.unmarked_since("job-m", max_age=60) is None
    assert markers.unmarked_since("job-n", max_age=60) is not None  # other jobs unaffected
    after = time.monotonic()
    markers.listed(after, "job-a", "job-z", marked=set())  # a later listing counts again
    assert markers.unmarked_since("job-m", max_age=60) == after


def test_only_the_newest_listings_are_kept() -> None:
    markers = ControlMarkers()
    markers.listed(time.monotonic(), "job-a", "job-b", marked=set())
    for _ in range(4):
        markers.listed(time.monotonic(), "job-x", "job-z", marked=set())
    assert markers.unmarked_since("job-a", max_age=60) is None
    assert markers.unmarked_since("job-y", max_age=60) is not None


def test_the_listing_begun_last_decides_whichever_ended_last() -> None:
    """A slow listing begun before a stop, ending after a quicker one that shows the
    stop's marker, must not say the job has none."""
    markers = ControlMarkers()
    slow_began = time.monotonic()
    quick_began = slow_began + 0.5
    markers.listed(quick_began, "job-a", "job-z", marked={"job-m"})
    markers.listed(slow_began, "job-a", "job-z", marked=set())
    assert markers.unmarked_since("job-m", max_age=60) is None
