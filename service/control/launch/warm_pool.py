"""Warm trainers for the local launcher: spare processes that have already imported
torch and transformers (trainer/warm_start.py), handed one job each (issue 19).

A cold trainer spends about two seconds importing before it reads its job; a warm one
starts the job at once. Isolation is a cold trainer's: one process per job, and the
job's directory, output, environment (its credentials), limits and GPU locks reach the
spare only with its job (trainer/warm_start.py states what the spare may hold before).

Invariants:
- A spare is this process's child, in a session and process group of its own, so the
  launcher reaps it, signals its group and records its pid and start ticks exactly as
  for a cold trainer.
- A job goes to the oldest live spare, even one still importing: it has a head start
  on a new process. A spare that ended (its socket refuses the job) leaves the job to a
  cold start.
- A spare is used once; the pool starts a new one as each is taken.
- A spare that gets no job ends when the launcher closes its socket: at shutdown, or
  when this process dies (the kernel closes it), so no spare outlives its server. Its
  log, named after the pid of the process that started it, is removed by the next pool
  to start in the same folder once that process is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Spare:
    process: subprocess.Popen[bytes]
    channel: socket.socket  # the launcher's end of the spare's standard input
    log: Path  # its output until it has a job

    def hand(self, job: Mapping[str, object], descriptors: Sequence[int]) -> None:
        """Send the spare its job (raises OSError when it cannot take it: it ended)."""
        socket.send_fds(self.channel, [json.dumps(job).encode()], list(descriptors))
        self.channel.close()
        # Its output goes to the job's log from now on. The job is handed whatever
        # happens here.
        with contextlib.suppress(OSError):
            self.log.unlink(missing_ok=True)

    def discard(self) -> None:
        self.channel.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log.unlink(missing_ok=True)


class WarmTrainerPool:
    """`size` spares, started by `fill()` and refilled as taken."""

    def __init__(self, python: str, root: Path, size: int, environment: dict[str, str]) -> None:
        self.python = python
        self.root = root
        self.size = size
        # The launcher's minimal environment (no secrets): what a cold trainer has before
        # the job's own variables (trainer/warm_start.py).
        self.environment = environment
        self._spares: list[Spare] = []
        # take() runs on the reconciler's thread, close() on the stopping one; a closed
        # pool starts nothing more.
        self._lock = threading.Lock()
        self._closed = False
        self._stale_logs_removed = False

    def fill(self) -> None:
        """Start spares until there are `size`, the dead ones dropped. Never raises: a
        spare that cannot be started (no processes or memory left) only means cold
        starts, said in the log."""
        with self._lock:
            if not self._stale_logs_removed:  # once, at the start
                self._stale_logs_removed = True
                self._remove_stale_logs()
            self._fill()

    def _remove_stale_logs(self) -> None:
        """Remove the logs of spares whose starter is gone (a server or API worker killed
        outright: nothing else removed them). Each log names the pid of the process that
        started its spare; the API workers of one server share this folder, so only the
        logs of a process that is gone are removed. The log of a spare that ended on its
        own is kept for as long as its starter lives (the warning that a spare ended
        names it)."""
        for path in self.root.glob("spare-*-*.log"):
            owner = path.name.split("-")[1]
            if owner.isdigit() and not _process_exists(int(owner)):
                with contextlib.suppress(OSError):
                    path.unlink()

    def _fill(self) -> None:
        for spare in [s for s in self._spares if s.process.poll() is not None]:
            log.warning(
                "a spare trainer (pid %d) ended with code %s before getting a job; see %s",
                spare.process.pid,
                spare.process.returncode,
                spare.log,
            )
            self._spares.remove(spare)
            spare.channel.close()
        while not self._closed and len(self._spares) < self.size:
            try:
                self._spares.append(self._start())
            except OSError as error:
                log.warning("no spare trainer could be started (%s): jobs start cold", error)
                return

    def _start(self) -> Spare:
        # Spares share one directory, their working directory and home until they get a
        # job: nothing of a job's is ever there (each job has a directory of its own),
        # only what libraries keep across processes (matplotlib's font list, built once,
        # behind its own lock). Each has a log of its own, removed when it gets a job.
        self.root.mkdir(parents=True, exist_ok=True)
        log_path = self.root / f"spare-{os.getpid()}-{uuid.uuid4().hex[:12]}.log"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        environment = self.environment | {
            "HOME": str(self.root),
            "HF_HOME": str(self.root / "hf-home"),
            "MPLCONFIGDIR": str(self.root / "matplotlib"),
            "CUDA_VISIBLE_DEVICES": "",
        }
        try:
            with open(log_path, "ab") as output:
                process = subprocess.Popen(
                    [self.python, "-m", "trainer.warm_start"],
                    cwd=self.root,
                    env=environment,
                    stdin=theirs.fileno(),
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except BaseException:
            ours.close()
            log_path.unlink(missing_ok=True)
            raise
        finally:
            theirs.close()
        return Spare(process, ours, log_path)

    def take(self) -> Spare | None:
        """A live spare, removed from the pool (a new one is started in its place), or
        None when there is none (size 0, closed, or none could be started). One still
        importing is taken too: the job waits in its socket and starts sooner than in a
        new process."""
        with self._lock:
            self._fill()
            if not self._spares:
                return None
            spare = self._spares.pop(0)
            self._fill()
            return spare

    def waiting(self) -> list[Spare]:
        """The spares without a job."""
        with self._lock:
            return list(self._spares)

    def close(self) -> None:
        """End every spare that has no job; start none after."""
        with self._lock:
            self._closed = True
            spares, self._spares = self._spares, []
        for spare in spares:
            spare.discard()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True
