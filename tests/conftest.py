"""Shared fixtures: a real SeaweedFS S3 server on a free loopback port."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.embedded_s3 import EmbeddedS3, free_port
from service.storage import ObjectStore
from tests.servers import ApiServer

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-0123456789"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    root = tmp_path_factory.mktemp("seaweedfs")
    server = EmbeddedS3(
        root / "data",
        port=free_port(),
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        log_path=root / "weed.log",
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def object_store(s3_server: EmbeddedS3) -> ObjectStore:
    return ObjectStore(
        endpoint_url=s3_server.endpoint_url,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        region="us-east-1",
    )


@pytest.fixture
def s3_environment(s3_server: EmbeddedS3) -> dict[str, str]:
    """The AWS_* variables a trainer subprocess needs to reach the test store."""
    return {
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def demo_assets(object_store: ObjectStore) -> None:
    """The demo bucket, seeded the way `make run` seeds the embedded store."""
    from service.demo import seed_demo

    seed_demo(object_store)


@pytest.fixture
def api_server(s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path) -> Iterator[ApiServer]:
    """A real API server over the test store, with its own state bucket."""
    server = ApiServer(s3_server, tmp_path / "home", state_bucket=f"state-{uuid.uuid4().hex[:12]}")
    server.start()
    yield server
    server.stop()
    server.kill_trainers()
