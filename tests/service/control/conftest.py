"""Fixtures for the reconciler's tests: a job store over a bucket of its own."""

from __future__ import annotations

import uuid

import pytest

from jobstore.storage import ObjectStore
from jobstore.store import JobStore


@pytest.fixture
def store(object_store: ObjectStore) -> JobStore:
    """A JobStore over a new bucket of the real test store."""
    bucket = f"control-{uuid.uuid4().hex[:10]}"
    object_store.ensure_bucket(bucket)
    return JobStore(object_store, bucket)
