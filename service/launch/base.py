"""The interface every launcher implements (local now; ray and kubernetes later)."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service.documents import JobSpec, LaunchRecord


@dataclass(frozen=True)
class Started:
    """What a launcher reports about a trainer it just started."""

    host: str
    pid: int | None
    process_start_ticks: int | None


@dataclass(frozen=True)
class Observed:
    """What a launcher can tell about an attempt: alive, exited (with code), or unknown."""

    alive: bool | None
    exit_code: int | None = None


class Launcher(Protocol):
    name: str

    def start(self, spec: JobSpec, attempt: int, environment: dict[str, str]) -> Started: ...

    def observe(self, launch: LaunchRecord) -> Observed: ...

    def signal(self, launch: LaunchRecord, which: signal.Signals) -> None: ...

    def local_log(self, job_id: str, attempt: int) -> Path | None: ...

    def shutdown(self, grace_seconds: float) -> None: ...
