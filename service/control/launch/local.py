"""The local launcher: one `python -m trainer` subprocess per job attempt (torchrun with
one rank per GPU when the job asks for several: `trainer_arguments`).

Each trainer runs in its own session and process group (so a Ctrl-C aimed at the API
server does not reach it, and a stop can signal the whole group), in its own working
directory `<home>/work/<job-id>/attempt-<n>/`, with its output in `trainer.log` there.
It gets a fresh environment with only what it needs: none of the server's variables
are inherited (so no API keys, admin key or other secrets of the server). It runs under
the resource limits of `ResourceLimits` (address space, processes, open files), set by
a few lines of Python that run first in the new process and then exec the trainer: not
by `preexec_fn`, which runs Python between fork and exec of a multi-threaded server.

Trainers outlive the API server that started them; a restarted server finds them again
by the pid and the process start time recorded in the job's launch record.

Warm trainers: with `warm_trainers` N > 0 the launcher keeps N spare processes that have
already imported torch and transformers (service/control/launch/warm_pool.py) and hands a
job to one instead of starting a process: the same child, session, directory, output,
environment, limits and GPU locks as a cold start, seconds sooner. torchrun jobs (several
ranks) and jobs with a memory cgroup of their own always start cold.

GPUs: a trainer sees only the devices of its lease (service/control/launch/gpus.py) in its
`CUDA_VISIBLE_DEVICES`, and its process holds their locks, which the kernel releases when
it ends; a trainer without a lease (a CPU job, or a host without GPUs for trainers) sees
no GPU at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jobstore.documents import JobSpec, LaunchRecord
from service.control.launch.base import Observed, Started
from service.control.launch.gpus import DeviceLease
from service.control.launch.memory import (
    MemoryCgroup,
    make_trainer_cgroup,
    memory_cgroup_of,
    oom_verdict,
)
from service.control.launch.warm_pool import WarmTrainerPool

log = logging.getLogger(__name__)

# PYTHONPATH too: the trainer must import the same `trainer` package as the server that
# launches it (a server run from a source checkout, not the installed copy).
PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH")

# Run as `python -c _WITH_LIMITS AS NPROC NOFILE CGROUP_PROCS -m trainer ...`: join the
# trainer's memory cgroup (CGROUP_PROCS "-": none), set each limit that is not 0 (soft
# and hard, never above the current hard one), then become the trainer (same pid, same
# process group).
_WITH_LIMITS = """
import os, resource, sys
if sys.argv[4] != "-":
    try:
        with open(sys.argv[4], "w") as procs:
            procs.write(str(os.getpid()))
    except OSError as error:
        print(f"tuneforge: runs without its memory cgroup: {error}", file=sys.stderr)
for name, value in zip(("RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_NOFILE"), sys.argv[1:4]):
    which, wanted = getattr(resource, name), int(value)
    if wanted > 0:
        hard = resource.getrlimit(which)[1]
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(which, (limit, limit))
os.execv(sys.executable, [sys.executable, *sys.argv[5:]])
"""


@dataclass(frozen=True)
class ResourceLimits:
    """Per-trainer limits; 0 leaves one as the server's own.

    `memory_bytes` bounds the address space (RLIMIT_AS: virtual memory, which PyTorch
    reserves generously, so give it room: several GiB on CPU, more with CUDA);
    `processes` is RLIMIT_NPROC, which Linux counts per user, threads included;
    `open_files` is RLIMIT_NOFILE.
    """

    memory_bytes: int = 0
    processes: int = 0
    open_files: int = 0
    # Resident memory (and swap) of the trainer with its ranks, enforced by a memory
    # cgroup of its own (service/control/launch/memory.py); 0: none, the service's cgroup.
    resident_bytes: int = 0

    def command(
        self, python: str, arguments: list[str], cgroup_procs: Path | None = None
    ) -> list[str]:
        if not (self.memory_bytes or self.processes or self.open_files or cgroup_procs):
            return [python, *arguments]
        limits = [str(self.memory_bytes), str(self.processes), str(self.open_files)]
        cgroup = str(cgroup_procs) if cgroup_procs is not None else "-"
        return [python, "-c", _WITH_LIMITS, *limits, cgroup, *arguments]


def trainer_arguments(spec: JobSpec) -> list[str]:
    """The Python arguments of a job's trainer: `-m trainer`, or torchrun's agent with
    one rank per GPU the job asks for (resources.gpus > 1; one machine, so standalone
    rendezvous on a free loopback port)."""
    trainer = ["-m", "trainer", "--job-id", spec.jobId]
    processes = spec.resources.gpus
    if processes <= 1:
        return trainer
    return ["-m", "trainer.torchrun", "--nproc-per-node", str(processes), "--standalone", *trainer]


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/pid/stat).

    With the pid it identifies a process across pid reuse.
    """
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


