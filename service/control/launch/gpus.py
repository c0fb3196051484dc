"""The local host's GPUs, and which trainer holds which (the local launcher only).

The inventory is the operator's list (`TUNEFORGE_GPUS`, e.g. `0,1,2,3`), else the
server's own `CUDA_VISIBLE_DEVICES`, else every device `nvidia-smi -L` lists. Each entry
is what the trainer is given in its `CUDA_VISIBLE_DEVICES`: an index (in PCI bus order,
as nvidia-smi numbers them) or a UUID.

Invariant: a device is in use exactly while a process holds the lock (`flock`) of its
file under `<home>/gpus/`. The launcher takes the locks of a job's devices before its
trainer starts, hands them to the trainer process (an inherited file descriptor) and
closes its own copies; the kernel drops them when the trainer's process ends, however it
ends (exit, crash, SIGKILL, OOM kill). Every API worker of the host, and a restarted
server, therefore sees the same devices free, without trusting memory or the store: a
device is never given to two trainers, and never lost to a trainer that is gone.

A job with several GPUs runs under torchrun: its agent holds the locks, its ranks (which
torch starts without inherited descriptors) die with it (trainer/distributed.py
`die_with_parent`), so the devices come free when the last of them is gone, give or take
the moment the kernel takes to deliver that SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.settings import gpu_names


def host_gpus(configured: str | None, environ: Mapping[str, str]) -> list[str]:
    """The devices this host offers trainers, without importing torch into the server.

    `configured` is TUNEFORGE_GPUS (an empty string: none, this host trains on CPUs);
    unset, the server's CUDA_VISIBLE_DEVICES ("-1" or empty: none); unset too, the GPUs
    nvidia-smi lists, by index. Raises ValueError for a name CUDA would not take.
    """
    listed = configured if configured is not None else environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return gpu_names(listed)
    return [str(index) for index in range(_nvidia_smi_count())]


def _nvidia_smi_count() -> int:
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


@dataclass
class DeviceLease:
    """Devices locked for one trainer: `file_descriptors` hold the locks until closed.

    The launcher passes the descriptors to the trainer process and then `release()`s its
    own copies; from then on the trainer alone holds the devices."""

    devices: list[str]
    file_descriptors: list[int] = field(default_factory=list)

    @property
    def visible_devices(self) -> str:
        """The trainer's CUDA_VISIBLE_DEVICES: its ranks see these as cuda:0..N-1."""
        return ",".join(self.devices)

    def release(self) -> None:
        """Close this process's copies of the locks (idempotent)."""
        descriptors, self.file_descriptors = self.file_descriptors, []
        for descriptor in descriptors:
            with contextlib.suppress(OSError):
                os.close(descriptor)


class GpuInventory:
    """The host's devices and their locks; see the module docstring for the invariant."""

    def __init__(self, devices: list[str], lock_directory: Path) -> None:
        self.devices = list(devices)
        self.lock_directory = lock_directory
        if self.devices:
            lock_directory.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self.devices)

    def _lock_path(self, device: str) -> Path:
        return self.lock_directory / f"gpu-{device}.lock"

    def _try_lock(self, device: str) -> int | None:
        self.lock_directory.mkdir(parents=True, exist_ok=True)  # removed since start
        descriptor = os.open(self._lock_path(device), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return None
        except BaseException:
            os.close(descriptor)
            raise
        return descriptor

    def acquire(self, count: int) -> DeviceLease | None:
        """Lock `count` free devices (lowest first) for one trainer, or None (and nothing
        held) when fewer are free."""
        if count <= 0:
            raise ValueError("a lease takes at least one device")
        lease = DeviceLease(devices=[])
        try:
            for device in self.devices:
                if len(lease.devices) == count:
                    break
                descriptor = self._try_lock(device)
                if descriptor is not None:
                    lease.devices.append(device)
                    lease.file_descriptors.append(descriptor)
        except BaseException:  # e.g. out of file descriptors: hold nothing
            lease.release()
            raise
        if len(lease.devices) < count:
            lease.release()
            return None
        return lease

    def free_devices(self) -> list[str]:
        """Devices no process holds a lock on now, read from /proc/locks, so that
        counting them (for /metrics) never takes a lock a sibling worker's `acquire`
        could then find taken. Where /proc/locks cannot be read: each lock taken and
        dropped at once."""
        try:
            held = _flock_inodes(Path("/proc/locks").read_text())
        except OSError:
            return [device for device in self.devices if self._probe(device)]
        free = []
        for device in self.devices:
            try:
                inode = os.stat(self._lock_path(device)).st_ino
            except FileNotFoundError:
                free.append(device)  # never locked
                continue
            if inode not in held:
                free.append(device)
        return free

    def _probe(self, device: str) -> bool:
        descriptor = self._try_lock(device)
        if descriptor is None:
            return False
        os.close(descriptor)
        return True


def _flock_inodes(proc_locks: str) -> set[int]:
    """Inodes of the files with a flock() lock, from /proc/locks lines such as
    `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF` (device and inode, then the range).
    Another device's file with the same inode number only makes a free GPU look used
    for one scrape."""
    inodes = set()
    for line in proc_locks.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[2] != "->":
            inodes.add(int(fields[5].rsplit(":", 1)[-1]))
    return inodes
