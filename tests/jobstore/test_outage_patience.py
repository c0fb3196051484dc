"""A patient store (the trainer's) waits out an outage; an impatient one (the API
server's) reports it at once. Against the real store behind a loopback TCP proxy
(tests/tcp_proxy.py) that drops and refuses every connection while "down"."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from jobstore.errors import StoreUnavailable
from jobstore.storage import ObjectStore, S3Location
from service.server.embedded_s3 import EmbeddedS3
from tests.conftest import ACCESS_KEY, SECRET_KEY
from tests.tcp_proxy import TcpProxy

BUCKET = "outage-patience"


@pytest.fixture
def proxy(s3_server: EmbeddedS3, object_store: ObjectStore) -> Iterator[TcpProxy]:
    object_store.ensure_bucket(BUCKET)
    proxy = TcpProxy(s3_server.port).start()
    try:
        yield proxy
    finally:
        proxy.restore()
        proxy.stop()


def through(proxy: TcpProxy, patience: float) -> ObjectStore:
    # One botocore attempt per try: what is waited out is this module's doing.
    return ObjectStore(
        endpoint_url=proxy.endpoint_url,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        region="us-east-1",
        max_attempts=1,
        outage_patience_seconds=patience,
    )


def restore_after(proxy: TcpProxy, seconds: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), proxy.restore()))
    thread.start()
    return thread


def test_a_patient_write_and_read_wait_out_an_outage(
    proxy: TcpProxy, object_store: ObjectStore
) -> None:
    store = through(proxy, patience=60)
    location = S3Location(BUCKET, f"patient/{uuid.uuid4().hex}")
    proxy.outage()
    restoring = restore_after(proxy, 3.0)
    started = time.monotonic()
    store.put_bytes(location, b"written during the outage", if_none_match=True)
    waited = time.monotonic() - started
    restoring.join()
    assert waited >= 2.5, f"it returned after {waited:.1f} s, before the store was back"
    found = object_store.get_bytes(location)
    assert found is not None and found[0] == b"written during the outage"

    proxy.outage()
    restoring = restore_after(proxy, 2.0)
    read = store.get_bytes(location)
    restoring.join()
    assert read is not None and read[0] == b"written during the outage"


def test_an_impatient_store_reports_the_outage_at_once(proxy: TcpProxy) -> None:
    store = through(proxy, patience=0)
    proxy.outage()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unreachable"):
        store.get_bytes(S3Location(BUCKET, "anything"))
    assert time.monotonic() - started < 5


def test_a_patient_store_gives_up_after_its_patience(proxy: TcpProxy) -> None:
    store = through(proxy, patience=2)
    proxy.outage()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.head(S3Location(BUCKET, "anything"))
    waited = time.monotonic() - started
    assert 2 <= waited < 15, waited


def test_a_listing_broken_off_by_an_outage_goes_on_after_its_last_key(
    proxy: TcpProxy, object_store: ObjectStore
) -> None:
    prefix = f"listing/{uuid.uuid4().hex}/"
    keys = [f"{prefix}{number:02d}" for number in range(7)]
    for key in keys:
        object_store.put_bytes(S3Location(BUCKET, key), b"x")
    store = through(proxy, patience=60)
    listed: list[str] = []
    restoring: threading.Thread | None = None
    for item in store.list_objects(S3Location(BUCKET, prefix), page_size=2):
        listed.append(item["key"])
        if len(listed) == 3:  # mid-page: the next page's request meets the outage
            proxy.outage()
            restoring = restore_after(proxy, 2.0)
    assert restoring is not None
    restoring.join()
    assert listed == keys
