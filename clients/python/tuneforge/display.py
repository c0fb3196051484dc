"""How the `tuneforge` CLI shows jobs: one-line progress, a live bar, JSON."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from typing import Any, TextIO

from tuneforge import convert
from tuneforge.v1 import fine_tuning_pb2 as pb


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def data_check_text(check: dict[str, Any]) -> str:
    """VALIDATING: "checking 120,000 records, 41/105 MB, 24,000 records/s"."""
    text = f"{check['phase']} {check['recordsDone']:,} records"
    if check["bytesTotal"]:
        text += f", {check['bytesDone'] / 1e6:.0f}/{check['bytesTotal'] / 1e6:.0f} MB"
    if check["recordsPerSecond"] is not None:
        text += f", {check['recordsPerSecond']:,.0f} records/s"
    return text


def progress_text(job: pb.Job) -> str:
    progress = convert.job_to_dict(job)["progress"]
    if progress["dataCheck"] is not None and job.state == pb.VALIDATING:
        return data_check_text(progress["dataCheck"])
    parts = []
    if progress["totalSteps"]:
        parts.append(f"step {progress['step']}/{progress['totalSteps']}")
    elif progress["step"]:
        parts.append(f"step {progress['step']}")
    if progress["totalEpochs"]:
        parts.append(f"epoch {progress['epoch']}/{progress['totalEpochs']}")
    if progress["trainingLoss"] is not None:
        parts.append(f"loss {format_loss(progress['trainingLoss'])}")
    if progress["trainingTokenAccuracy"] is not None:
        parts.append(f"token_accuracy {progress['trainingTokenAccuracy']:.3f}")
    if progress["validationLoss"] is not None:
        parts.append(f"val_loss {format_loss(progress['validationLoss'])}")
    if progress["etaSeconds"] is not None and not convert.is_terminal(job):
        parts.append(f"eta {duration(progress['etaSeconds'])}")
    return "  ".join(parts)


def ending(job: pb.Job) -> str:
    data = convert.job_to_dict(job)
    if job.state == pb.FAILED:
        failure = data["failure"] or {"reason": "UNKNOWN", "message": ""}
        return f"job {job.job_id} FAILED ({failure['reason']}): {failure['message']}"
    took = ""
    if job.HasField("started_at") and job.HasField("ended_at"):
        took = f" after {duration(job.ended_at.seconds - job.started_at.seconds)}"
    if job.state == pb.COMPLETED:
        return f"job {job.job_id} COMPLETED{took}; model: {job.output.model_s3_uri}"
    return f"job {job.job_id} {convert.state_name(job.state)}{took}"


class ProgressView:
    """A live line (state, bar, step, loss, ETA) on a terminal; plain lines elsewhere."""

    def __init__(self, stream: TextIO, *, live: bool) -> None:
        self.stream = stream
        self.live = live
        self._state: int | None = None
        self._open = False
        self._last_line = ""

    def update(self, job: pb.Job) -> None:
        if self.live:
            self._render_live(job)
        else:
            line = f"{convert.state_name(job.state):<10}  {progress_text(job)}".rstrip()
            if line == self._last_line:
                return  # a change this view does not show (the launch attempt, say)
            self._last_line = line
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            self.stream.write(f"{stamp}  {line}\n")
        self.stream.flush()

    def finish(self, job: pb.Job) -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False
        self.stream.write(ending(job) + "\n")
        self.stream.flush()

    def _render_live(self, job: pb.Job) -> None:
        if self._state is not None and job.state != self._state and self._open:
            self.stream.write("\n")  # keep the line of the state that ended
        self._state = job.state
        width = shutil.get_terminal_size((100, 20)).columns
        progress = job.progress
        text = f"{convert.state_name(job.state):<10}"
        check = progress.data_check
        if job.state == pb.VALIDATING and progress.HasField("data_check") and check.bytes_total:
            fraction = min(1.0, check.bytes_done / check.bytes_total)
            size = 24
            filled = round(fraction * size)
            text += f" [{'#' * filled}{'-' * (size - filled)}] {fraction:4.0%}"
        elif progress.HasField("total_steps") and progress.total_steps > 0:
            fraction = min(1.0, progress.step / progress.total_steps)
            size = 24
            filled = round(fraction * size)
            text += f" [{'#' * filled}{'-' * (size - filled)}] {fraction:4.0%}"
        text += "  " + progress_text(job)
        self.stream.write("\r\x1b[K" + text[: max(10, width - 1)])
        self._open = True


def print_job(job: pb.Job, out: TextIO) -> None:
    data = convert.job_to_dict(job)
    rows: list[tuple[str, str]] = [
        ("job", f"{data['jobId']}  ({data['jobName']})"),
        ("state", data["state"] + _requested(data)),
        ("progress", progress_text(job) or "-"),
        ("created", data["createdAt"] or "-"),
        ("started", data["startedAt"] or "-"),
        ("ended", data["endedAt"] or "-"),
        ("base model", data["baseModelIdentifier"]),
        ("training", data["trainingDataConfig"]["s3Uri"]),
        ("validation", (data["validationDataConfig"] or {}).get("s3Uri", "-")),
        ("output", data["output"]["outputS3Uri"]),
        ("model", data["output"]["modelS3Uri"]),
        ("hyper", " ".join(f"{k}={v}" for k, v in data["hyperParameters"].items())),
    ]
    if data["tags"]:
        rows.append(("tags", " ".join(f"{k}={v}" for k, v in data["tags"].items())))
    if data["failure"]:
        rows.append(("failure", f"{data['failure']['reason']}: {data['failure']['message']}"))
    for name, value in rows:
        out.write(f"{name:<11} {value}\n")


def print_json(value: Any, out: TextIO, *, indent: int | None = 2) -> None:
    out.write(json.dumps(value, indent=indent) + "\n")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_checkpoints(checkpoints: list[dict[str, Any]], out: TextIO) -> None:
    """One line a committed checkpoint (the REST API's shapes): its step, epoch, training
    and validation loss, a classification job's metrics, when it was committed, where."""
    if not checkpoints:
        out.write("no committed checkpoints\n")
        return
    out.write(
        f"{'STEP':>8} {'EPOCH':>5} {'TRAIN LOSS':>10} {'VAL LOSS':>10}  "
        f"{'COMMITTED':<24}  METRICS / S3 URI\n"
    )
    for data in checkpoints:
        metrics = " ".join(
            f"{name} {value:.4f}" for name, value in sorted(data["validationMetrics"].items())
        )
        out.write(
            f"{data['step']:>8} {data['epoch'] or '-':>5} {_number(data['trainingLoss']):>10} "
            f"{_number(data['validationLoss']):>10}  {data['committedAt'] or '-':<24}  "
            f"{metrics + '  ' if metrics else ''}{data['s3Uri']}\n"
        )


def _requested(data: dict[str, Any]) -> str:
    """What was asked of a job and is not carried out yet (or stands: a pause)."""
    if data["stopRequested"]:
        return "  (stop requested)"
    if data["pauseRequested"] and data["state"] != "PAUSED":
        return "  (pause requested)"
    return ""
