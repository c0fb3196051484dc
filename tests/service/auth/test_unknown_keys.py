"""Made-up API keys cost a client its own budget, not the store: lookups of key ids a
replica has never seen exist are limited per client address before any store read
(429 / RESOURCE_EXHAUSTED / ThrottlingException past it), keys in use are never pushed
out of memory by a flood, and other clients and known keys go on as before."""

from __future__ import annotations

import secrets
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobstore.storage import ObjectStore
from service.auth.keys import KeyStore
from service.auth.tenants import Access
from service.errors import TooManyRequests, Unauthenticated
from service.server.embedded_s3 import EmbeddedS3
from service.settings import Settings
from tests.servers import ApiServer

ADMIN_KEY = "admin-key-for-the-unknown-keys-test-0123"


def _made_up() -> str:
    return f"tfk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


@pytest.fixture
def counted_keys(s3_server: EmbeddedS3) -> tuple[ObjectStore, str, Counter[str]]:
    storage = ObjectStore(
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
        region="us-east-1",
    )
    calls: Counter[str] = Counter()
    storage.add_call_observer(lambda operation, seconds, error: calls.update([operation]))
    bucket = f"keys-{uuid.uuid4().hex[:10]}"
    storage.ensure_bucket(bucket)
    return storage, bucket, calls


def test_a_flood_of_made_up_keys_costs_its_client_a_bounded_number_of_reads(
    counted_keys: tuple[ObjectStore, str, Counter[str]],
) -> None:
    storage, bucket, calls = counted_keys
    settings = Settings(
        admin_key=ADMIN_KEY,
        unknown_key_lookups_per_second=0.01,  # no refill within the test
        unknown_key_lookup_burst=5,
    )
    real = KeyStore(storage, bucket).create("acme").key  # made by another replica
    access = Access(settings, KeyStore(storage, bucket, cache_size=8), enabled=True)
    assert access.tenant_for_key(real, "10.0.0.7") == "acme"  # one lookup: now known
    calls.clear()

    refused = 0
    for _ in range(30):
        try:
            access.tenant_for_key(_made_up(), "10.0.0.7")
        except Unauthenticated:
            pass
        except TooManyRequests as error:
            refused += 1
            assert "10.0.0.7" in error.message and error.retry_after_seconds > 0
    # Four lookups were left of the budget of 5 (the real key took one); then no read.
    assert calls["GetObject"] == 4 and refused == 26
    # The known key goes on working for that client, with no more budget.
    assert access.tenant_for_key(real, "10.0.0.7") == "acme"
    # Another client has a budget of its own.
    with pytest.raises(Unauthenticated):
        access.tenant_for_key(_made_up(), "10.0.0.8")
    # Memory stays bounded, and the flood did not push the key in use out of it.
    for _ in range(50):
        try:
            access.tenant_for_key(_made_up(), f"10.1.{secrets.randbelow(250)}.1")
        except (Unauthenticated, TooManyRequests):
            pass
    assert len(access.keys._missing) <= 8 and len(access.keys._known) == 1
    assert access.keys.is_unknown(real) is False


@pytest.fixture
def tight_server(s3_server: EmbeddedS3, tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"unknown-{uuid.uuid4().hex[:10]}",
        admin_key=ADMIN_KEY,
        extra_env={
            "TUNEFORGE_TRAINER_SHARED_CREDENTIALS": "true",
            "TUNEFORGE_UNKNOWN_KEY_LOOKUPS_PER_SECOND": "0.01",
            "TUNEFORGE_UNKNOWN_KEY_LOOKUP_BURST": "3",
        },
    )
    server.start()
    yield server
    server.stop()


def test_rest_answers_429_with_retry_after_past_the_budget(tight_server: ApiServer) -> None:
    good = tight_server.create_api_key("team")  # made on this replica: known here
    codes = []
    for _ in range(6):
        with tight_server.client(_made_up()) as rest:
            response = rest.get("/v1/jobs")
        codes.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert codes == [401, 401, 401, 429, 429, 429]
    with tight_server.client(good) as rest:
        assert rest.get("/v1/jobs").status_code == 200  # a known key is never held up
