"""`python -m trainer.log_keeper -- <command>`: run a trainer command and keep its log.

Where no launcher process outlives the trainer to collect its output (a Kubernetes pod:
the container's output goes only to the pod log, gone with the pod), this runs the
trainer command as a child and:

- copies everything the child writes (stdout and stderr, merged) to its own stdout, so
  `kubectl logs` shows it as before, and to `TUNEFORGE_LOG_FILE`;
- passes SIGTERM and SIGINT on to the child (a preemption checkpoint needs the trainer to
  get the signal; as a container's PID 1 nothing else would pass it);
- after the child exits, however it ended (a crash or an out-of-memory kill included),
  uploads the whole file as the attempt's trainer log,
  `jobs/<job-id>/logs/attempt-<n>/trainer.log`, the same key the local launcher fills;
- exits with the child's exit code (128 + the signal that killed it), which launchers and
  the pod failure policy read.

Nothing is uploaded by a fenced attempt (exit 3: the job belongs to another) or by a node
other than node 0 of a multi-node job (one log per attempt: node 0 runs rank 0).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from jobstore.documents import TrainerExit
from jobstore.storage import ObjectStore
from jobstore.store import JobStore

log = logging.getLogger("trainer.log_keeper")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.log_keeper",
        description="Run a trainer command; copy its output to a file and upload it after.",
    )
    parser.add_argument("--job-id", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command to run (give it after --)")
    return args


def run_and_copy(command: list[str], log_path: Path) -> int:
    """Run `command`, copying its merged output to stdout and `log_path`; its exit code
    as a shell reports it (128 + signal for a killed child)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def pass_on(signum: int, frame: FrameType | None) -> None:
            child.send_signal(signum)

        signal.signal(signal.SIGTERM, pass_on)
        signal.signal(signal.SIGINT, pass_on)
        assert child.stdout is not None
        pipe = child.stdout.fileno()
        output = sys.stdout.buffer
        # Whatever is there, without waiting to fill a block, so the pod log stays live;
        # the file gets every byte even if this process is killed after.
        while chunk := os.read(pipe, 65536):
            output.write(chunk)
            output.flush()
            log_file.write(chunk)
            log_file.flush()
        code = child.wait()
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    log_path = Path(os.environ.get("TUNEFORGE_LOG_FILE") or "trainer.log")
    code = run_and_copy(args.command, log_path)
    node_rank = os.environ.get("TUNEFORGE_NODE_RANK", "0")
    if code != TrainerExit.FENCED and node_rank == "0":
        try:
            store = JobStore(ObjectStore.from_environment(), os.environ["TUNEFORGE_STATE_BUCKET"])
            store.upload_log(args.job_id, int(os.environ["TUNEFORGE_ATTEMPT"]), log_path)
        except Exception:  # the exit code matters more than the log: report, go on
            log.exception("could not upload the trainer log %s", log_path)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
