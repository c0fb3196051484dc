"""One real API server with observability turned up (JSON logs at DEBUG, webhooks to a
receiver on loopback, secrets configured), and that receiver."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from service.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer

BEDROCK_ACCESS_KEY = "AKIAOBSERVABILITY01"
BEDROCK_SECRET = "bedrock-secret-must-not-be-logged-9731"
BEDROCK_BEARER_TOKEN = "bedrock-bearer-must-not-be-logged-5522"
WEBHOOK_SECRET = "webhook-secret-must-not-be-logged-4410"


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """A tiny HTTP server on loopback recording every POST; paths under /fail/ answer
    500 (a receiver that is down), others 204."""

    port: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    received: threading.Condition = field(default_factory=threading.Condition)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, path: str, count: int = 1, timeout: float = 60.0) -> list[Delivery]:
        with self.received:
            self.received.wait_for(
                lambda: len([d for d in self.deliveries if d.path == path]) >= count, timeout
            )
            return [d for d in self.deliveries if d.path == path]


@pytest.fixture(scope="module")
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with receiver.received:
                receiver.deliveries.append(Delivery(self.path, dict(self.headers), body))
                receiver.received.notify_all()
            self.send_response(500 if self.path.startswith("/fail/") else 204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet test output

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


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