class LocalLauncher:
    name = "local"

    def __init__(
        self,
        work_root: Path,
        python: str | None = None,
        *,
        limits: ResourceLimits | None = None,
        host: str | None = None,
        warm_trainers: int = 0,
    ) -> None:
        # A job with resources.gpus N > 1 runs N ranks under torchrun (trainer/torchrun.py):
        # one per GPU, or one per CPU process with TUNEFORGE_LOCAL_CPU_RANKS, which the
        # create-time check (service/control/launch/capacity.py) allows.
        self.work_root = work_root
        self.python = python or sys.executable
        self.limits = limits or ResourceLimits()
        # The name recorded in each launch record: the host's, or with several API
        # workers on one host, the worker's own (service/server/replica.py, `make_launcher`), so
        # that only the process that started a trainer judges it by its process.
        self.host = host or socket.gethostname()
        # Trainers this process started: kept so their exit codes can be reaped.
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        # Per trainer: the memory cgroup it runs in, whether it is its own, and the
        # cgroup's OOM-kill count when it started (service/control/launch/memory.py).
        self._memory: dict[int, tuple[MemoryCgroup | None, bool, int | None]] = {}
        # Per exited trainer not yet observed: its peak resident memory (bytes) and what
        # its memory cgroup says of its end.
        self._ended: dict[int, tuple[int | None, str | None]] = {}
        self._cgroup_refused = False  # warned once that no cgroup could be made
        # The spares' environment is a cold trainer's before the job's own variables.
        self.warm_pool = WarmTrainerPool(
            self.python,
            work_root.parent / "spares",
            warm_trainers,
            {
                **{name: os.environ[name] for name in PASSED_THROUGH if name in os.environ},
                "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
            },
        )

    def start_spares(self) -> None:
        """Start the warm trainers (with the replica; `start` refills them as used)."""
        self.warm_pool.fill()

    def _attempt_dir(self, job_id: str, attempt: int) -> Path:
        return self.work_root / job_id / f"attempt-{attempt}"

    def start(
        self,
        spec: JobSpec,
        attempt: int,
        environment: dict[str, str],
        devices: DeviceLease | None = None,
    ) -> Started:
        """Start the attempt's trainer; with `devices`, on exactly those GPUs: they are
        its CUDA_VISIBLE_DEVICES and its process inherits their locks (the caller then
        releases its own copies)."""
        directory = self._attempt_dir(spec.jobId, attempt)
        directory.mkdir(parents=True, exist_ok=True)
        log_path = directory / "trainer.log"
        env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
        env.update(environment)
        env.update(
            {
                "HOME": str(directory),
                "HF_HOME": str(directory / "hf-home"),
                "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
                "TUNEFORGE_LOG_FILE": str(log_path),
                "TUNEFORGE_ATTEMPT": str(attempt),
            }
        )
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = devices.visible_devices
            # Indices as nvidia-smi numbers them (CUDA's default puts the fastest first).
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        else:
            # No lease: a CPU job, or a host with no GPUs for trainers (none, or the
            # operator's TUNEFORGE_GPUS=""): it trains on the CPU and sees no GPU.
            env["CUDA_VISIBLE_DEVICES"] = ""
        locks = tuple(devices.file_descriptors) if devices is not None else ()
        cgroup = self._trainer_cgroup(spec.jobId, attempt)
        counted = cgroup or memory_cgroup_of("self")
        # Counted before the trainer starts, so a kill in its first moments is seen.
        kills_before = counted.oom_kills() if counted is not None else None
        arguments = trainer_arguments(spec)
        cgroup_procs = cgroup.add_process_file() if cgroup is not None else None
        try:
            process = self._warm_start(arguments, directory, log_path, env, cgroup_procs, locks)
            warm = process is not None
            if process is None:
                with open(log_path, "ab") as output:
                    process = subprocess.Popen(
                        self.limits.command(self.python, arguments, cgroup_procs),
                        cwd=directory,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        pass_fds=locks,
                    )
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise
        self._children[process.pid] = process
        self._memory[process.pid] = (counted, cgroup is not None, kills_before)
        log.info(
            "started trainer for job %s attempt %d, pid %d (%s)",
            spec.jobId,
            attempt,
            process.pid,
            "a warm spare" if warm else "cold",
        )
        return Started(self.host, process.pid, process_start_ticks(process.pid))

    def _warm_start(
        self,
        arguments: list[str],
        directory: Path,
        log_path: Path,
        environment: dict[str, str],
        cgroup_procs: Path | None,
        locks: tuple[int, ...],
    ) -> subprocess.Popen[bytes] | None:
        """The attempt handed to a spare; None: start it cold (a torchrun job, a job with
        a memory cgroup of its own, no spare, or the spare could not take it).

        A job with its own memory cgroup starts cold: a spare's imports (a few hundred
        MB) are charged where it was when it made them, not to the job's cgroup, which
        would leave them outside the job's limit."""
        if arguments[:2] != ["-m", "trainer"] or not self.warm_pool.size:
            return None
        if cgroup_procs is not None:
            return None
        spare = self.warm_pool.take()
        if spare is None:
            return None
        job = {
            "arguments": arguments,
            "directory": str(directory),
            "log_file": str(log_path),
            "environment": environment,
            "limits": [self.limits.memory_bytes, self.limits.processes, self.limits.open_files],
            "cgroup_procs": str(cgroup_procs) if cgroup_procs is not None else None,
        }
        try:
            spare.hand(job, locks)
        except OSError as error:
            log.warning("a spare trainer could not take a job (%s): starting it cold", error)
            spare.discard()
            return None
        return spare.process

    def _trainer_cgroup(self, job_id: str, attempt: int) -> MemoryCgroup | None:
        """A memory cgroup of the trainer's own when the operator set a limit; None
        without one, or where the host refuses (warned once)."""
        if not self.limits.resident_bytes:
            return None
        try:
            return make_trainer_cgroup(f"tuneforge-{job_id}-{attempt}", self.limits.resident_bytes)
        except OSError as error:
            if not self._cgroup_refused:
                log.warning(
                    "TUNEFORGE_TRAINER_MEMORY_LIMIT_BYTES is set but no memory cgroup can be "
                    "made for a trainer (%s): trainers run without a memory limit",
                    error,
                )
                self._cgroup_refused = True
            return None

    def _reap(self, process: subprocess.Popen[bytes]) -> int | None:
        """The exit code of a trainer that ended (None while it runs), reaped with its
        peak resident memory (wait4's rusage: its own or its largest descendant's) and
        what its memory cgroup says of its end; its own cgroup is removed then."""
        if process.returncode is not None:
            return process.returncode
        try:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        except ChildProcessError:
            return process.poll()
        if pid == 0:
            return None
        process.returncode = code = os.waitstatus_to_exitcode(status)
        self._ended[process.pid] = (usage.ru_maxrss * 1024, self._memory_verdict(pid, code))
        return code

    def _memory_verdict(self, pid: int, exit_code: int) -> str | None:
        """What the trainer's memory cgroup says of its end (memory.oom_verdict); its
        own cgroup is removed."""
        cgroup, own, before = self._memory.pop(pid, (None, False, None))
        if cgroup is None:
            return None
        after = cgroup.oom_kills()
        if own:
            cgroup.remove()
        limit = self.limits.resident_bytes if own else None
        return oom_verdict(exit_code, kills_before=before, kills_after=after, own_limit=limit)

    def observe(self, launch: LaunchRecord) -> Observed:
        # Reap children that exited unobserved (a killed attempt already replaced):
        # _reap collects a zombie and keeps its exit code for a later observe().
        for process in self._children.values():
            self._reap(process)
        if launch.host != self.host or launch.pid is None:
            return Observed(alive=None)
        child = self._children.get(launch.pid)
        if child is not None:
            code = self._reap(child)
            if code is None:
                return Observed(alive=True)
            del self._children[launch.pid]
            peak, verdict = self._ended.pop(launch.pid, (None, None))
            return Observed(alive=False, exit_code=code, reason=verdict, peak_memory_bytes=peak)
        ticks = process_start_ticks(launch.pid)
        alive = (
            ticks is not None and ticks == launch.processStartTicks and not _is_zombie(launch.pid)
        )
        return Observed(alive=alive)

    def signal(self, launch: LaunchRecord, which: signal.Signals) -> None:
        if launch.host != self.host or launch.pid is None:
            return
        if process_start_ticks(launch.pid) != launch.processStartTicks:
            return  # gone, or the pid now belongs to another process
        try:
            os.killpg(launch.pid, which)
            log.info("sent %s to trainer group %d", which.name, launch.pid)
        except ProcessLookupError:
            pass

    def local_log(self, job_id: str, attempt: int) -> Path | None:
        path = self._attempt_dir(job_id, attempt) / "trainer.log"
        return path if path.exists() else None

    def release(self, job_id: str) -> None:
        return None  # nothing outlives the trainer's process

    def close_spares(self) -> None:
        """End the warm trainers that have no job (the replica stops)."""
        self.warm_pool.close()

    def shutdown(self, grace_seconds: float) -> None:
        """Terminate the trainers this process started (SIGTERM, grace, SIGKILL)."""
        self.close_spares()
        running = [p for p in self._children.values() if self._reap(p) is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            self._memory_verdict(process.pid, process.returncode)  # removes its cgroup


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"
