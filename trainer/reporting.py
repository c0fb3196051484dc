"""Everything the trainer tells the outside world, through the JobStore.

- State changes and progress go to status.json by compare-and-swap, and every write is
  fenced: it happens only while status.launch names this process's attempt. A trainer
  that lost its job (the reconciler launched a newer attempt) must not overwrite the
  newer one's state, so it stops at once and writes nothing more.
- A background heartbeat thread writes `heartbeatAt` and the latest progress every
  TUNEFORGE_HEARTBEAT_SECONDS, reads control.json for a stop request (so the training
  loop never waits on the network for it), and every ~10 s uploads the log and metrics.
- The log and metrics are uploaded again just before a terminal state is written, so
  whoever sees the job ended finds them whole.
- `status.launch` is never modified here: the reconciler owns it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobstore.documents import (
    DataCheck,
    DataSummary,
    Failure,
    JobState,
    JobStatus,
    Progress,
    utc_now,
)
from jobstore.errors import TuneforgeError
from jobstore.store import JobStore
from trainer.errors import Fenced

log = logging.getLogger(__name__)

# Tokens per second is measured over about this long, so it follows speed changes.
_THROUGHPUT_WINDOW_SECONDS = 30.0


def _gpu_memory_bytes() -> int | None:
    """Peak memory this process allocated on its GPU, or None without one (or torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_allocated())


# States the trainer moves through in order. A later attempt (a resume) can find the
# job already past a phase; asking for an earlier phase then leaves the state as it is.
_PHASES = (JobState.QUEUED, JobState.VALIDATING, JobState.RUNNING)


