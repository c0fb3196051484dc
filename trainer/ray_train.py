"""`python -m trainer.ray_train --job-id ID --workers N ...`: one attempt of a job as a
Ray Train group, the entrypoint of a multi-node Ray job (service/control/launch/ray.py).

The driver runs a Ray Train `TorchTrainer` with one worker per job node, each asking
for the node's GPUs, placed by `--placement` (STRICT_SPREAD: one a Ray node). Each
worker is that node's torchrun agent: it starts `python -m trainer --job-id ID` once a
GPU (once on CPUs) as a subprocess with torchrun's environment for its rank (RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and
CUDA_VISIBLE_DEVICES set to the worker's own GPUs, so LOCAL_RANK picks one of them
whatever else runs on the node, and the trainer joins its own process group exactly
as under torchrun and never imports Ray.
A subprocess rather than the trainer in the worker itself: the trainer handles SIGTERM
(a signal handler needs the main thread; Ray Train runs the loop in a thread) and must
die with its worker when Ray tears the group down (trainer/distributed.py).

A small `RankGroup` actor connects the driver and the workers:
- node 0's worker publishes the address rank 0's process group listens on (node 0,
  a port free there); the other workers wait for it;
- a SIGTERM to the driver (Ray's stop_job) is passed to every rank as a SIGTERM, as
  torchrun's agent does: each commits a checkpoint and exits;
- when a rank fails, the others get `TEARDOWN_GRACE_SECONDS` to notice (their next
  collective fails) and exit, then a SIGKILL, as torchrun's agent tears a group down;
- each worker records each of its ranks' exit code and when it exited, and the driver
  exits with the group's code by torchrun's rules (trainer/torchrun.py `exit_code_for`):
  0 when every rank did; rank 0's BAD_INPUT / FENCED; PREEMPTED when every failed
  rank was told to stop; else the first failure of another cause. A rank that never
  reported (its worker or node died) is a crash.

Rank 0's output goes to the `trainer.log` its trainer uploads as the job's log; the
other ranks' to their worker's, which Ray shows in the Ray job's log. Each rank's
working directory goes when its trainer has exited (it holds a base model copy).

Ray Train's own checkpoints and storage are not used: the trainer commits its own to
S3. Ray Train gets a temporary storage path and no retries (`max_failures=0`); the
reconciler decides about relaunches from the exit code, as for every launcher.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobstore.documents import TrainerExit
from trainer.torchrun import exit_code_for

log = logging.getLogger("trainer.ray_train")

# How often a worker looks at its trainer and at the group's stop flag.
POLL_SECONDS = 1.0
# How long a worker waits for rank 0's address (rank 0's worker may start last).
ADDRESS_TIMEOUT_SECONDS = 600.0
# After another rank failed, how long a rank may take to notice (its next collective
# fails) and exit before it is SIGKILLed, as torchrun's agent tears a group down: NCCL
# may wait for a dead peer until the collective timeout.
TEARDOWN_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class RankExit:
    """One rank's end, in the shape `exit_code_for` reads (torchrun's ProcessFailure)."""

    exitcode: int
    timestamp: float


def group_exit_code(exits: Mapping[int, RankExit], world_size: int) -> int:
    """The attempt's exit code from the ranks' exits (rank -> its end)."""
    failures = {rank: end for rank, end in exits.items() if end.exitcode != 0}
    if not failures and len(exits) == world_size:
        return int(TrainerExit.OK)
    if not failures:
        missing = sorted(set(range(world_size)) - set(exits))
        log.error("ranks %s never reported an exit (their workers died)", missing)
        return int(TrainerExit.CRASHED)
    return exit_code_for(failures)


class RankGroup:
    """State shared by the driver and the workers of one attempt (a Ray actor)."""

    def __init__(self) -> None:
        self._address: tuple[str, int] | None = None
        self._stopping = False
        self._exits: dict[int, RankExit] = {}

    def publish_address(self, host: str, port: int) -> None:
        self._address = (host, port)

    def address(self) -> tuple[str, int] | None:
        return self._address

    def stop(self) -> None:
        self._stopping = True

    def state(self) -> tuple[bool, bool]:
        """(stopping, a rank has failed): what a worker polls for, in one call."""
        return self._stopping, any(end.exitcode != 0 for end in self._exits.values())

    def finished(self, rank: int, exitcode: int, timestamp: float) -> None:
        self._exits[rank] = RankExit(exitcode, timestamp)

    def exits(self) -> dict[int, RankExit]:
        return dict(self._exits)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        port: int = probe.getsockname()[1]
        return port


def rank_environment(
    base: Mapping[str, str],
    *,
    rank: int,
    world_size: int,
    local_rank: int,
    local_world_size: int,
    master: tuple[str, int],
    workdir: Path,
) -> dict[str, str]:
    """The trainer's environment for one rank: torchrun's variables, and the working
    directory the single-node entrypoint would give it (HOME, HF_HOME, its log)."""
    environment = {
        key: value
        for key, value in base.items()
        # Ray Train's own process group in the worker is not the trainer's.
        if key not in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
    }
    environment.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(local_world_size),
            "MASTER_ADDR": master[0],
            "MASTER_PORT": str(master[1]),
            "HOME": str(workdir),
            "HF_HOME": str(workdir / "hf-home"),
            "TUNEFORGE_LOG_FILE": str(workdir / "trainer.log"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return environment


def _wait_for_address(group: Any, node: int) -> tuple[str, int]:
    import ray

    deadline = time.monotonic() + ADDRESS_TIMEOUT_SECONDS
    while True:
        found: tuple[str, int] | None = ray.get(group.address.remote())
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"node {node}: node 0 published no address")
        time.sleep(0.2)


def worker_environment(base: Mapping[str, str], gpu_ids: list[str]) -> dict[str, str]:
    """The worker's environment for its ranks: its own GPUs only (Ray Train shows a
    worker every GPU of its node's workers, which would let two workers' LOCAL_RANK 0
    share a device where a placement put two on one node)."""
    environment = dict(base)
    if gpu_ids:
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    return environment


def run_rank(config: dict[str, Any]) -> None:
    """Ray Train's loop for one worker (one job node): run its ranks until they exit."""
    import ray
    from ray import train

    context = train.get_context()
    node = context.get_world_rank()
    per_node: int = config["ranks_per_worker"]
    world_size = context.get_world_size() * per_node
    group = config["group"]
    if node == 0:
        # Ray Train's own group set MASTER_ADDR to node 0; its port is taken.
        host = os.environ.get("MASTER_ADDR") or ray.util.get_node_ip_address()
        ray.get(group.publish_address.remote(host, free_port()))
    master = _wait_for_address(group, node)
    base = worker_environment(os.environ, [str(gpu) for gpu in ray.get_gpu_ids()])
    command = [config["python"], "-m", "trainer", "--job-id", config["job_id"]]
    trainers: dict[int, subprocess.Popen[bytes]] = {}
    workdirs: list[Path] = []
    try:
        for local_rank in range(per_node):
            rank = node * per_node + local_rank
            workdir = Path(tempfile.mkdtemp(prefix=f"{config['name']}-r{rank}-"))
            workdirs.append(workdir)
            environment = rank_environment(
                base,
                rank=rank,
                world_size=world_size,
                local_rank=local_rank,
                local_world_size=per_node,
                master=master,
                workdir=workdir,
            )
            log.info("rank %d of %d: %s in %s", rank, world_size, " ".join(command), workdir)
            trainers[rank] = _start(command, workdir, environment, to_log=rank == 0)
        _watch(trainers, group)
    finally:
        for trainer in trainers.values():
            if trainer.poll() is None:  # only when watching itself failed
                trainer.kill()
                trainer.wait()
        # The launcher owns the working directories: the trainer has uploaded its log,
        # and the base model and data copies there would fill the node's disk.
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)


