"""Page tokens: the one codec every face's listing hands out and takes back.

A token is the URL-safe base64 (unpadded) of what the next page starts after: a job id
(job listings, every face), `event:<sequence>` (a job's events) or an offset (Bedrock's
custom models). Tokens are opaque to callers; one that this service did not issue is an
`InvalidArgument` naming the field the caller sent it in (`pageToken`, `nextToken`).
"""

from __future__ import annotations

import base64
import binascii
import re

from jobstore.documents import JOB_ID_PATTERN
from service.errors import InvalidArgument

_JOB_ID = re.compile(JOB_ID_PATTERN)
_EVENT_PREFIX = "event:"


def encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode(token: str, *, field: str) -> str:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _not_ours(field) from None


def _not_ours(field: str) -> InvalidArgument:
    return InvalidArgument(f"{field} is not a token this service issued", field=field)


def job_token(job_id: str) -> str:
    """The token of a page that goes on after `job_id`."""
    return encode(job_id)


def job_after(token: str, *, field: str = "pageToken") -> str:
    """The job id a job-listing token goes on after."""
    job_id = decode(token, field=field)
    if not _JOB_ID.fullmatch(job_id):
        raise _not_ours(field)
    return job_id


def event_token(sequence: int) -> str:
    return encode(f"{_EVENT_PREFIX}{sequence}")


def event_after(token: str, *, field: str = "pageToken") -> int:
    """The event sequence number an events token goes on after."""
    kind, _, number = decode(token, field=field).partition(":")
    if kind + ":" != _EVENT_PREFIX or not _is_number(number):
        raise _not_ours(field)
    return int(number)


def offset_token(offset: int) -> str:
    return encode(str(offset))


def offset_after(token: str, *, field: str) -> int:
    decoded = decode(token, field=field)
    if not _is_number(decoded):
        raise _not_ours(field)
    return int(decoded)


def _is_number(text: str) -> bool:
    """ASCII digits only (str.isdigit also takes '²', which int() refuses), 12 at most."""
    return 0 < len(text) <= 12 and text.isascii() and text.isdigit()