class Reporter:
    def __init__(
        self,
        store: JobStore,
        job_id: str,
        attempt: int,
        *,
        heartbeat_seconds: float = 2.0,
        log_file: Path | None = None,
        upload_seconds: float = 10.0,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.heartbeat_seconds = heartbeat_seconds
        self.log_file = log_file
        self.upload_seconds = upload_seconds
        # Set by the heartbeat thread, read by the training loop between steps.
        self.stop_requested = threading.Event()
        self.pause_requested = threading.Event()
        self.fenced = threading.Event()
        self._progress = Progress()
        self._lock = threading.Lock()
        self._throughput: list[tuple[float, int]] = []  # (monotonic time, tokensSeen)
        self._optimizer: Any = None
        self._uploads: list[Callable[[], None]] = []
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    # -- fencing -----------------------------------------------------------------

    def _check_owner(self, status: JobStatus) -> None:
        if status.launch is None or status.launch.attempt != self.attempt:
            owner = "no attempt" if status.launch is None else f"attempt {status.launch.attempt}"
            raise Fenced(f"status.json names {owner}, this trainer is attempt {self.attempt}")

    def _fenced(self, error: Fenced) -> Fenced:
        self.fenced.set()
        return error

    def read_status(self) -> JobStatus:
        """The current status; raises Fenced unless this attempt owns the job."""
        status, _ = self.store.get_status(self.job_id)
        try:
            self._check_owner(status)
        except Fenced as error:
            raise self._fenced(error) from None
        return status

    # -- status writes -----------------------------------------------------------

    def set_progress(self, progress: Progress) -> None:
        """Publish the latest progress; the next heartbeat or state change writes it.

        Fills what /metrics shows that the loop does not count itself: throughput over
        the last `_THROUGHPUT_WINDOW_SECONDS`, the optimizer's learning rate, GPU memory.
        """
        progress = progress.model_copy()
        now = time.monotonic()
        with self._lock:
            self._throughput.append((now, progress.tokensSeen))
            while len(self._throughput) > 2 and now - self._throughput[1][0] >= (
                _THROUGHPUT_WINDOW_SECONDS
            ):
                self._throughput.pop(0)
            (first_time, first_tokens) = self._throughput[0]
            if progress.tokensPerSecond is None and now > first_time:
                tokens = progress.tokensSeen - first_tokens
                if tokens >= 0 and len(self._throughput) > 1:
                    progress.tokensPerSecond = round(tokens / (now - first_time), 2)
            if progress.learningRate is None and self._optimizer is not None:
                progress.learningRate = float(self._optimizer.param_groups[0]["lr"])
            if progress.gpuMemoryBytes is None:
                progress.gpuMemoryBytes = _gpu_memory_bytes()
            self._progress = progress

    def set_data_check(self, check: DataCheck) -> None:
        """Publish how far preflight is through the data (progress.dataCheck); the next
        heartbeat writes it. Training's first progress replaces it."""
        with self._lock:
            self._progress = self._progress.model_copy(update={"dataCheck": check})

    def observe_optimizer(self, optimizer: Any) -> None:
        """Report this optimizer's learning rate with every progress update."""
        self._optimizer = optimizer

    def progress(self) -> Progress:
        with self._lock:
            return self._progress.model_copy()

    def move_to(self, state: JobState, message: str, *, failure: Failure | None = None) -> bool:
        """Move the job to `state` with the latest progress; True if the state changed.

        Raises IllegalTransition for a move the state machine forbids (a bug) and Fenced
        when another attempt owns the job.
        """
        progress = self.progress()
        previous: list[JobState] = []
        if state.is_terminal():
            self.read_status()  # a superseded attempt's metrics must not go over the owner's
            self._upload_before_the_end()

        def change(status: JobStatus) -> JobStatus | None:
            self._check_owner(status)
            previous[:] = [status.state]
            if state is JobState.FAILED and status.state.is_terminal():
                return None  # it ended some other way first; that outcome stands
            already_past = status.state == state or (
                state in _PHASES
                and status.state in _PHASES
                and _PHASES.index(status.state) > _PHASES.index(state)
            )
            moved = status.model_copy(deep=True) if already_past else status.moved_to(state)
            moved.progress = progress
            moved.heartbeatAt = utc_now()
            if failure is not None:
                moved.failure = failure
            return moved

        try:
            written = self.store.update_status(self.job_id, change)
        except Fenced as error:
            raise self._fenced(error) from None
        changed = written is not None and previous[0] != written.state
        if changed:
            log.info("job %s: %s -> %s: %s", self.job_id, previous[0], state, message)
            self.event("STATE_CHANGED", f"{state}: {message}", state)
        return changed

    def fail(self, failure: Failure) -> bool:
        """Write FAILED with its reason, unless the job already ended; True if written."""
        return self.move_to(JobState.FAILED, failure.message, failure=failure)

    def heartbeat(self) -> None:
        progress = self.progress()

        def change(status: JobStatus) -> JobStatus | None:
            self._check_owner(status)
            if status.state.is_terminal():
                return None  # a finished job's document no longer changes
            beat = status.model_copy(deep=True)
            beat.heartbeatAt = utc_now()
            beat.progress = progress
            return beat

        try:
            self.store.update_status(self.job_id, change)
        except Fenced as error:
            raise self._fenced(error) from None

    def set_data_summary(self, summary: DataSummary) -> None:
        """Write what preflight validation found into status.dataSummary, now."""

        def change(status: JobStatus) -> JobStatus | None:
            self._check_owner(status)
            if status.state.is_terminal():
                return None
            summarized = status.model_copy(deep=True)
            summarized.dataSummary = summary
            return summarized

        try:
            self.store.update_status(self.job_id, change)
        except Fenced as error:
            raise self._fenced(error) from None

    def event(self, event_type: str, message: str, state: JobState | None = None) -> None:
        if self.fenced.is_set():
            return
        self.store.append_event(self.job_id, event_type, message, state)

    # -- stop and pause requests -----------------------------------------------------------

    def poll_stop(self) -> bool:
        """Read control.json now; True (and the flag set) if a stop was requested. The
        pause flag follows the pause request (a resume before the pause is carried out
        withdraws it)."""
        control = self.store.get_control(self.job_id)
        if control.stopRequested:
            self.stop_requested.set()
        if control.pauseRequested:
            self.pause_requested.set()
        else:
            self.pause_requested.clear()
        return self.stop_requested.is_set()

    # -- uploads -----------------------------------------------------------------

    def add_periodic_upload(self, upload: Callable[[], None]) -> None:
        self._uploads.append(upload)

    def upload_log(self) -> None:
        if self.fenced.is_set() or self.log_file is None or not self.log_file.is_file():
            return
        self.store.upload_log(self.job_id, self.attempt, self.log_file)

    def _upload_before_the_end(self) -> None:
        """Metrics and the log before a terminal state is written: whoever sees the job
        ended (a script fetching the log right after COMPLETED) finds them whole up to
        its end. The trainer's last lines follow with its final `upload_all`, so an
        upload that fails here is logged and the state is written all the same."""
        try:
            self.upload_all()
        except Exception:
            log.exception("job %s: could not upload the log and metrics before ending", self.job_id)

    def upload_all(self) -> None:
        """Metrics and the log now; nothing once fenced (the output is another's)."""
        if self.fenced.is_set():
            return
        for upload in self._uploads:
            upload()
        self.upload_log()

    # -- the heartbeat thread ----------------------------------------------------

    def start_heartbeat(self) -> None:
        if self._thread is not None:
            return
        self._halt.clear()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        """Stop the thread and wait for it, so no heartbeat races the final state write."""
        if self._thread is None:
            return
        self._halt.set()
        self._thread.join()
        self._thread = None

    def _beat(self) -> None:
        last_upload = time.monotonic()
        while not self._halt.wait(self.heartbeat_seconds):
            try:
                self.heartbeat()
                self.poll_stop()
                if time.monotonic() - last_upload >= self.upload_seconds:
                    last_upload = time.monotonic()
                    self.upload_all()
            except Fenced as error:
                log.error("lost the job: %s; stopping", error)
                return
            except TuneforgeError as error:
                # The store hiccuped; the next beat tries again. A long outage shows up
                # as a stale heartbeat, which the reconciler acts on.
                log.warning("heartbeat failed: %s", error)
            except Exception:
                log.exception("heartbeat failed")