def _start(
    command: list[str], workdir: Path, environment: dict[str, str], *, to_log: bool
) -> subprocess.Popen[bytes]:
    if not to_log:
        # The worker's own output, which Ray keeps with the Ray job's log (`ray job logs`).
        return subprocess.Popen(command, cwd=workdir, env=environment)
    # Rank 0's trainer uploads this file as the job's log.
    with open(workdir / "trainer.log", "ab") as output:
        return subprocess.Popen(
            command, cwd=workdir, env=environment, stdout=output, stderr=subprocess.STDOUT
        )


def _watch(trainers: Mapping[int, subprocess.Popen[bytes]], group: Any) -> None:
    """Wait for the ranks, recording each one's exit as it happens (the other nodes'
    workers tear down on it), passing on the group's stop as one SIGTERM to each, and
    SIGKILLing those still running `TEARDOWN_GRACE_SECONDS` after a rank failed.

    A SIGKILL, not a SIGTERM: the attempt has already failed, and a SIGTERMed rank
    would spend the grace committing a checkpoint with its peers gone (its PREEMPTED
    exit would not hide the failure: `exit_code_for` ignores it beside one)."""
    import ray

    running = dict(trainers)
    told = False
    doomed_at: float | None = None
    while True:
        for rank, trainer in list(running.items()):
            code = trainer.poll()
            if code is not None:
                ray.get(group.finished.remote(rank, code, time.time()))
                log.info("rank %d exited with %d", rank, code)
                del running[rank]
        if not running:
            return
        time.sleep(POLL_SECONDS)
        stopping, failed = ray.get(group.state.remote())
        if stopping and not told:
            log.warning("the attempt is stopping; SIGTERM to ranks %s", sorted(running))
            for trainer in running.values():
                trainer.send_signal(signal.SIGTERM)
            told = True
        if failed and doomed_at is None:
            doomed_at = time.monotonic() + TEARDOWN_GRACE_SECONDS
        if doomed_at is not None and time.monotonic() > doomed_at:
            log.error("another rank failed and ranks %s still run; SIGKILL", sorted(running))
            for trainer in running.values():
                trainer.kill()
            doomed_at = float("inf")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.ray_train", description="Run one attempt as a Ray Train group."
    )
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--name", required=True, help="the attempt's Ray submission id")
    parser.add_argument("--workers", type=int, required=True, help="job nodes, one Ray worker each")
    parser.add_argument(
        "--gpus-per-worker", type=int, default=0, help="a node's GPUs, one rank each"
    )
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument(
        "--placement", choices=["STRICT_SPREAD", "SPREAD", "PACK"], default="STRICT_SPREAD"
    )
    return parser.parse_args(argv)


