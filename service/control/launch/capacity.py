"""What the configured launcher can ever run, checked when a job is created.

A job that asks for more than its launcher can ever give would sit QUEUED forever (or
fail at launch); it is refused at create with a 400 naming the field instead:

- local: one machine, so `resources.nodes` must be 1. On a host with GPUs (its
  inventory, service/control/launch/gpus.py) `resources.gpus` may be at most how many it has. On
  a host without any, `gpus` 0 or 1 runs on the CPU, and more needs
  `TUNEFORGE_LOCAL_CPU_RANKS=true`, which runs each asked-for GPU as one CPU process
  (torchrun, gloo).
- ray, kubernetes: nodes and GPUs are the cluster's to schedule (a Ray cluster may
  autoscale; several nodes run as a Ray Train group); nothing is refused here.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from jobstore.documents import JobResources
from service.control.launch.gpus import host_gpus
from service.errors import InvalidArgument
from service.settings import Settings


@dataclass(frozen=True)
class LaunchCapacity:
    launcher: str
    host_gpus: tuple[str, ...]
    cpu_ranks: bool

    def check(self, resources: JobResources) -> None:
        """Raise InvalidArgument naming the field the launcher cannot satisfy."""
        if resources.nodes > 1 and self.launcher == "local":
            raise InvalidArgument(
                f"resources.nodes is {resources.nodes}, but the {self.launcher} launcher runs "
                "a job on one node; use nodes 1, or the ray or kubernetes launcher for several",
                field="resources.nodes",
            )
        if self.launcher != "local" or resources.gpus <= len(self.host_gpus):
            return
        if self.host_gpus:
            raise InvalidArgument(
                f"resources.gpus is {resources.gpus}, but this host has "
                f"{len(self.host_gpus)} GPU(s) for trainers ({', '.join(self.host_gpus)}); "
                f"ask for at most {len(self.host_gpus)}",
                field="resources.gpus",
            )
        if resources.gpus > 1 and not self.cpu_ranks:
            raise InvalidArgument(
                f"resources.gpus is {resources.gpus}, but this host has no GPUs for "
                "trainers; ask for 0 or 1 (both train on the CPU), or an operator can set "
                "TUNEFORGE_LOCAL_CPU_RANKS=true to run each GPU asked for as a CPU process",
                field="resources.gpus",
            )


@functools.cache
def _host_gpus(configured: str | None) -> tuple[str, ...]:
    # nvidia-smi: once per server process, not per create.
    return tuple(host_gpus(configured, os.environ))


def launch_capacity(settings: Settings) -> LaunchCapacity:
    devices = _host_gpus(settings.gpus) if settings.launcher == "local" else ()
    return LaunchCapacity(settings.launcher, devices, settings.local_cpu_ranks)
