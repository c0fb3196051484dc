"""One real API server with observability turned up (JSON logs at DEBUG, webhooks to a
receiver on loopback, secrets configured), and that receiver."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer
from tests.webhook_receiver import WebhookReceiver, receiving_webhooks

BEDROCK_ACCESS_KEY = "AKIAOBSERVABILITY01"
BEDROCK_SECRET = "bedrock-secret-must-not-be-logged-9731"
BEDROCK_BEARER_TOKEN = "bedrock-bearer-must-not-be-logged-5522"
WEBHOOK_SECRET = "webhook-secret-must-not-be-logged-4410"


@pytest.fixture(scope="module")
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with receiving_webhooks() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def observed_server(
    s3_server: EmbeddedS3,
    demo_assets: None,
    tmp_path_factory: pytest.TempPathFactory,
    webhook_receiver: WebhookReceiver,
) -> Iterator[ApiServer]:
    server = ApiServer(
        s3_server,
        tmp_path_factory.mktemp("observed"),
        state_bucket=f"observed-{uuid.uuid4().hex[:10]}",
        extra_env={
            "TUNEFORGE_LOG_FORMAT": "json",
            "TUNEFORGE_LOG_LEVEL": "DEBUG",
            "TUNEFORGE_GRPC_WATCH_POLL_SECONDS": "0.2",
            "TUNEFORGE_BEDROCK_ACCESS_KEYS": json.dumps({BEDROCK_ACCESS_KEY: BEDROCK_SECRET}),
            "TUNEFORGE_BEDROCK_BEARER_TOKENS": json.dumps([BEDROCK_BEARER_TOKEN]),
            "TUNEFORGE_WEBHOOK_ALLOWED_HOSTS": json.dumps(["127.0.0.1"]),
            "TUNEFORGE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "TUNEFORGE_WEBHOOK_MAX_ATTEMPTS": "3",
            "TUNEFORGE_WEBHOOK_RETRY_SECONDS": "0.2",
        },
    )
    server.start()
    yield server
    server.stop()
    server.kill_trainers()
