"""The local host's GPU inventory (service/control/launch/gpus.py): which devices it offers, and
locks that a trainer process holds for exactly as long as it lives.

Real locks and real processes: a device leased to a child process stays taken for every
other opener of the lock files (another API worker, a restarted server) until that
process ends, however it ends.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from service.control.launch.gpus import GpuInventory, host_gpus


def test_the_setting_wins_then_cuda_visible_devices() -> None:
    environ = {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert host_gpus("0,1,2,3", environ) == ["0", "1", "2", "3"]
    assert host_gpus(None, environ) == ["2", "3"]
    assert host_gpus("", environ) == []  # an operator's "no GPUs here"
    assert host_gpus(None, {"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ["1"]  # CUDA stops at -1
    uuid = "GPU-8f1a7c2e-0b3d-4e5f-9a6b-1c2d3e4f5a6b"
    assert host_gpus(f" {uuid} , MIG-4", {}) == [uuid, "MIG-4"]


@pytest.mark.parametrize("listed", ["0,0", "0;rm -rf", "../x"])
def test_a_list_cuda_would_not_take_is_refused(listed: str) -> None:
    with pytest.raises(ValueError, match="GPU"):
        host_gpus(listed, {})


def test_devices_are_leased_lowest_first_and_never_twice(tmp_path: Path) -> None:
    inventory = GpuInventory(["0", "1", "2", "3"], tmp_path / "gpus")
    first = inventory.acquire(1)
    second = inventory.acquire(2)
    assert first is not None and second is not None
    assert (first.devices, second.devices) == (["0"], ["1", "2"])
    assert inventory.free_devices() == ["3"]
    # Another opener of the same files (a sibling API worker) sees the same.
    sibling = GpuInventory(["0", "1", "2", "3"], tmp_path / "gpus")
    assert sibling.acquire(2) is None
    assert sibling.free_devices() == ["3"]  # a refused lease held nothing
    first.release()
    assert sibling.free_devices() == ["0", "3"]
    second.release()
    assert inventory.free_devices() == ["0", "1", "2", "3"]


def test_a_killed_trainers_devices_come_back(tmp_path: Path) -> None:
    inventory = GpuInventory(["0", "1"], tmp_path / "gpus")
    lease = inventory.acquire(2)
    assert lease is not None
    # What the local launcher does: the trainer inherits the locks, the server lets go.
    trainer = subprocess.Popen(["sleep", "60"], pass_fds=tuple(lease.file_descriptors))
    lease.release()
    try:
        assert inventory.free_devices() == []
        assert inventory.acquire(1) is None
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(10)
        assert inventory.free_devices() == ["0", "1"]
    finally:
        trainer.kill()
        trainer.wait()


def test_a_lease_that_fails_half_way_holds_nothing(tmp_path: Path) -> None:
    inventory = GpuInventory(["0", "1"], tmp_path / "gpus")
    (tmp_path / "gpus" / "gpu-1.lock").mkdir()  # device 1's lock cannot be opened
    with pytest.raises(IsADirectoryError):
        inventory.acquire(2)
    sibling = GpuInventory(["0"], tmp_path / "gpus")
    lease = sibling.acquire(1)  # device 0 was let go
    assert lease is not None and lease.devices == ["0"]
    lease.release()


def test_the_lock_folder_is_made_again_if_removed(tmp_path: Path) -> None:
    inventory = GpuInventory(["0"], tmp_path / "gpus")
    (tmp_path / "gpus").rmdir()
    lease = inventory.acquire(1)
    assert lease is not None
    assert inventory.free_devices() == []
    lease.release()
    assert inventory.free_devices() == ["0"]
