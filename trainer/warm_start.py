"""`python -m trainer.warm_start`: a spare trainer process, warm (issue 19).

The local launcher keeps a few of these per API replica
(service/control/launch/warm_pool.py). Each one imports torch, transformers and the
training code first, which is most of a cold trainer's start, then waits for one job on
its standard input, a Unix socket to the launcher (a job that arrives while it is still
importing waits in the socket: it starts sooner than in a new process). The job arrives as one
message:

    {"arguments": ["-m", "trainer", "--job-id", ...],   # what `python` would be given
     "directory": "...", "log_file": "...",             # its working directory and log
     "environment": {...},                               # its whole environment
     "limits": [address_space, processes, open_files],   # 0: the host's own
     "cgroup_procs": "..." or null}                      # its memory cgroup's procs file

with the GPUs' lock file descriptors attached (SCM_RIGHTS), so this process holds them
exactly as a trainer started cold inherits them.

Invariants, so that a warm trainer is the same as a cold one:
- One job per process: after the job the process exits, whatever happened.
- Nothing of the job exists before its message: no working directory, no credentials,
  no devices. The spare starts with the launcher's minimal environment (no secrets)
  and CUDA_VISIBLE_DEVICES="" and never initialises CUDA (importing torch does not), so
  the job's CUDA_VISIBLE_DEVICES, set from the message, is what CUDA first reads.
- The job's environment replaces the spare's entirely before any job code runs.
  What a library read from the environment while being imported stays as the spare
  had it: the spare is started with the same values a cold trainer gets for those
  (OMP_WAIT_POLICY, HF_HUB_OFFLINE, PYTHONUNBUFFERED), except HF_HOME and matplotlib's
  MPLCONFIGDIR, which are the pool's directory (nothing is downloaded: the hub is
  offline; matplotlib keeps its font list there, built once for all spares).
- The launcher gone (its socket closed) before a job came: the spare exits.
- An import that failed is reported in the job's log, and the job's attempt fails as
  a cold trainer's would (exit 1, a crash the reconciler retries).
"""

from __future__ import annotations

import json
import os
import resource
import runpy
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

# The largest job message (its environment is a few KiB) and the most descriptors (one
# lock per GPU of the host).
MAX_MESSAGE_BYTES = 1 << 20
MAX_DESCRIPTORS = 256


def warm_up() -> None:
    """Import what a trainer imports before it can take a step, and what it imports
    later on the way (each costs the job a pause where it is first used).

    transformers loads its parts lazily: its modelling core (about two seconds) only
    with the first model class, so one is imported here. Nothing is initialised:
    no CUDA, no thread pool, no file of a job's.
    """
    from trainer.__main__ import configure_libraries

    configure_libraries()  # before torch is imported: it reads these then
    import matplotlib
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers
    import transformers.modeling_utils  # noqa: F401
    from transformers import (  # noqa: F401
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    import trainer.distributed
    import trainer.follower
    import trainer.recipe  # noqa: F401

    matplotlib.use("Agg")  # as trainer/plots.py chooses it, before pyplot
    import matplotlib.pyplot


def receive_job(channel: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """The job's message and descriptors; None when the launcher closed the channel."""
    data, descriptors, _, _ = socket.recv_fds(channel, MAX_MESSAGE_BYTES, MAX_DESCRIPTORS)
    if not data:
        return None
    job: dict[str, Any] = json.loads(data)
    return job, descriptors


def become(job: dict[str, Any]) -> None:
    """Take on the job's limits, environment, output and directory (what the launcher's
    Popen and _WITH_LIMITS give a cold trainer). The directory last: a process seen
    working in a job's directory already runs under the job's limits."""
    procs = job.get("cgroup_procs")
    cgroup_refused = None
    if procs:
        try:
            Path(procs).write_text(str(os.getpid()))
        except OSError as error:
            cgroup_refused = error
    names = ("RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_NOFILE")
    for name, wanted in zip(names, job["limits"], strict=True):
        if wanted > 0:
            which = getattr(resource, name)
            hard = resource.getrlimit(which)[1]
            limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(which, (limit, limit))
    os.environ.clear()
    os.environ.update(job["environment"])
    log = os.open(job["log_file"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the launcher's socket, no longer needed
    os.close(devnull)
    if cgroup_refused is not None:  # said in the job's log, as a cold trainer says it
        print(f"tuneforge: runs without its memory cgroup: {cgroup_refused}", file=sys.stderr)
    os.chdir(job["directory"])


def main() -> int:
    channel = socket.socket(fileno=0)  # stdin: the launcher's end of a socket pair
    try:
        warm_up()
    except BaseException:
        # Told to the job, in its own log, as a cold trainer's failed import would be.
        failed_warm_up: str | None = traceback.format_exc()
    else:
        failed_warm_up = None
    try:
        received = receive_job(channel)
    except OSError:
        return 0  # the launcher is gone
    if received is None:
        return 0  # closed without a job: the replica stops, or has enough spares
    job, _gpu_locks = received  # held open for the job's life, as a cold trainer's are
    become(job)
    channel.detach()  # fd 0 is /dev/null now
    if failed_warm_up is not None:
        print(failed_warm_up, file=sys.stderr)
        return 1
    arguments = job["arguments"]
    if arguments[:1] != ["-m"] or len(arguments) < 2:
        print(f"tuneforge: a warm trainer runs a module, not {arguments}", file=sys.stderr)
        return 1
    sys.argv = [arguments[1], *arguments[2:]]
    # warm_up imported trainer.__main__ as a module; `python -m` runs a fresh copy as
    # __main__, so drop the imported one as a cold start would not have it.
    sys.modules.pop(f"{arguments[1]}.__main__", None)
    # As `python -m <module>`: its __main__ block runs and its SystemExit is the code.
    runpy.run_module(arguments[1], run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
