"""Log slices come from HTTP Range reads of the real store: the same bytes as slicing the
whole log (ends never inside a UTF-8 character), and a slice of a long log downloads
about the slice, not the log (bytes counted on the wire by a loopback proxy)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobstore.documents import (
    DataLocation,
    HyperParameters,
    JobSpec,
    JobStatus,
    LaunchRecord,
    new_job_id,
    utc_now,
)
from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from service.core import jobs
from service.server.embedded_s3 import EmbeddedS3
from tests.tcp_proxy import TcpProxy

TENANT = "default"


def _reference(log: bytes, offset: int, max_bytes: int) -> tuple[bytes, int]:
    """The slice as read from the whole log (what the service did before Range reads,
    and a tail now starts on a whole character)."""
    size = len(log)
    start = max(0, size + offset) if offset < 0 else min(offset, size)
    while offset < 0 and start < size and (log[start] & 0xC0) == 0x80:
        start += 1  # a tail starts on a whole character
    end = min(size, start + max_bytes)
    while start < end < size and (log[end] & 0xC0) == 0x80:
        end -= 1
    return log[start:end], end


@pytest.fixture
def proxied(s3_server: EmbeddedS3) -> Iterator[tuple[JobStore, TcpProxy]]:
    proxy = TcpProxy(s3_server.port).start()
    storage = ObjectStore(
        endpoint_url=proxy.endpoint_url,
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
        region="us-east-1",
    )
    bucket = f"logs-{uuid.uuid4().hex[:10]}"
    storage.ensure_bucket(bucket)
    yield JobStore(storage, bucket), proxy
    proxy.stop()


def _launched_job(store: JobStore, log: bytes, tmp_path: Path) -> str:
    spec = JobSpec(
        jobId=new_job_id(),
        jobName="logs",
        createdAt=utc_now(),
        baseModelIdentifier="s3://demo/models/tiny-llama/",
        trainingDataConfig=DataLocation(s3Uri="s3://demo/datasets/sample-train.jsonl"),
        outputDataConfig=DataLocation(s3Uri="s3://demo/output/"),
        hyperParameters=HyperParameters(),
    )
    store.create(spec)

    def launched(status: JobStatus) -> JobStatus:
        status.launch = LaunchRecord(
            attempt=1, launcher="local", host="h", launchedAt=utc_now(), launchedBy="test"
        )
        return status

    store.update_status(spec.jobId, launched)
    path = tmp_path / "trainer.log"
    path.write_bytes(log)
    store.upload_log(spec.jobId, 1, path)
    return spec.jobId


def test_slices_equal_slicing_the_whole_log(
    proxied: tuple[JobStore, TcpProxy], tmp_path: Path
) -> None:
    store, _ = proxied
    # Characters of 1 to 4 bytes, so that many slice ends fall inside one.
    log = ("step é 12 € loss 𝄞 0.5\n" * 40).encode()
    job_id = _launched_job(store, log, tmp_path)
    cases = [(0, 1), (0, 7), (5, 3), (6, 2), (len(log) - 3, 10), (len(log), 5), (len(log) + 9, 5)]
    cases += [(-1, 4), (-5, 2), (-30, 100), (-len(log) - 50, 20), (-400, 17), (-401, 399)]
    cases += [(offset, 13) for offset in range(0, 80, 3)]
    for offset, max_bytes in cases:
        read = jobs.read_job_log(store, job_id, tenant=TENANT, offset=offset, max_bytes=max_bytes)
        expected, next_offset = _reference(log, offset, max_bytes)
        assert (read.data, read.next_offset, read.size) == (expected, next_offset, len(log)), (
            offset,
            max_bytes,
        )
        if offset <= 0 or (log[offset : offset + 1] or b"a")[0] & 0xC0 != 0x80:
            read.data.decode()  # from a character's start: whole characters only


def test_a_slice_of_a_long_log_downloads_the_slice_not_the_log(
    proxied: tuple[JobStore, TcpProxy], tmp_path: Path
) -> None:
    store, proxy = proxied
    log = b"".join(b"line %08d of a long trainer log\n" % n for n in range(600_000))  # ~20 MB
    job_id = _launched_job(store, log, tmp_path)
    for offset in (10_000_000, -500, -5_000_000):
        before = proxy.bytes_to_clients
        read = jobs.read_job_log(store, job_id, tenant=TENANT, offset=offset, max_bytes=1000)
        downloaded = proxy.bytes_to_clients - before
        assert read.size == len(log) and read.data == _reference(log, offset, 1000)[0]
        assert downloaded < 64_000, f"{downloaded} bytes on the wire for a 1000-byte slice"
