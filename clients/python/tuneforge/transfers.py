"""Resumable transfers between local files and S3-compatible object storage.

Used by `tuneforge data upload`, `tuneforge data validate` and `tuneforge models
download`. The store and its credentials come from the caller's environment exactly as
the AWS CLI takes them (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE and the
shared config files, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_REGION or
AWS_DEFAULT_REGION); with `make run`'s embedded store that is `.tuneforge/env`.

Uploads: a file smaller than one part is one PUT; a larger one is an S3 multipart upload
whose UploadId is kept in a small state file under ~/.cache/tuneforge/uploads/ (named
by a hash of the file's absolute path, size, modification time and the destination). A
rerun asks the store which parts it holds (ListParts), checks each against the local
part's size and MD5, sends only the others, then completes the upload: the destination
object appears whole, at once, or not at all. The state file goes once it completes.

Downloads: every object under a prefix, each into its place in a local directory. A file
already there with the object's size (and, where the ETag is a plain MD5, the same MD5)
is skipped; a shorter one is continued with a ranged GET (it is written as
`NAME.part` and renamed when whole and checked).

boto3 is imported here only, and this module only by the transfer commands, so the
other commands do not pay for it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

MIB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MIB
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
MAX_PARTS = 10_000  # S3's maximum number of parts of one upload
CHUNK = 1 * MIB

# Exit codes, as the CLI's (tuneforge/cli.py).
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")


class TransferError(Exception):
    """A transfer that cannot be done; `exit_code` is the CLI's code for it."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- locations and the client ---------------------------------------------------------


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_uri(text: str) -> S3Uri:
    """`s3://bucket/key` (the key may be empty or a prefix); a TransferError (usage)
    for anything else."""
    if not text.startswith("s3://"):
        raise TransferError(f"{text!r} is not an s3:// URI (want s3://bucket/key)", EXIT_USAGE)
    bucket, _, key = text[len("s3://") :].partition("/")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.\-_]{1,254}", bucket):
        raise TransferError(f"{text!r} has no valid bucket name (want s3://bucket/key)", EXIT_USAGE)
    return S3Uri(bucket, key)


def s3_client() -> Any:
    """A boto3 S3 client configured from the environment as the AWS CLI is."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise TransferError(
            "the data and model commands need boto3: pip install 'tuneforge-client[s3]' "
            "(or pip install boto3)",
            EXIT_USAGE,
        ) from None
    from botocore.exceptions import BotoCoreError

    options: dict[str, Any] = {
        "retries": {"max_attempts": 5, "mode": "standard"},
        # Only the checksums the API requires: not every S3-compatible store knows the
        # newer ones; parts carry a Content-MD5 instead.
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    }
    region = os.environ.get("AWS_REGION") or None
    try:
        session = boto3.session.Session(region_name=region)
        if session.region_name is None:
            region = "us-east-1"  # S3-compatible stores mostly ignore it; AWS needs one
        client = session.client("s3", region_name=region, config=Config(**options))
        if "amazonaws.com" not in client.meta.endpoint_url:
            # Another store (AWS_ENDPOINT_URL...): path-style, as such stores expect.
            options["s3"] = {"addressing_style": "path"}
            client = session.client("s3", region_name=region, config=Config(**options))
    except BotoCoreError as error:  # a missing profile, a bad config file
        raise TransferError(f"cannot set up the S3 client: {error}", EXIT_USAGE) from None
    return client


def describe_error(error: Exception, what: str) -> TransferError:
    """One clear line for a botocore error met while doing `what`."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return TransferError(
            f"{what}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE); with `make run`'s store: set -a; . .tuneforge/env; set +a",
            EXIT_USAGE,
        )
    if isinstance(error, EndpointConnectionError):
        return TransferError(
            f"{what}: cannot reach the object store ({error}); check AWS_ENDPOINT_URL",
            EXIT_UNREACHABLE,
        )
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        message = str(error.response.get("Error", {}).get("Message", "")) or code
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("AccessDenied", "Forbidden", "403") or status == 403:
            return TransferError(
                f"{what}: access denied ({message}); check the credentials and that they "
                "may use this bucket"
            )
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return TransferError(f"{what}: the store refused the credentials ({code})")
        if code in ("NoSuchBucket",):
            return TransferError(f"{what}: no such bucket ({message})")
        return TransferError(f"{what}: {code}: {message}")
    return TransferError(f"{what}: {error}", EXIT_UNREACHABLE)


