"""The reporter of ranks 1..N-1: reads like rank 0's, writes nothing.

One writer per field (docs/architecture.md): rank 0 alone writes the job's status, heartbeat,
events and log. The other ranks run the same recipe code, which reports as it goes;
their reports go nowhere. What only rank 0 learns (a stop request, a fenced attempt)
reaches them through the recipe's per-step collective (trainer/distributed.py), not
through this object.
"""

from __future__ import annotations

from collections.abc import Callable

from jobstore.documents import DataSummary, Failure, JobState
from trainer.reporting import Reporter


class FollowerReporter(Reporter):
    def move_to(self, state: JobState, message: str, *, failure: Failure | None = None) -> bool:
        return False

    def fail(self, failure: Failure) -> bool:
        return False

    def heartbeat(self) -> None:
        pass

    def set_data_summary(self, summary: DataSummary) -> None:
        pass

    def event(self, event_type: str, message: str, state: JobState | None = None) -> None:
        pass

    def poll_stop(self) -> bool:
        return False

    def add_periodic_upload(self, upload: Callable[[], None]) -> None:
        pass

    def upload_log(self) -> None:
        pass

    def upload_all(self) -> None:
        pass

    def start_heartbeat(self) -> None:
        pass

    def stop_heartbeat(self) -> None:
        pass
