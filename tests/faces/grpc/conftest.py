"""gRPC fixtures: channels and clients to the real API server's gRPC port."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tuneforge import Client
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer

# For tests that follow progress: the trainer reports every 0.25 s and a watch looks
# every 0.1 s, so even a short demo job shows several progress updates.
LIVELY = {"TUNEFORGE_TRAINER_HEARTBEAT_SECONDS": "0.25", "TUNEFORGE_GRPC_WATCH_POLL_SECONDS": "0.1"}


@pytest.fixture
def lively_server(s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path) -> Iterator[ApiServer]:
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


@pytest.fixture
def channel(api_server: ApiServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(api_server.grpc_target) as opened:
        yield opened


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.FineTuningServiceStub:
    """The generated stub, bare: what any gRPC user starts from."""
    return pb_grpc.FineTuningServiceStub(channel)


@pytest.fixture
def client(api_server: ApiServer) -> Iterator[Client]:
    """The hand-written client over the generated stubs."""
    with Client(api_server.grpc_target, timeout=30) as opened:
        yield opened