# -- progress -------------------------------------------------------------------------


class Progress:
    """A progress bar on a terminal (stderr); nothing elsewhere (scripts read stdout's
    summary instead)."""

    def __init__(self, label: str, total: int, *, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.label = label
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._start_done = 0
        self._drawn = 0.0

    def start_at(self, done: int) -> None:
        """Bytes already in place before this run (not counted in its speed)."""
        self.done = self._start_done = done
        self.draw(force=True)

    def advance(self, count: int) -> None:
        self.done += count
        self.draw()

    def draw(self, *, force: bool = False) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self._drawn < 0.1 and self.done < self.total:
            return
        self._drawn = now
        fraction = min(1.0, self.done / self.total) if self.total else 1.0
        size = 24
        filled = round(fraction * size)
        elapsed = max(now - self.started, 1e-6)
        rate = (self.done - self._start_done) / elapsed
        text = (
            f"{self.label} [{'#' * filled}{'-' * (size - filled)}] {fraction:4.0%} "
            f"{self.done / MIB:,.1f}/{self.total / MIB:,.1f} MiB  {rate / MIB:,.1f} MiB/s"
        )
        width = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r\x1b[K" + text[: max(10, width - 1)])
        self.stream.flush()

    def finish(self) -> None:
        if self.live:
            self.draw(force=True)
            self.stream.write("\n")
            self.stream.flush()


def _size(count: int) -> str:
    return f"{count / MIB:,.1f} MiB" if count >= MIB else f"{count:,} bytes"


# -- upload ---------------------------------------------------------------------------


@dataclass
class UploadResult:
    destination: S3Uri
    size: int
    parts: int  # 0 for a single PUT
    parts_sent: int
    parts_reused: int

    def summary(self, source: str) -> str:
        if not self.parts:
            return f"uploaded {source} to {self.destination} ({_size(self.size)}, one PUT)"
        return (
            f"uploaded {source} to {self.destination} ({_size(self.size)}, {self.parts} parts: "
            f"{self.parts_sent} sent, {self.parts_reused} already in the store)"
        )


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tuneforge" / "uploads"


def state_path(path: Path, destination: S3Uri) -> Path:
    stat = path.stat()
    identity = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(destination)])
    return cache_dir() / f"{hashlib.sha256(identity.encode()).hexdigest()}.json"


def _local_file(path: Path) -> os.stat_result:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise TransferError(f"no such file: {path}", EXIT_USAGE) from None
    except OSError as error:
        raise TransferError(f"cannot read {path}: {error.strerror}", EXIT_USAGE) from None
    if not path.is_file():
        raise TransferError(f"{path} is not a file", EXIT_USAGE)
    if not os.access(path, os.R_OK):
        raise TransferError(f"cannot read {path}: permission denied", EXIT_USAGE)
    return stat


def _read_part(handle: IO[bytes], number: int, part_size: int) -> bytes:
    handle.seek((number - 1) * part_size)
    return handle.read(part_size)


def upload_file(
    client: Any,
    path: Path,
    destination: S3Uri,
    *,
    part_size: int = DEFAULT_PART_SIZE,
    progress_stream: IO[str] | None = None,
) -> UploadResult:
    """Upload `path` to `destination`, resuming an earlier interrupted upload of the same
    file to the same place. A destination ending in '/' gets the file's name."""
    stat = _local_file(path)
    if not destination.key or destination.key.endswith("/"):
        destination = S3Uri(destination.bucket, destination.key + path.name)
    if part_size < MIN_PART_SIZE:
        raise TransferError(
            f"the part size must be at least {MIN_PART_SIZE // MIB} MiB (S3's minimum)",
            EXIT_USAGE,
        )
    size = stat.st_size
    progress = Progress(f"{path.name}", size, stream=progress_stream)
    what = f"uploading to {destination}"
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if size <= part_size:
            with open(path, "rb") as handle:
                data = handle.read()
            digest = hashlib.md5(data, usedforsecurity=False)
            client.put_object(
                Bucket=destination.bucket,
                Key=destination.key,
                Body=data,
                ContentMD5=base64.b64encode(digest.digest()).decode(),
            )
            progress.advance(size)
            progress.finish()
            return UploadResult(destination, size, 0, 0, 0)
        return _multipart(client, path, destination, size, part_size, progress)
    except (BotoCoreError, ClientError) as error:
        raise describe_error(error, what) from None
    except OSError as error:  # the file, or the state file's directory
        raise TransferError(f"{what}: {error}", EXIT_USAGE) from None


