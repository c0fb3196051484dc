"""Whole-object reads and writes through ObjectStore's direct SigV4 requests
(jobstore/s3_direct.py) against a real SeaweedFS that enforces credentials: the same
answers as botocore's path, with no fall-back to it for the common cases (each call is
one store call), and a refusal or an unreachable store still mapped to the same errors."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from jobstore.errors import StoreUnavailable
from jobstore.storage import (
    ObjectMissing,
    ObjectStore,
    PreconditionFailed,
    S3Location,
    StorageError,
)
from service.server.embedded_s3 import EmbeddedS3, free_port


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
    # One call per read, none failed and handed to botocore but the missing bucket's.
    assert calls["GetObject None"] == len(keys) + 1, calls
    assert sum(calls.values()) == len(keys) + 3, calls  # + direct 404 and botocore's


def test_conditional_writes_in_one_signed_call(
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
    location = S3Location(bucket, "cas/a b+é.json")
    first = store.put_json(location, {"n": 1}, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put_json(location, {"n": 2}, if_none_match=True)
    second = store.put_json(location, {"n": 2}, if_match=first)
    with pytest.raises(PreconditionFailed):
        store.put_json(location, {"n": 3}, if_match=first)  # stale: lost
    assert store.get_json(location) == ({"n": 2}, second)
    # botocore's path reads what the direct one wrote, content type included.
    head = object_store.head(location)
    assert head is not None and head["ContentType"] == "application/json"
    assert (
        store.put_bytes(S3Location(bucket, "empty"), b"")
        == object_store.head(S3Location(bucket, "empty"))["ETag"]
    )  # type: ignore[index]
    # One call each; a lost condition is answered 412 (or 409: a racing conditional
    # write) and raised at once, not handed to botocore.
    lost = calls.pop("PutObject 412", 0) + calls.pop("PutObject 409", 0)
    assert lost == 2, calls
    assert calls == Counter({"PutObject None": 3, "GetObject None": 1}), calls


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
    with pytest.raises(StorageError):
        wrong.put_bytes(location, b"overwritten", if_match=None)
    assert calls["403"] == 2, calls
    assert object_store.get_bytes(location) is not None
    assert object_store.get_bytes(location)[0] == b"{}"  # type: ignore[index]

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


def test_listings_page_through_every_key_in_order(
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
    # More keys than one page (1000), some needing encoding in the listing's XML.
    keys = [f"many/{n:04d}" for n in range(1003)] + ["many/odd a+b=c&é", "many/sub/x"]
    for key in keys:
        store.put_bytes(S3Location(bucket, key), b"")
    calls.clear()

    listed = list(store.list_objects(S3Location(bucket, "many/")))
    assert [item["key"] for item in listed] == sorted(keys)
    assert {item["size"] for item in listed} == {0}
    assert all(item["etag"].strip('"') for item in listed)
    after = list(store.list_objects(S3Location(bucket, "many/"), start_after="many/1001"))
    assert [item["key"] for item in after] == ["many/1002", "many/odd a+b=c&é", "many/sub/x"]
    folders = store.list_common_prefixes(S3Location(bucket, ""), limit=10)
    assert folders == ["many/"]
    sub = store.list_common_prefixes(S3Location(bucket, "many/"), start_after="many/1002")
    assert sub == ["many/sub/"]
    # Two pages, one, one, one: every listing answered directly.
    assert calls == Counter({"ListObjectsV2 None": 5}), calls
