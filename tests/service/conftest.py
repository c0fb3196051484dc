"""Fixtures shared by the service's tests."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from service.server.embedded_s3 import EmbeddedS3


@pytest.fixture
def counted(s3_server: EmbeddedS3) -> tuple[JobStore, Counter[str]]:
    """A job store of a bucket of its own (other tests' calls are not counted) whose S3
    calls are counted by operation."""
    storage = ObjectStore(
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
        region="us-east-1",
    )
    calls: Counter[str] = Counter()
    storage.add_call_observer(lambda operation, seconds, error: calls.update([operation]))
    bucket = f"counted-{uuid.uuid4().hex[:10]}"
    storage.ensure_bucket(bucket)
    return JobStore(storage, bucket), calls
