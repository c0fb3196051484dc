"""The interface every launcher implements: local, ray and kubernetes."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from jobstore.documents import JobSpec, LaunchRecord
from service.control.launch.gpus import DeviceLease


@dataclass(frozen=True)
class Started:
    """What a launcher reports about a trainer it just started.

    `host` is where the attempt runs: the local host name, or for a cluster launcher
    the cluster's name for the attempt (a Ray submission id, `<namespace>/<job name>` in
    Kubernetes), by which `observe` and `signal` find it again from the launch record.
    """

    host: str
    pid: int | None
    process_start_ticks: int | None


@dataclass(frozen=True)
class Observed:
    """What a launcher can tell about an attempt: alive, exited (with code), or unknown.

    `reason` is what a cluster launcher learned beyond the exit code, in words for the
    job's events (e.g. "out of memory (OOMKilled)", "evicted"); None when nothing more
    is known.
    """

    alive: bool | None
    exit_code: int | None = None
    reason: str | None = None
    # The ended trainer's peak resident memory, where the launcher measured it.
    peak_memory_bytes: int | None = None


class Launcher(Protocol):
    name: str

    def start(
        self,
        spec: JobSpec,
        attempt: int,
        environment: dict[str, str],
        devices: DeviceLease | None = None,
    ) -> Started:
        """Start one attempt's trainer. `devices`: the host GPUs it runs on, leased by
        the reconciler (local launcher only; a cluster schedules GPUs itself)."""
        ...

    def observe(self, launch: LaunchRecord) -> Observed: ...

    def signal(self, launch: LaunchRecord, which: signal.Signals) -> None: ...

    def local_log(self, job_id: str, attempt: int) -> Path | None: ...

    def release(self, job_id: str) -> None:
        """The job ended and its end was seen: remove what its attempts left on the
        cluster (Kubernetes Jobs, their pods and Services). Nothing to do elsewhere."""
        ...

    def shutdown(self, grace_seconds: float) -> None: ...
