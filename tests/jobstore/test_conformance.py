"""The start-up probe refuses a store that ignores conditional writes.

The store here is a real SeaweedFS (without credentials, so requests may be rewritten)
behind a small HTTP front that drops `If-None-Match` and `If-Match`: exactly what a
non-conforming S3-compatible store looks like from the outside.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from jobstore.conformance import check_conditional_writes
from jobstore.errors import StoreNotConformant
from jobstore.storage import ObjectStore
from service.server.embedded_s3 import EmbeddedS3, free_port

_DROPPED = {"if-none-match", "if-match"}


def _front(upstream_port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _DROPPED}
            connection = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            connection.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)


@pytest.fixture(scope="module")
def ignoring_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("anonymous-s3")
    upstream = EmbeddedS3(
        root / "data", port=free_port(), access_key_id=None, secret_access_key=None
    )
    upstream.start()
    front = _front(upstream.port)
    thread = threading.Thread(target=front.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{front.server_address[1]}"
    front.shutdown()
    upstream.stop()


def test_probe_passes_on_seaweedfs(object_store: ObjectStore) -> None:
    object_store.ensure_bucket("probe-ok")
    check_conditional_writes(object_store, "probe-ok")


def test_probe_refuses_a_store_that_ignores_if_none_match(ignoring_store: str) -> None:
    storage = ObjectStore(
        endpoint_url=ignoring_store,
        access_key_id="any",
        secret_access_key="any",
        region="us-east-1",
    )
    storage.ensure_bucket("probe-bad")
    with pytest.raises(StoreNotConformant, match="If-None-Match"):
        check_conditional_writes(storage, "probe-bad")


def test_service_refuses_to_start_on_such_a_store(ignoring_store: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.server.main"],
        env={
            "PATH": "/usr/bin:/bin",
            "TUNEFORGE_HOME": str(tmp_path),
            "TUNEFORGE_S3_ENDPOINT_URL": ignoring_store,
            "TUNEFORGE_S3_ACCESS_KEY_ID": "any",
            "TUNEFORGE_S3_SECRET_ACCESS_KEY": "any",
            "TUNEFORGE_REST_PORT": str(free_port()),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "cannot start" in result.stderr
    assert "16 parallel create-if-absent writes" in result.stderr
