"""Structured logs (structlog): JSON lines in production, readable colour in a terminal.

`configure_logging()` is called once from `main()` (never at import time). It routes the
standard library's `logging` through structlog's formatter too, so the modules that log
with `logging.getLogger(__name__)` (and uvicorn, grpc, boto) produce the same lines.

Every line carries what is bound in contextvars (service/observability/request_context.py):
`request_id` on a request's path, `job_id` / `tenant` / `attempt` on a job's.

Invariant: no secret reaches a log line. Values of keys that name a secret (`secret`,
`password`, `token`, `authorization`, `credential`, `signature`...) are masked, boto's
debug output (request signatures) is kept quiet, and settings hold secrets as `SecretStr`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, Processor

LogFormat = Literal["json", "console"]

_SECRET_KEY = re.compile(
    r"secret|password|passwd|token|authorization|credential|signature|api_?key|access_?key",
    re.IGNORECASE,
)
# Loggers whose debug output would carry request signatures or whole request bodies.
_QUIET = ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore")


def redact_secrets(logger: Any, method: str, event: EventDict) -> EventDict:
    """Mask the value of every field whose name says it holds a secret."""
    for key in list(event):
        if key != "event" and _SECRET_KEY.search(key) and event[key] is not None:
            event[key] = "***"
    return event


def drop_color_message(logger: Any, method: str, event: EventDict) -> EventDict:
    """uvicorn hands some messages over a second time as an extra, `color_message`, with
    its own colour codes in it; the console renderer colours lines itself and a JSON line
    has no use for them, so that copy goes."""
    event.pop("color_message", None)
    return event


def add_process_id(logger: Any, method: str, event: EventDict) -> EventDict:
    """`pid` on every line: with several API workers (TUNEFORGE_API_WORKERS) it tells
    whose line it is."""
    event["pid"] = os.getpid()
    return event


def resolve_format(requested: str | None, *, stream: Any = None) -> LogFormat:
    """`json` or `console`; unset means console on a terminal, else JSON lines."""
    if requested in ("json", "console"):
        return requested  # type: ignore[return-value]
    output = stream if stream is not None else sys.stderr
    return "console" if hasattr(output, "isatty") and output.isatty() else "json"


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        drop_color_message,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_process_id,
        redact_secrets,
    ]


def configure_logging(log_format: str | None = None, *, level: int = logging.INFO) -> LogFormat:
    """Send every log line, structlog's and the standard library's, to stderr as
    `log_format` (see `resolve_format`); return the format chosen."""
    chosen = resolve_format(log_format)
    shared = _shared_processors()
    renderer: Processor
    if chosen == "json":
        renderer = structlog.processors.JSONRenderer()
        final: list[Processor] = [structlog.processors.format_exc_info, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        final = [renderer]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    return chosen


class _StaticFields(logging.Filter):
    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def bind_process_fields(**fields: Any) -> None:
    """Add `fields` to every line this process logs from now on, from every thread.

    For a process that works for one job (the trainer): contextvars would not reach the
    threads it starts (heartbeat, uploads), a filter on the root handlers does.
    """
    for handler in logging.getLogger().handlers:
        handler.addFilter(_StaticFields(dict(fields)))
