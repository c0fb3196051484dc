"""Client fixtures."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.server.embedded_s3 import EmbeddedS3
from tests.faces.grpc.conftest import LIVELY
from tests.servers import ApiServer


@pytest.fixture
def lively_server(s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path) -> Iterator[ApiServer]:
    """A server whose trainers report progress often (see tests/faces/grpc/conftest.py)."""
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"lively-{uuid.uuid4().hex[:12]}",
        extra_env=LIVELY,
    )
    server.start()
    yield server
    server.stop()
    server.kill_trainers()
