"""What the configured launcher can ever run, checked when a job is created.

A job that asks for more than its launcher can ever give would sit QUEUED forever (or
fail at launch); it is refused at create with a 400 naming the field instead:

- local: one machine, so `resources.nodes` must be 1; `resources.gpus` > 1 needs that
  many visible GPUs, or `TUNEFORGE_LOCAL_CPU_RANKS=true`, which runs each asked-for GPU
  as one CPU process (torchrun, gloo). `gpus` 0 or 1 always runs (on a CPU when the host
  has no GPU).
- ray, kubernetes: nodes and GPUs are the cluster's to schedule (a Ray cluster may
  autoscale; several nodes run as a Ray Train group); nothing is refused here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from service.documents import JobResources
from service.errors import InvalidArgument
from service.launch.local import visible_gpu_count
from service.settings import Settings


@dataclass(frozen=True)
class LaunchCapacity:
    launcher: str
    visible_gpus: int
    cpu_ranks: bool

    def check(self, resources: JobResources) -> None:
        """Raise InvalidArgument naming the field the launcher cannot satisfy."""
        if resources.nodes > 1 and self.launcher == "local":
            raise InvalidArgument(
                f"resources.nodes is {resources.nodes}, but the {self.launcher} launcher runs "
                "a job on one node; use nodes 1, or the ray or kubernetes launcher for several",
                field="resources.nodes",
            )
        if self.launcher != "local" or resources.gpus <= 1:
            return
        if resources.gpus > self.visible_gpus and not self.cpu_ranks:
            raise InvalidArgument(
                f"resources.gpus is {resources.gpus}, but this host has "
                f"{self.visible_gpus} GPU(s) for trainers; ask for at most "
                f"{max(self.visible_gpus, 1)} (an operator can set "
                "TUNEFORGE_LOCAL_CPU_RANKS=true to run each GPU asked for as a CPU process)",
                field="resources.gpus",
            )


@functools.cache
def _visible_gpus() -> int:
    return visible_gpu_count()  # nvidia-smi: once per server process, not per create


def launch_capacity(settings: Settings) -> LaunchCapacity:
    visible = _visible_gpus() if settings.launcher == "local" else 0
    return LaunchCapacity(settings.launcher, visible, settings.local_cpu_ranks)
