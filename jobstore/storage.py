"""The one module that talks to S3-compatible object storage.
Long because every S3 call of the project and its error mapping live here, once.

Everything else in the project (API server, reconciler, trainer) goes through
`ObjectStore`. It owns the boto3 client (connection pool, retries with backoff,
timeouts) and turns botocore's errors into three outcomes callers can act on:

- a missing object is `None` (reads) or `ObjectMissing` (downloads);
- a failed condition (`If-None-Match: *` / `If-Match: <etag>`) is `PreconditionFailed`;
- an unreachable or failing store is `StoreUnavailable`, any other refusal `StorageError`.

How long a call waits out a store that is down is the caller's choice: the API server
answers 503 after botocore's few quick retries; the trainer, a batch process, gives each
call `outage_patience_seconds` (two minutes) before it gives up (`_patient`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Concatenate, ParamSpec, TypeVar

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from jobstore.errors import InvalidArgument, StoreUnavailable, TuneforgeError
from jobstore.s3_direct import ConditionFailed, DirectS3, NotHandled


class StorageError(TuneforgeError):
    code = "STORAGE"


class PreconditionFailed(Exception):
    """A conditional write lost: the object exists (If-None-Match) or changed (If-Match)."""


class ObjectMissing(StorageError):
    pass


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
log = logging.getLogger(__name__)

# How long a trainer's store call waits out an outage before the job fails over it
# (`from_environment`; TUNEFORGE_STORE_OUTAGE_PATIENCE_SECONDS). Counted in seconds, not
# botocore attempts: botocore's backoff for a refused connection starts at 50 ms, so
# twelve attempts may all be spent within a few seconds of jitter.
TRAINER_OUTAGE_PATIENCE_SECONDS = 120.0
# The pause between two tries of a call while the store is down: doubling from the
# first, jittered, never longer than the last (a call is back within 2 s of the store).
_OUTAGE_PAUSES = (0.5, 2.0)

_Parameters = ParamSpec("_Parameters")
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, *parts: str) -> S3Location:
        base = self.key.rstrip("/")
        tail = "/".join(p.strip("/") for p in parts)
        return S3Location(self.bucket, f"{base}/{tail}" if base else tail)

    def as_prefix(self) -> S3Location:
        return S3Location(self.bucket, self.key.rstrip("/") + "/" if self.key else "")


def parse_s3_uri(uri: str, *, field: str) -> S3Location:
    """Parse and check `s3://bucket/key`: no other scheme, no `..`, no empty segments."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InvalidArgument(f"{field} must be an s3:// URI, got {uri!r}", field=field)
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise InvalidArgument(f"{field} has an invalid bucket name {bucket!r}", field=field)
    segments = key.rstrip("/").split("/") if key else []
    if any(s in ("", ".", "..") for s in segments):
        raise InvalidArgument(
            f"{field} must not contain empty, '.' or '..' path segments: {uri!r}", field=field
        )
    if any(ord(c) < 32 for c in key) or len(key) > 900:
        raise InvalidArgument(f"{field} has an invalid object key", field=field)
    return S3Location(bucket, key)