def ranks_per_worker(args: argparse.Namespace) -> int:
    return max(int(args.gpus_per_worker), 1)


def scaling_config(args: argparse.Namespace) -> Any:
    """Ray Train's ScalingConfig: one worker a job node with the node's GPUs and CPUs.

    Whole GPUs a worker (Ray gives it GPU ids to pin its ranks to); Ray Train V2 puts
    only the workers in the placement group (its controller takes no resources), so
    STRICT_SPREAD means one worker a Ray node."""
    from ray.train import ScalingConfig

    resources: dict[str, float] = {"CPU": float(args.cpus_per_worker)}
    if args.gpus_per_worker:
        resources["GPU"] = float(args.gpus_per_worker)
    return ScalingConfig(
        num_workers=int(args.workers),
        use_gpu=args.gpus_per_worker > 0,
        resources_per_worker=resources,
        placement_strategy=str(args.placement),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.init()  # the cluster the Ray job runs on
    actor: Any = ray.remote(num_cpus=0)(RankGroup)  # no CPU: it only holds state
    group = actor.remote()
    stopping = threading.Event()

    def on_sigterm(signum: int, frame: object) -> None:
        # Only a flag here; a thread tells the workers (no Ray calls in a handler).
        stopping.set()

    def pass_on_stop() -> None:
        stopping.wait()
        log.warning("got SIGTERM; the ranks are told to stop")
        ray.get(group.stop.remote())

    # After ray.init(), which installs its own handler (exit at once) on the driver.
    signal.signal(signal.SIGTERM, on_sigterm)
    threading.Thread(target=pass_on_stop, daemon=True, name="stop").start()

    storage = tempfile.mkdtemp(prefix=f"{args.name}-ray-train-")
    trainer = TorchTrainer(
        run_rank,
        train_loop_config={
            "group": group,
            "job_id": args.job_id,
            "name": args.name,
            "python": sys.executable,
            "ranks_per_worker": ranks_per_worker(args),
        },
        # gloo always: Ray Train's group only carries Ray's own set-up, never a tensor;
        # the trainer's ranks form their own (nccl on GPUs).
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=scaling_config(args),
        run_config=RunConfig(
            name=args.name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    try:
        trainer.fit()
    except Exception:
        # A worker (or its node) died: the ranks that reported say the rest.
        log.exception("the Ray Train group failed")
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    exits: dict[int, RankExit] = dict(ray.get(group.exits.remote()))
    code = group_exit_code(exits, args.workers * ranks_per_worker(args))
    log.info("rank exits %s: the attempt exits with %d", exits, code)
    return code


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
