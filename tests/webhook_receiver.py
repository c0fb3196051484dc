"""A webhook receiver on loopback for tests: a tiny HTTP server recording every POST."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """Records every POST; paths under /fail/ answer 500 (a receiver that is down),
    others 204."""

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


@contextmanager
def receiving_webhooks() -> Iterator[WebhookReceiver]:
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
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
