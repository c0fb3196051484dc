"""Reads of whole objects through ObjectStore's own SigV4 GET (service/sigv4.py) against
a real SeaweedFS that enforces credentials: the same answers as botocore's path, with
no fall-back to it for the common cases (each read is one store call), and a refusal
or an unreachable store still mapped to the same errors."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from service.embedded_s3 import EmbeddedS3, free_port
from service.errors import StoreUnavailable
from service.storage import ObjectMissing, ObjectStore, S3Location, StorageError


@pytest.fixture
def bucket(object_store: ObjectStore) -> str:
    name = f"fastget-{uuid.uuid4().hex[:10]}"
    object_store.ensure_bucket(name)
    return name


def test_reads_any_key_in_one_signed_call(
    s3_server: EmbeddedS3, object_store: ObjectStore, bucket: str
) -> None:
    calls: Counter[str] = Counter()
    store = ObjectStore(
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
        region="us-east-1",
    )
    store.add_call_observer(lambda operation, _, error: calls.update([f"{operation} {error}"]))
    # Keys that need percent-encoding in the signed path: a mismatch would be a 403.
    keys = ["jobs/plain/status.json", "odd/a b+c=d&e~f(g)!'*;,$@.txt", "unicode/é漢/ø.json"]
    for n, key in enumerate(keys):
        etag = object_store.put_bytes(S3Location(bucket, key), f"body {n}".encode())
        assert store.get_bytes(S3Location(bucket, key)) == (f"body {n}".encode(), etag)
    assert store.get_bytes(S3Location(bucket, "absent/status.json")) is None
    with pytest.raises(ObjectMissing):
        store.get_bytes(S3Location(f"nobucket-{uuid.uuid4().hex[:8]}", "x"))
    # One call per read, none failed and handed to botocore.
    assert calls == Counter({"GetObject None": len(keys) + 1, "GetObject NoSuchBucket": 1}), calls


def test_wrong_credentials_and_an_unreachable_store_fail_as_before(
    s3_server: EmbeddedS3, object_store: ObjectStore, bucket: str
) -> None:
    location = S3Location(bucket, "secret.json")
    object_store.put_bytes(location, b"{}")
    calls: Counter[str] = Counter()
    wrong = ObjectStore(
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key_id,
        secret_access_key="not-the-secret",
        region="us-east-1",
        max_attempts=1,
    )
    wrong.add_call_observer(lambda operation, seconds, error: calls.update([str(error)]))
    with pytest.raises(StorageError) as refused:
        wrong.get_bytes(location)
    assert not isinstance(refused.value, StoreUnavailable)  # a refusal, not an outage
    assert calls["403"] == 1, calls  # the signed GET was refused, then botocore's

    closed = ObjectStore(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
        region="us-east-1",
        max_attempts=1,
        connect_timeout=1.0,
    )
    with pytest.raises(StoreUnavailable):
        closed.get_bytes(location)