def _multipart(
    client: Any,
    path: Path,
    destination: S3Uri,
    size: int,
    part_size: int,
    progress: Progress,
) -> UploadResult:
    from botocore.exceptions import ClientError

    state_file = state_path(path, destination)
    state: dict[str, Any] | None = None
    if state_file.exists():
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state = None
    held: dict[int, dict[str, Any]] = {}
    if state is not None:
        part_size = int(state["partSize"])  # the parts already sent fix it
        try:
            paginator = client.get_paginator("list_parts")
            for page in paginator.paginate(
                Bucket=destination.bucket, Key=destination.key, UploadId=state["uploadId"]
            ):
                for part in page.get("Parts", []):
                    held[int(part["PartNumber"])] = part
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404"):
                raise
            state, held = None, {}  # aborted or expired: start again
    count = -(-size // part_size)
    if count > MAX_PARTS:
        raise TransferError(
            f"{path} needs {count} parts of {_size(part_size)}: more than S3's {MAX_PARTS}; "
            "pass a larger --part-size",
            EXIT_USAGE,
        )
    if state is None:
        created = client.create_multipart_upload(Bucket=destination.bucket, Key=destination.key)
        state = {
            "uploadId": created["UploadId"],
            "partSize": part_size,
            "bucket": destination.bucket,
            "key": destination.key,
            "path": str(path.resolve()),
        }
        state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(state))
        temporary.replace(state_file)
    upload_id = state["uploadId"]
    etags: dict[int, str] = {}
    sent = reused = 0
    with open(path, "rb") as handle:
        # The parts the store already holds, checked against the file.
        for number, part in held.items():
            if number > count:
                continue
            data = _read_part(handle, number, part_size)
            etag = str(part.get("ETag", "")).strip('"')
            if (
                int(part.get("Size", -1)) == len(data)
                and etag == hashlib.md5(data, usedforsecurity=False).hexdigest()
            ):
                etags[number] = str(part["ETag"])
        reused = len(etags)
        progress.start_at(sum(min(part_size, size - (n - 1) * part_size) for n in etags))
        for number in range(1, count + 1):
            if number in etags:
                continue
            data = _read_part(handle, number, part_size)
            digest = hashlib.md5(data, usedforsecurity=False)
            answer = client.upload_part(
                Bucket=destination.bucket,
                Key=destination.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=base64.b64encode(digest.digest()).decode(),
            )
            etags[number] = str(answer["ETag"])
            sent += 1
            progress.advance(len(data))
    client.complete_multipart_upload(
        Bucket=destination.bucket,
        Key=destination.key,
        UploadId=upload_id,
        MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": etags[n]} for n in range(1, count + 1)]
        },
    )
    progress.finish()
    state_file.unlink(missing_ok=True)
    return UploadResult(destination, size, count, sent, reused)


def delete_object(client: Any, location: S3Uri) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.delete_object(Bucket=location.bucket, Key=location.key)
    except (BotoCoreError, ClientError) as error:
        raise describe_error(error, f"deleting {location}") from None


# -- download -------------------------------------------------------------------------


