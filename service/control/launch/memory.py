"""Trainer memory on a local host: a memory cgroup of its own per trainer (when the
operator sets a limit and the host lets the service make one), and telling the kernel's
OOM killer's SIGKILL from any other.

The OOM killer ends a process with SIGKILL; the exit code alone cannot tell that from an
operator's `kill -9`, which is a crash worth retrying, while running out of memory is
not (the same job on the same data runs out again). The memory cgroup a trainer runs in
counts the processes the OOM killer ended in it: `oom_kill` in memory.events (cgroup
v2) or memory.oom_control (v1). A count that grew while the trainer ran means memory.

With `TUNEFORGE_TRAINER_MEMORY_LIMIT_BYTES` each trainer (with its torchrun ranks) runs
in a cgroup of its own under the service's, `tuneforge-<job>-<attempt>`, limited to
that many bytes of memory: one job cannot take the host down, and the count is the
trainer's alone. Without it (or where the host refuses: no cgroup file system, no
permission, a cgroup v2 tree without the memory controller delegated) a trainer stays
in the service's cgroup and the count is that cgroup's, shared with the server and the
other trainers: an OOM kill elsewhere at the same moment would be taken for this one's.
"""

from __future__ import annotations

import logging
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from jobstore.documents import TrainerExit

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
_OOM_KILL = re.compile(r"^oom_kill (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class MemoryCgroup:
    directory: Path
    version: int  # 1 or 2

    @property
    def counter_file(self) -> Path:
        return self.directory / ("memory.events" if self.version == 2 else "memory.oom_control")

    def oom_kills(self) -> int | None:
        """Processes of this cgroup the OOM killer ended so far; None if unreadable."""
        try:
            found = _OOM_KILL.search(self.counter_file.read_text())
        except OSError:
            return None
        return int(found.group(1)) if found else None

    def add_process_file(self) -> Path:
        """Writing a pid here moves that process (and its future children) in."""
        return self.directory / "cgroup.procs"

    def remove(self) -> None:
        """Remove the (empty) cgroup; a cgroup still holding a process stays (logged)."""
        try:
            self.directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning("could not remove memory cgroup %s: %s", self.directory, error)


def memory_cgroup_in(proc_cgroup: str, root: Path = CGROUP_ROOT) -> MemoryCgroup | None:
    """The memory cgroup named by the text of a /proc/<pid>/cgroup file: the v1 memory
    hierarchy's line when there is one, else the v2 line (`0::/path`) on a v2 mount."""
    v2: MemoryCgroup | None = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        relative = path.lstrip("/")
        if "memory" in controllers.split(","):
            return MemoryCgroup(root / "memory" / relative, 1)
        if hierarchy == "0" and not controllers and (root / "cgroup.controllers").exists():
            v2 = MemoryCgroup(root / relative, 2)
    return v2


def memory_cgroup_of(pid: int | str = "self") -> MemoryCgroup | None:
    """The memory cgroup process `pid` is in, if the counter can be read there."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    cgroup = memory_cgroup_in(text)
    if cgroup is None or cgroup.oom_kills() is None:
        return None
    return cgroup


def make_trainer_cgroup(name: str, limit_bytes: int) -> MemoryCgroup:
    """A memory cgroup `name` under this process's, limited to `limit_bytes` (swap
    included where the host lets that be set). Raises OSError where the host refuses."""
    parent = memory_cgroup_of("self")
    if parent is None:
        raise OSError("this process is in no readable memory cgroup")
    cgroup = MemoryCgroup(parent.directory / name, parent.version)
    cgroup.directory.mkdir(exist_ok=True)
    try:
        if cgroup.version == 1:
            (cgroup.directory / "memory.limit_in_bytes").write_text(str(limit_bytes))
            # Memory and swap together, where the kernel accounts swap; and no swapping
            # anyway, so the limit ends the trainer instead of slowing it to a crawl.
            with_swap = cgroup.directory / "memory.memsw.limit_in_bytes"
            if with_swap.exists():
                with_swap.write_text(str(limit_bytes))
            swappiness = cgroup.directory / "memory.swappiness"
            if swappiness.exists():
                swappiness.write_text("0")
        else:
            (cgroup.directory / "memory.max").write_text(str(limit_bytes))
            swap = cgroup.directory / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
        if cgroup.oom_kills() is None:
            raise OSError(f"{cgroup.counter_file} has no oom_kill count")
    except OSError:
        cgroup.remove()
        raise
    return cgroup


def oom_verdict(
    exit_code: int,
    *,
    kills_before: int | None,
    kills_after: int | None,
    own_limit: int | None,
) -> str | None:
    """ "out of memory (...)" if a trainer's end was the OOM killer's, else None.

    Only if its cgroup counted a kill while it ran; never for a clean exit, a preemption
    (SIGTERM) or bad input. In a cgroup of its own (`own_limit` bytes) any other failed
    exit counts: torchrun exits with an error when the OOM killer ends one of its ranks.
    In the service's shared cgroup, where the kill may have been another process's, only
    the trainer's own SIGKILL does."""
    if kills_before is None or kills_after is None or kills_after <= kills_before:
        return None
    if exit_code in (0, TrainerExit.PREEMPTED, TrainerExit.BAD_INPUT, -signal.SIGTERM):
        return None
    if own_limit is None:
        if exit_code != -signal.SIGKILL:
            return None
        return "out of memory (the kernel's OOM killer ended it)"
    return (
        "out of memory (the kernel's OOM killer ended it at its memory limit of "
        f"{size_in_words(own_limit)})"
    )


def memory_failure_details(
    peak_bytes: int | None, data_bytes: int | None, training_records: int | None
) -> str:
    """ ", at a peak of 10.4 GB of resident memory, with 92 MB of data (300,000 training
    records)": what is known, for the message of a job that ran out of memory."""
    parts = []
    if peak_bytes:
        parts.append(f"at a peak of {size_in_words(peak_bytes)} of resident memory")
    if data_bytes is not None:
        data = f"with {size_in_words(data_bytes)} of data"
        if training_records is not None:
            data += f" ({training_records:,} training records)"
        parts.append(data)
    return "".join(f", {part}" for part in parts)


def size_in_words(size: int) -> str:
    """Bytes as a person reads them: 10.4 GB, 92.0 MB, 23.1 kB (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size} bytes"
