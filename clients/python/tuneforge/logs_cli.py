"""`tuneforge jobs logs`: print (and follow) a trainer's log.

Each launch attempt of a job keeps its own log: a job resumed after a crash or a
preemption has one per attempt. Without `--attempt` the current attempt's log is read;
`--follow` moves on to the next attempt's log when the job is relaunched, so a followed
job's whole story scrolls by.
"""

from __future__ import annotations

import argparse
import time
from typing import Protocol, TextIO

from tuneforge import convert
from tuneforge.v1 import fine_tuning_pb2 as pb

EXIT_OK = 0


class LogsApi(Protocol):
    """What `logs` needs of a client (`Client` and `RestClient` both provide it)."""

    def get_job(self, job_id: str) -> pb.Job: ...
    def read_job_log(
        self, job_id: str, *, offset: int = ..., max_bytes: int = ..., attempt: int | None = ...
    ) -> pb.ReadJobLogResponse: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id")
    parser.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    parser.add_argument("--tail", type=int, metavar="BYTES", help="only the last BYTES")
    parser.add_argument(
        "--attempt",
        type=int,
        metavar="N",
        help="the log of launch attempt N (1, 2, ...; default: the current attempt's)",
    )
    parser.add_argument(
        "--interval", type=float, default=2.0, help="seconds between reads with --follow"
    )


def _write(out: TextIO, data: bytes) -> None:
    """Bytes as they are where the stream has a binary side, else decoded."""
    if not data:
        return
    sink = getattr(out, "buffer", None)
    if sink is not None:
        out.flush()
        sink.write(data)
        sink.flush()
    else:
        out.write(data.decode("utf-8", errors="replace"))


def cmd_logs(api: LogsApi, args: argparse.Namespace, out: TextIO) -> int:
    offset = -args.tail if args.tail else 0
    attempt: int | None = args.attempt
    first = True
    while True:
        piece = api.read_job_log(args.job_id, offset=offset, attempt=attempt)
        if first and args.tail and piece.next_offset - len(piece.data) > 0:
            # --tail: start at the first whole line, not in the middle of one.
            cut = piece.data.find(b"\n")
            piece.data = piece.data[cut + 1 :] if cut >= 0 else b""
        first = False
        if attempt is None and piece.attempt:
            # Offsets are per log: keep reading this attempt's until it is done.
            attempt = piece.attempt
        _write(out, piece.data)
        offset = piece.next_offset
        if piece.next_offset < piece.size:
            continue  # more to read now
        if not args.follow:
            return EXIT_OK
        job = api.get_job(args.job_id)
        if convert.is_terminal(job):
            # The trainer uploads its log last of all; read what came after.
            _write(out, api.read_job_log(args.job_id, offset=offset, attempt=attempt).data)
            return EXIT_OK
        if args.attempt is None and attempt is not None and job.attempt > attempt:
            # Relaunched: what the old attempt wrote is all there (its log is uploaded
            # when it is seen dead, before the relaunch); follow the new one.
            _write(out, api.read_job_log(args.job_id, offset=offset, attempt=attempt).data)
            attempt, offset = job.attempt, 0
            continue
        time.sleep(args.interval)