@dataclass
class DownloadResult:
    source: S3Uri
    files: int
    size: int
    fetched: int  # files downloaded whole
    resumed: int  # files continued from a partial copy
    complete: int  # files already there, checked
    bytes_received: int

    def summary(self, directory: str) -> str:
        return (
            f"downloaded {self.source} to {directory} ({self.files} files, {_size(self.size)}: "
            f"{self.fetched} fetched, {self.resumed} resumed, {self.complete} already "
            f"complete; {_size(self.bytes_received)} received)"
        )


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _target(directory: Path, relative: str) -> Path:
    parts = [p for p in relative.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise TransferError(f"refusing to write object key {relative!r} outside {directory}")
    return directory.joinpath(*parts)


def download_prefix(
    client: Any, source: S3Uri, directory: Path, *, progress_stream: IO[str] | None = None
) -> DownloadResult:
    """Every object under `source` (a prefix) into `directory`, resuming what is there."""
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = source.key if not source.key or source.key.endswith("/") else source.key + "/"
    source = S3Uri(source.bucket, prefix)
    try:
        objects: list[dict[str, Any]] = []
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=source.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if not str(item["Key"]).endswith("/"):
                    objects.append(item)
    except (BotoCoreError, ClientError) as error:
        raise describe_error(error, f"listing {source}") from None
    if not objects:
        raise TransferError(f"no objects under {source}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TransferError(f"cannot create {directory}: {error.strerror}", EXIT_USAGE) from None
    total = sum(int(item["Size"]) for item in objects)
    progress = Progress(directory.name or str(directory), total, stream=progress_stream)
    result = DownloadResult(source, len(objects), total, 0, 0, 0, 0)
    try:
        plan = _plan(directory, prefix, objects, result)
        left = sum(int(item["Size"]) - have for item, _, have in plan)
        progress.start_at(total - left)
        for item, target, have in plan:
            received = _download_one(client, source.bucket, item, target, have, progress)
            result.bytes_received += received
            if have:
                result.resumed += 1
            else:
                result.fetched += 1
    except (BotoCoreError, ClientError) as error:
        raise describe_error(error, f"downloading {source}") from None
    except OSError as error:
        raise TransferError(f"writing into {directory}: {error}", EXIT_USAGE) from None
    progress.finish()
    return result


def _plan(
    directory: Path, prefix: str, objects: list[dict[str, Any]], result: DownloadResult
) -> list[tuple[dict[str, Any], Path, int]]:
    """What is left to fetch: (object, local path, bytes already there) for each object
    not complete locally; complete ones are counted in `result`."""
    plan: list[tuple[dict[str, Any], Path, int]] = []
    for item in objects:
        target = _target(directory, str(item["Key"])[len(prefix) :])
        size = int(item["Size"])
        etag = str(item.get("ETag", "")).strip('"')
        if (
            target.is_file()
            and target.stat().st_size == size
            and (not _PLAIN_MD5.match(etag) or _md5_of(target) == etag)
        ):
            result.complete += 1
            continue
        partial = target.with_name(target.name + ".part")
        if target.is_file() and target.stat().st_size < size:
            target.replace(partial)  # a shorter copy: continue it
        elif target.exists():
            target.unlink()  # a longer or different copy: fetch it again
        have = partial.stat().st_size if partial.is_file() else 0
        if have > size:
            partial.unlink()
            have = 0
        plan.append((item, target, have))
    return plan


def _download_one(
    client: Any, bucket: str, item: dict[str, Any], target: Path, have: int, progress: Progress
) -> int:
    """One object into `target` via `target.part`, continuing from `have` bytes; the
    bytes received."""
    size = int(item["Size"])
    etag = str(item.get("ETag", "")).strip('"')
    partial = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    received = 0
    if have < size:
        request: dict[str, Any] = {"Bucket": bucket, "Key": item["Key"]}
        if have:
            request["Range"] = f"bytes={have}-"
        body = client.get_object(**request)["Body"]
        with open(partial, "ab" if have else "wb") as sink:
            while chunk := body.read(CHUNK):
                sink.write(chunk)
                received += len(chunk)
                progress.advance(len(chunk))
    elif not partial.exists():
        partial.touch()  # an empty object
    if partial.stat().st_size != size or (_PLAIN_MD5.match(etag) and _md5_of(partial) != etag):
        if not have:
            partial.unlink(missing_ok=True)
            raise TransferError(f"s3://{bucket}/{item['Key']} changed while it was downloaded")
        # The partial copy was not a prefix of this object: fetch it whole.
        partial.unlink()
        progress.advance(-have)
        return received + _download_one(client, bucket, item, target, 0, progress)
    partial.replace(target)
    return received
