"""`python -m trainer.torchrun <torchrun arguments> -m trainer --job-id ID`: torchrun,
with an exit code the reconciler understands.

torchrun itself (torch.distributed.run) exits 1 whenever a rank fails and on its own
SIGTERM, which would make every preemption a crash (and spend the crash retry budget)
and every bad-data failure retried. This runs the same agent with the same arguments
and maps the outcome to a `TrainerExit`:

- all ranks exited 0                      -> 0 (OK)
- rank 0 exited BAD_INPUT / FENCED         -> that code (rank 0 wrote what it meant)
- every failed rank was told to stop (exited PREEMPTED, or died of SIGTERM)
                                           -> PREEMPTED
- otherwise the first rank to fail of another cause: its exit code, or 128 + the signal
  that killed it (a rank SIGKILLed -> 137, a crash the reconciler relaunches within its
  budget). Ranks that exited PREEMPTED beside it are not counted: the agent SIGTERMs
  the survivors when one rank fails, and they commit a checkpoint and exit PREEMPTED
  (torch records those exits too), which must not turn a crash into a preemption that
  never spends the retry budget. Timestamps are whole seconds, so order alone cannot
  tell the teardown from the failure.
- the agent itself got SIGTERM / SIGINT    -> 128 + that signal (143: preempted); the
  agent has passed it to every rank, which commit a checkpoint before exiting, within
  TORCHELASTIC_SHUTDOWN_TIMEOUT seconds (30 by default) before SIGKILL.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Mapping
from typing import Any

from jobstore.documents import TrainerExit

log = logging.getLogger("trainer.torchrun")

_DELIBERATE = {TrainerExit.BAD_INPUT, TrainerExit.FENCED}
_TOLD_TO_STOP = {int(TrainerExit.PREEMPTED), -int(signal.SIGTERM)}


def exit_code_for(failures: Mapping[int, Any]) -> int:
    """The group's exit code from torchrun's failures (global rank -> ProcessFailure)."""
    if not failures:
        return int(TrainerExit.CRASHED)
    first_rank = failures.get(0)
    if first_rank is not None and first_rank.exitcode in _DELIBERATE:
        return int(first_rank.exitcode)
    causes = {
        rank: failure for rank, failure in failures.items() if failure.exitcode not in _TOLD_TO_STOP
    }
    if not causes:
        return int(TrainerExit.PREEMPTED)
    rank, first = min(causes.items(), key=lambda item: (item[1].timestamp, item[0]))
    code = int(first.exitcode)
    log.error("rank %d failed first, with exit code %d", rank, code)
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    arguments = parse_args(argv)
    try:
        run(arguments)
    except ChildFailedError as error:
        return exit_code_for(error.failures)
    except SignalException as error:
        log.warning("torchrun got %s; the ranks were told to stop", error.sigval.name)
        return 128 + int(error.sigval)
    return int(TrainerExit.OK)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