def _is_precondition_failure(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    # 409 ConditionalRequestConflict: a concurrent conditional write is in flight.
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (412, 409)


def _is_missing(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("NoSuchKey", "404", "NotFound") or status == 404


def _translate(error: Exception, what: str) -> TuneforgeError:
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = error.response.get("Error", {}).get("Code", "")
        message = error.response.get("Error", {}).get("Message", "")
        if status >= 500 or code in ("SlowDown", "ServiceUnavailable"):
            return StoreUnavailable(f"object store failed while {what}: {code} {message}".strip())
        if code == "NoSuchBucket":
            return ObjectMissing(f"bucket does not exist while {what}")
        return StorageError(f"object store refused {what}: {code} {message}".strip())
    return StoreUnavailable(f"object store unreachable while {what}: {error}")


def _patient(
    call: Callable[Concatenate[ObjectStore, _Parameters], _Result],
) -> Callable[Concatenate[ObjectStore, _Parameters], _Result]:
    """Make `call` again while it fails with `StoreUnavailable`, for up to the store's
    `outage_patience_seconds` from its first failure (none by default).

    Each try already includes botocore's quick retries. Only the outermost patient call
    of a thread waits (a directory upload does not wait once per file inside it). A
    conditional write whose answer was lost may come back as `PreconditionFailed` on
    its next try, as with botocore's own retries: callers of conditional writes re-read.
    """

    @functools.wraps(call)
    def patiently(
        store: ObjectStore, /, *args: _Parameters.args, **kwargs: _Parameters.kwargs
    ) -> _Result:
        if store.outage_patience_seconds <= 0 or getattr(store._waiting, "active", False):
            return call(store, *args, **kwargs)
        store._waiting.active = True
        try:
            return _again_while_unavailable(store, lambda: call(store, *args, **kwargs))
        finally:
            store._waiting.active = False

    return patiently


def _again_while_unavailable(store: ObjectStore, attempt: Callable[[], _Result]) -> _Result:
    outage = _OutageWait(store.outage_patience_seconds)
    while True:
        try:
            return attempt()
        except StoreUnavailable as error:
            outage.wait_or_raise(error)


class _OutageWait:
    """The pauses of one call while the store is down: jittered, doubling up to a cap,
    until `patience` seconds have passed since its first failure."""

    def __init__(self, patience: float) -> None:
        self.patience = patience
        self.deadline: float | None = None
        self.pause = _OUTAGE_PAUSES[0]

    def wait_or_raise(self, error: StoreUnavailable) -> None:
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.patience
            log.warning("%s; trying again for up to %.0f s", error, self.patience)
        if now >= self.deadline:
            raise error
        time.sleep(min(self.pause * random.uniform(0.5, 1.0), self.deadline - now))
        self.pause = min(self.pause * 2, _OUTAGE_PAUSES[1])


class ObjectStore:
    def __init__(
        self,
        *,
        endpoint_url: str | None,
        access_key_id: str | None,
        secret_access_key: str | None,
        region: str,
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        outage_patience_seconds: float = 0.0,
    ) -> None:
        # Seconds a call waits out an unreachable store before raising StoreUnavailable
        # (`_patient`); 0: botocore's quick retries only, as an API server wants.
        self.outage_patience_seconds = outage_patience_seconds
        self._waiting = threading.local()
        config = Config(
            region_name=region,
            # "standard" retries: exponential backoff with jitter on throttling,
            # 5xx and connection errors.
            retries={"max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=64,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            s3={"addressing_style": "path"},
            # Checksums on every request are not understood by every S3-compatible
            # store; only compute them where the API requires them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key
        )
        self._client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self._observers: list[Callable[[str, float, str | None], None]] = []
        # Whole-object GETs and PUTs skip botocore's per-call machinery where they can.
        self._direct = DirectS3.for_client(
            self._client, session, self._observers, connect_timeout, read_timeout
        )

    @classmethod
    def from_environment(
        cls, environ: dict[str, str] | None = None, *, outage_patience_seconds: float | None = None
    ) -> ObjectStore:
        """Build a store from the standard AWS_* variables (used by the trainer).

        The trainer is a batch process: each of its calls rides out a store outage of up
        to TUNEFORGE_STORE_OUTAGE_PATIENCE_SECONDS (default 120) rather than crash
        mid-checkpoint, where the API server answers 503 after a few quick retries.
        A caller someone waits on (a dry run) passes its own `outage_patience_seconds`.
        """
        env = dict(os.environ if environ is None else environ)
        patience = env.get("TUNEFORGE_STORE_OUTAGE_PATIENCE_SECONDS")
        if outage_patience_seconds is not None:
            patience = str(outage_patience_seconds)
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            region=env.get("AWS_DEFAULT_REGION", "us-east-1"),
            max_attempts=int(env.get("AWS_MAX_ATTEMPTS") or 5),
            outage_patience_seconds=(
                float(patience) if patience else TRAINER_OUTAGE_PATIENCE_SECONDS
            ),
        )

    def add_call_observer(self, observer: Callable[[str, float, str | None], None]) -> None:
        """Call `observer(operation, seconds, error)` after every S3 API call (metrics).

        `error` is None on success, else the S3 error code or the exception's class name.
        The time covers botocore's retries; the observer runs in the calling thread.
        """
        self._observers.append(observer)

        def before(context: dict[str, Any], model: Any, **_: Any) -> None:
            context["tuneforge_operation"] = model.name
            context["tuneforge_call_started"] = time.perf_counter()

        def done(context: dict[str, Any], error: str | None) -> None:
            started = context.pop("tuneforge_call_started", None)
            operation = context.get("tuneforge_operation", "unknown")
            if started is not None:
                observer(operation, time.perf_counter() - started, error)

        def after(context: dict[str, Any], http_response: Any, parsed: Any, **_: Any) -> None:
            failed = http_response.status_code >= 300
            code = parsed.get("Error", {}).get("Code") if failed else None
            done(context, (code or str(http_response.status_code)) if failed else None)

        def after_error(context: dict[str, Any], exception: Exception, **_: Any) -> None:
            done(context, type(exception).__name__)

        events = self._client.meta.events
        events.register("before-call.s3", before)
        events.register("after-call.s3", after)
        events.register("after-call-error.s3", after_error)

    # -- buckets ---------------------------------------------------------------

    @_patient
    def ensure_bucket(self, bucket: str) -> None:
        try:
            self._client.head_bucket(Bucket=bucket)
            return
        except ClientError as error:
            if not _is_missing(error):
                raise _translate(error, f"checking bucket {bucket}") from error
        except BotoCoreError as error:
            raise _translate(error, f"checking bucket {bucket}") from error
        try:
            self._client.create_bucket(Bucket=bucket)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise _translate(error, f"creating bucket {bucket}") from error
        except BotoCoreError as error:
            raise _translate(error, f"creating bucket {bucket}") from error

    # -- single objects --------------------------------------------------------

    @_patient
    def get_bytes(self, location: S3Location) -> tuple[bytes, str] | None:
        """Return (body, etag), or None when the object does not exist."""
        if self._direct is not None:
            try:
                return self._direct.get(location.bucket, location.key)
            except NotHandled:
                pass  # botocore reads it: retries, redirects, error mapping as below
        try:
            response = self._client.get_object(Bucket=location.bucket, Key=location.key)
            return response["Body"].read(), response["ETag"]
        except ClientError as error:
            if _is_missing(error) and error.response["Error"].get("Code") != "NoSuchBucket":
                return None
            raise _translate(error, f"reading {location.uri}") from error
        except BotoCoreError as error:
            raise _translate(error, f"reading {location.uri}") from error

    @_patient
    def get_range(self, location: S3Location, start: int, length: int) -> tuple[bytes, int] | None:
        """Up to `length` bytes of the object from byte `start` (a negative `start`: the
        last -start bytes, `length` unused) and the object's whole size, in one ranged
        GET; None when it does not exist. A start past the end gives no bytes."""
        if length < 1 and start >= 0:
            raise ValueError("length must be at least 1")
        ranged = f"bytes={start}" if start < 0 else f"bytes={start}-{start + length - 1}"
        try:
            response = self._client.get_object(
                Bucket=location.bucket, Key=location.key, Range=ranged
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if _is_missing(error) and code != "NoSuchBucket":
                return None
            if code == "InvalidRange" or status == 416:  # past the end, or an empty object
                head = self.head(location)
                return None if head is None else (b"", int(head["ContentLength"]))
            raise _translate(error, f"reading {location.uri}") from error
        except BotoCoreError as error:
            raise _translate(error, f"reading {location.uri}") from error
        body: bytes = response["Body"].read()
        content_range = response.get("ContentRange") or ""
        size = int(content_range.rsplit("/", 1)[1]) if "/" in content_range else len(body)
        return body, size

    def get_json(self, location: S3Location) -> tuple[dict[str, Any], str] | None:
        found = self.get_bytes(location)
        if found is None:
            return None
        body, etag = found
        return json.loads(body), etag

    @_patient
    def head(self, location: S3Location) -> dict[str, Any] | None:
        try:
            return dict(self._client.head_object(Bucket=location.bucket, Key=location.key))
        except ClientError as error:
            if _is_missing(error):
                return None
            raise _translate(error, f"reading {location.uri}") from error
        except BotoCoreError as error:
            raise _translate(error, f"reading {location.uri}") from error

    @_patient
    def put_bytes(
        self,
        location: S3Location,
        body: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
    ) -> str:
        """Write an object; return its new ETag.

        `if_none_match=True` creates only if absent, `if_match=etag` replaces only that
        version. A lost condition raises `PreconditionFailed`.
        """
        arguments: dict[str, Any] = {
            "Bucket": location.bucket,
            "Key": location.key,
            "Body": body,
            "ContentType": content_type,
        }
        if if_none_match:
            arguments["IfNoneMatch"] = "*"
        if if_match is not None:
            arguments["IfMatch"] = if_match
        if self._direct is not None:
            try:
                return self._direct.put(
                    location.bucket,
                    location.key,
                    body,
                    content_type=content_type,
                    if_none_match=if_none_match,
                    if_match=if_match,
                )
            except ConditionFailed as error:
                raise PreconditionFailed(location.uri) from error
            except NotHandled:
                pass  # botocore writes it: retries, error mapping as below
        try:
            return str(self._client.put_object(**arguments)["ETag"])
        except ClientError as error:
            if (if_none_match or if_match is not None) and _is_precondition_failure(error):
                raise PreconditionFailed(location.uri) from error
            raise _translate(error, f"writing {location.uri}") from error
        except BotoCoreError as error:
            raise _translate(error, f"writing {location.uri}") from error

    def put_json(
        self,
        location: S3Location,
        document: Any,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
        return self.put_bytes(
            location,
            body,
            if_none_match=if_none_match,
            if_match=if_match,
            content_type="application/json",
        )

    @_patient
    def delete(self, location: S3Location) -> None:
        try:
            self._client.delete_object(Bucket=location.bucket, Key=location.key)
        except (ClientError, BotoCoreError) as error:
            raise _translate(error, f"deleting {location.uri}") from error

    # -- listings --------------------------------------------------------------

    @_patient
    def list_common_prefixes(
        self, location: S3Location, *, start_after: str | None = None, limit: int = 1000
    ) -> list[str]:
        """The immediate 'sub-folders' under a prefix, in ascending key order."""
        arguments: dict[str, Any] = {
            "Bucket": location.bucket,
            "Prefix": location.key,
            "Delimiter": "/",
            "MaxKeys": limit,
        }
        if start_after:
            arguments["StartAfter"] = start_after
        if self._direct is not None:
            try:
                listing = self._direct.list_page(
                    location.bucket,
                    location.key,
                    start_after=start_after,
                    delimiter="/",
                    max_keys=limit,
                )
                return listing.prefixes
            except NotHandled:
                pass  # botocore lists it: retries, error mapping as below
        try:
            response = self._client.list_objects_v2(**arguments)
        except (ClientError, BotoCoreError) as error:
            raise _translate(error, f"listing {location.uri}") from error
        return [p["Prefix"] for p in response.get("CommonPrefixes", [])]

    def list_objects(
        self, location: S3Location, *, start_after: str | None = None, page_size: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Every object under a prefix (key, size, etag), in ascending key order; with
        `start_after`, only keys after that one. Fetched `page_size` keys at a time (at
        most 1000), lazily: a caller that needs the first few keys of a long listing
        asks for a small page, and stops iterating. With `outage_patience_seconds`, a
        listing the store breaks off goes on after the last key it gave."""
        if self.outage_patience_seconds <= 0 or getattr(self._waiting, "active", False):
            yield from self._list_objects_after(location, start_after, page_size)
            return
        outage: _OutageWait | None = None
        while True:
            try:
                for item in self._list_objects_after(location, start_after, page_size):
                    start_after = item["key"]
                    outage = None  # it went on: a later outage gets the whole patience
                    yield item
                return
            except StoreUnavailable as error:
                if outage is None:
                    outage = _OutageWait(self.outage_patience_seconds)
                outage.wait_or_raise(error)

    def _list_objects_after(
        self, location: S3Location, start_after: str | None, page_size: int
    ) -> Iterator[dict[str, Any]]:
        page_size = max(1, min(page_size, 1000))
        if self._direct is not None:
            # Page by page, each after the last key seen; on an answer the direct path
            # does not handle, botocore lists the rest from there.
            while True:
                try:
                    listing = self._direct.list_page(
                        location.bucket, location.key, start_after=start_after, max_keys=page_size
                    )
                except NotHandled:
                    break
                yield from listing.objects
                if not listing.truncated:
                    return
                if not listing.objects:
                    break  # "more" but nothing to page on from: botocore's paginator
                start_after = listing.objects[-1]["key"]
        paginator = self._client.get_paginator("list_objects_v2")
        arguments: dict[str, Any] = {
            "Bucket": location.bucket,
            "Prefix": location.key,
            "PaginationConfig": {"PageSize": page_size},
        }
        if start_after:
            arguments["StartAfter"] = start_after
        try:
            for page in paginator.paginate(**arguments):
                for item in page.get("Contents", []):
                    yield {"key": item["Key"], "size": item["Size"], "etag": item["ETag"]}
        except (ClientError, BotoCoreError) as error:
            raise _translate(error, f"listing {location.uri}") from error

    # -- files and directories -------------------------------------------------

    @_patient
    def upload_file(self, path: Path, location: S3Location) -> None:
        try:
            self._client.upload_file(str(path), location.bucket, location.key)
        except (ClientError, BotoCoreError) as error:
            raise _translate(error, f"uploading to {location.uri}") from error
        except S3UploadFailedError as error:  # boto3's wrapper of the ClientError
            cause = error.__cause__ or error.__context__
            if isinstance(cause, ClientError | BotoCoreError):
                raise _translate(cause, f"uploading to {location.uri}") from error
            raise StorageError(f"uploading to {location.uri} failed: {error}") from error

    def upload_stream(
        self,
        stream: BinaryIO,
        location: S3Location,
        *,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Write an object from a file object, read in parts (multipart when large): never
        whole in memory."""
        try:
            self._client.upload_fileobj(
                stream, location.bucket, location.key, ExtraArgs={"ContentType": content_type}
            )
        except (ClientError, BotoCoreError) as error:
            raise _translate(error, f"uploading to {location.uri}") from error

    @_patient
    def read_stream(self, location: S3Location, *, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """An object's bytes in chunks, as they arrive. Raises ObjectMissing before the
        first chunk when there is no such object."""
        try:
            body = self._client.get_object(Bucket=location.bucket, Key=location.key)["Body"]
        except ClientError as error:
            if _is_missing(error):
                raise ObjectMissing(f"{location.uri} does not exist") from error
            raise _translate(error, f"reading {location.uri}") from error
        except BotoCoreError as error:
            raise _translate(error, f"reading {location.uri}") from error
        return _chunks(body, chunk_bytes, location)

    @_patient
    def download_file(self, location: S3Location, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._client.download_file(location.bucket, location.key, str(path))
        except ClientError as error:
            if _is_missing(error):
                raise ObjectMissing(f"{location.uri} does not exist") from error
            raise _translate(error, f"downloading {location.uri}") from error
        except BotoCoreError as error:
            raise _translate(error, f"downloading {location.uri}") from error

    @_patient
    def upload_directory(self, directory: Path, location: S3Location) -> list[str]:
        """Upload every file under `directory` to the folder `location`; return the keys.

        All files at once, through one transfer manager (boto3's default: 10 threads,
        8 MiB parts): a checkpoint is a few large files and many small ones, and one
        after the other the small ones' round trips add up (bench/checkpoint_upload.py).
        Returns when every upload has ended; the first failure is raised and the uploads
        still waiting are cancelled. A caller commits only after this returns."""
        paths = sorted(p for p in directory.rglob("*") if p.is_file())
        keys = [location.child(path.relative_to(directory).as_posix()).key for path in paths]
        try:
            # "classic": s3transfer's threads, never the CRT client boto3 picks on some
            # instance types when awscrt is installed (other errors, other settings).
            config = TransferConfig(preferred_transfer_client="classic")
            with create_transfer_manager(self._client, config) as manager:
                uploads = [
                    manager.upload(str(path), location.bucket, key)
                    for path, key in zip(paths, keys, strict=True)
                ]
                for upload in uploads:
                    upload.result()
        except (ClientError, BotoCoreError) as error:
            raise _translate(error, f"uploading {directory} to {location.uri}") from error
        return keys

    @_patient
    def download_prefix(self, location: S3Location, directory: Path) -> list[Path]:
        """Download every object under `location` (a folder) into `directory`."""
        prefix = location.as_prefix()
        paths = []
        for item in self.list_objects(prefix):
            relative = item["key"][len(prefix.key) :]
            parts = relative.split("/")
            if not relative or any(p in ("", ".", "..") for p in parts):
                continue  # never write outside `directory`
            path = directory.joinpath(*parts)
            self.download_file(S3Location(prefix.bucket, item["key"]), path)
            paths.append(path)
        return paths

    @_patient
    def delete_prefix(self, location: S3Location) -> int:
        keys = [item["key"] for item in self.list_objects(location)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            try:
                self._client.delete_objects(
                    Bucket=location.bucket,
                    Delete={"Objects": batch, "Quiet": True},  # type: ignore[typeddict-item]
                )
            except (ClientError, BotoCoreError) as error:
                raise _translate(error, f"deleting under {location.uri}") from error
        return len(keys)


def _chunks(body: Any, chunk_bytes: int, location: S3Location) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(chunk_bytes)
    except (ClientError, BotoCoreError) as error:
        raise _translate(error, f"reading {location.uri}") from error
    finally:
        body.close()
