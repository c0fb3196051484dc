"""The server's log lines: readable on a terminal, JSON through a pipe, same fields.

The real `python -m service.server.main`, its stderr once a pseudo-terminal (`pty`),
once a pipe, and once a terminal with TUNEFORGE_LOG_FORMAT=json. Each run answers one
request carrying a known request id, whose access line (`request`, with `face`,
`operation`, `status`, `duration_ms`, `request_id`, `pid`) is looked for in what the
server wrote to its stderr.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer

# A colour or cursor sequence of the console renderer.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# The fields of the access line besides the event, level, logger and time stamp.
_REQUEST_FIELDS = ("face", "operation", "status", "duration_ms", "request_id", "pid")


def _serve_once(
    s3: EmbeddedS3, home: Path, *, terminal: bool, env: dict[str, str] | None = None
) -> tuple[str, str]:
    """Start the server with stderr a terminal or a pipe, send one request with a
    request id, stop it; return (that request id, all it wrote to stderr)."""
    server = ApiServer(s3, home, state_bucket=f"logfmt-{uuid.uuid4().hex[:10]}", extra_env=env)
    home.mkdir(parents=True, exist_ok=True)
    request_id = f"log-format-{uuid.uuid4().hex[:8]}"
    written: list[bytes] = []
    if terminal:
        reader_fd, writer_fd = pty.openpty()
    else:
        reader_fd, writer_fd = os.pipe()

    def drain() -> None:
        while True:
            try:
                data = os.read(reader_fd, 65536)
            except OSError:  # EIO: a terminal whose every writer is gone
                return
            if not data:
                return
            written.append(data)

    with open(home / "stdout.txt", "wb") as stdout:  # the start-up banner, aside
        process = subprocess.Popen(
            [sys.executable, "-m", "service.server.main"],
            env=server.environment(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=writer_fd,
        )
    os.close(writer_fd)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, b"".join(written).decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the server was not ready in 60 s"
            try:
                if httpx.get(server.url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        answer = httpx.get(server.url + "/v1/jobs", headers={"X-Request-Id": request_id})
        assert answer.status_code == 200, answer.text
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(10)
        os.close(reader_fd)
    return request_id, b"".join(written).decode()


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text` as a JSON object (raises on one that is not)."""
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines and all(isinstance(line, dict) for line in lines)
    return lines


def _access_line(lines: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    mine = [line for line in lines if line.get("request_id") == request_id]
    assert len(mine) == 1, mine
    assert mine[0]["event"] == "request" and mine[0]["level"] == "info"
    return mine[0]


def test_console_lines_on_a_terminal_json_through_a_pipe_same_fields(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> None:
    # Through a pipe: JSON lines, every one, the access line with its fields.
    piped_id, piped = _serve_once(s3_server, tmp_path / "piped", terminal=False)
    assert "\x1b[" not in piped
    assert "color_message" not in piped  # uvicorn's coloured copy of its messages: dropped
    piped_line = _access_line(_json_lines(piped), piped_id)
    assert set(_REQUEST_FIELDS) <= set(piped_line), piped_line
    assert piped_line["status"] == 200 and piped_line["operation"] == "GET /v1/jobs"

    # On a terminal: readable lines (coloured), not one of them JSON.
    tty_id, on_terminal = _serve_once(s3_server, tmp_path / "tty", terminal=True)
    assert "\x1b[" in on_terminal, "no colour on a terminal"
    lines = [_ANSI.sub("", line) for line in on_terminal.splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert not line.lstrip().startswith("{"), f"a JSON line on a terminal: {line!r}"
    mine = [line for line in lines if f"request_id={tty_id}" in line]
    assert len(mine) == 1, lines
    # `<time> [info     ] request   key=value ...`: the level, the event, every field.
    console = mine[0]
    assert re.match(r"^\d{4}-\d\d-\d\dT[\d:.]+Z \[info\s*\] request\s", console), console
    for field in _REQUEST_FIELDS:
        assert re.search(rf"(^|\s){field}=\S", console), f"{field} missing: {console}"
    assert "status=200" in console
    # uvicorn's own lines (through the standard library's logging) read the same way.
    assert any(" [info     ] Application startup complete." in line for line in lines), lines
    assert not any("\x1b" in line or "color_message" in line for line in lines), lines


def test_json_forced_on_a_terminal(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> None:
    request_id, on_terminal = _serve_once(
        s3_server, tmp_path / "forced", terminal=True, env={"TUNEFORGE_LOG_FORMAT": "json"}
    )
    assert "\x1b[" not in on_terminal
    line = _access_line(_json_lines(on_terminal), request_id)
    assert set(_REQUEST_FIELDS) <= set(line), line
