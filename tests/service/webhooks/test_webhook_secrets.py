"""Tenants' webhook secrets on the real store: derived per tenant and generation, the
same on every replica, and two rotations at once both count (compare-and-swap)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from jobstore.storage import ObjectStore
from service.webhooks.secrets import WebhookSecrets


def test_replicas_agree_and_concurrent_rotations_both_count(object_store: ObjectStore) -> None:
    bucket = f"hooks-{uuid.uuid4().hex[:10]}"
    object_store.ensure_bucket(bucket)
    replicas = [WebhookSecrets(object_store, bucket, "operator", cache_seconds=0) for _ in "ab"]
    first, second = (replica.current("acme") for replica in replicas)
    assert first == second and first.generation == 1  # no write needed for the first
    assert replicas[0].current("globex").secret != first.secret
    other_operator = WebhookSecrets(object_store, bucket, "another-operator", cache_seconds=0)
    assert other_operator.current("acme").secret != first.secret

    with ThreadPoolExecutor(2) as pool:
        rotated = list(pool.map(lambda replica: replica.rotate("acme"), replicas))
    assert sorted(secret.generation for secret in rotated) == [2, 3]
    assert len({secret.secret for secret in rotated} | {first.secret}) == 3
    latest = max(rotated, key=lambda secret: secret.generation)
    assert replicas[0].current("acme") == replicas[1].current("acme") == latest
    assert replicas[0].current("globex").generation == 1  # untouched
