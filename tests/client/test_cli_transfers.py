"""`tuneforge data upload`, `tuneforge models download` and `tuneforge data validate`,
run as subprocesses against the real embedded store (and a real API server): interrupted
transfers resume, sending only what the store (or the local directory) lacks."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from service.server.embedded_s3 import EmbeddedS3
from tests.conftest import ACCESS_KEY, SECRET_KEY
from tests.servers import ApiServer, demo_job
from tests.tcp_proxy import TcpProxy

SCRIPT = Path(sys.executable).parent / "tuneforge"
MIB = 1024 * 1024


class CountingProxy(TcpProxy):
    """A TcpProxy that also counts what clients send (`bytes_to_server`) and, while
    `bytes_per_second` is set, forwards it no faster: slow enough to kill an upload
    between two parts."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.bytes_to_server = 0
        self.bytes_per_second: float | None = None

    def _pipe(self, source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        if downstream:
            super()._pipe(source, sink, downstream)
            return
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
                with self._lock:
                    self.bytes_to_server += len(chunk)
                rate = self.bytes_per_second
                if rate:
                    time.sleep(len(chunk) / rate)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()


@pytest.fixture
def proxy(s3_server: EmbeddedS3) -> Iterator[CountingProxy]:
    started = CountingProxy(s3_server.port)
    started.start()
    yield started
    started.stop()


@pytest.fixture
def store(s3_server: EmbeddedS3) -> Any:
    """A plain boto3 client on the store itself (not through the proxy)."""
    return boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def _environment(endpoint_url: str, cache: Path, **changes: str) -> dict[str, str]:
    """The CLI's environment: the store's credentials as the AWS CLI takes them."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEFORGE_", "AWS_"))}
    environment.update(
        {
            "AWS_ENDPOINT_URL": endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(cache / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(cache / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "XDG_CACHE_HOME": str(cache),
        }
    )
    environment.update(changes)
    return environment


def _command(*arguments: str) -> list[str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "tuneforge"]
    return [*command, *arguments]


def _tuneforge(
    *arguments: str, environment: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(*arguments), capture_output=True, text=True, env=environment, timeout=timeout
    )


def _bucket(store: Any) -> str:
    name = f"transfers-{uuid.uuid4().hex[:10]}"
    store.create_bucket(Bucket=name)
    return name


def _uploads(store: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    found = store.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    return [u for u in found if u["Key"] == key]


def test_an_interrupted_upload_resumes_sending_only_the_missing_parts(
    s3_server: EmbeddedS3, proxy: CountingProxy, store: Any, tmp_path: Path
) -> None:
    bucket = _bucket(store)
    source = tmp_path / "big.bin"
    content = os.urandom(13 * MIB)  # parts of 5, 5 and 3 MiB
    source.write_bytes(content)
    key = "datasets/big.bin"
    cache = tmp_path / "cache"
    environment = _environment(proxy.endpoint_url, cache)
    arguments = ("data", "upload", str(source), f"s3://{bucket}/{key}", "--part-size", "5")

    # 1. Slowed to 4 MiB/s, killed once the store holds the first part.
    proxy.bytes_per_second = 4 * MIB
    first = subprocess.Popen(
        _command(*arguments), env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    held: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and first.poll() is None:
            uploads = _uploads(store, bucket, key)
            if uploads:
                held = store.list_parts(
                    Bucket=bucket, Key=key, UploadId=uploads[0]["UploadId"]
                ).get("Parts", [])
                if held:
                    break
            time.sleep(0.02)
        assert first.poll() is None, "the upload ended before it could be interrupted"
        assert held, "no part reached the store in time"
        first.send_signal(signal.SIGKILL)
    finally:
        if first.poll() is None:
            first.kill()
        first.wait(30)
    proxy.bytes_per_second = None

    # Nothing half-written: no object yet, one open upload holding one 5 MiB part, and
    # the state file that names it.
    assert "Contents" not in store.list_objects_v2(Bucket=bucket, Prefix=key)
    (upload,) = _uploads(store, bucket, key)
    parts = store.list_parts(Bucket=bucket, Key=key, UploadId=upload["UploadId"])["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 5 * MIB)]
    (state_file,) = (cache / "tuneforge" / "uploads").glob("*.json")
    assert json.loads(state_file.read_text())["uploadId"] == upload["UploadId"]

    # 2. The rerun sends parts 2 and 3 only (8 MiB, plus the requests' headers).
    sent_before = proxy.bytes_to_server
    resumed = _tuneforge(*arguments, environment=environment)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout == (
        f"uploaded {source} to s3://{bucket}/{key} (13.0 MiB, 3 parts: 2 sent, "
        "1 already in the store)\n"
    )
    assert resumed.stderr == ""  # not a terminal: no progress bar
    sent = proxy.bytes_to_server - sent_before
    assert 8 * MIB <= sent < 9 * MIB, sent
    assert store.get_object(Bucket=bucket, Key=key)["Body"].read() == content
    assert _uploads(store, bucket, key) == []
    assert not state_file.exists()

    # A file under one part is one PUT; a key ending in '/' gets the file's name.
    small = tmp_path / "small.jsonl"
    small.write_bytes(b'{"prompt": "a", "completion": "b"}\n')
    put = _tuneforge(
        "data", "upload", str(small), f"s3://{bucket}/datasets/", "--output", "json",
        environment=environment,
    )  # fmt: skip
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout) == {
        "s3Uri": f"s3://{bucket}/datasets/small.jsonl",
        "size": small.stat().st_size,
        "parts": 0,
        "partsSent": 0,
        "partsReused": 0,
    }
    got = store.get_object(Bucket=bucket, Key="datasets/small.jsonl")["Body"].read()
    assert got == small.read_bytes()

    # On a terminal: a progress bar on stderr, redrawn in place; stdout keeps its line.
    leader, follower = pty.openpty()
    drawn = subprocess.run(
        _command("data", "upload", str(source), f"s3://{bucket}/again.bin", "--part-size", "5"),
        stdout=subprocess.PIPE,
        stderr=follower,
        env=environment,
        timeout=120,
    )
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: nothing more, the other end is closed
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    assert drawn.returncode == 0 and b"3 parts: 3 sent" in drawn.stdout
    assert b"\r\x1b[K" in screen and b"[########################] 100%" in screen, screen


def test_upload_errors_are_one_line_with_the_cli_exit_codes(
    proxy: CountingProxy, store: Any, tmp_path: Path
) -> None:
    bucket = _bucket(store)
    environment = _environment(proxy.endpoint_url, tmp_path / "cache")
    source = tmp_path / "data.jsonl"
    source.write_text('{"prompt": "a", "completion": "b"}\n')

    missing = _tuneforge(
        "data", "upload", str(tmp_path / "nope.jsonl"), f"s3://{bucket}/x", environment=environment
    )
    assert missing.returncode == 2
    assert missing.stderr == f"tuneforge: no such file: {tmp_path / 'nope.jsonl'}\n"

    bad_uri = _tuneforge("data", "upload", str(source), "/tmp/x", environment=environment)
    assert bad_uri.returncode == 2
    assert bad_uri.stderr == "tuneforge: '/tmp/x' is not an s3:// URI (want s3://bucket/key)\n"

    wrong_secret = _environment(
        proxy.endpoint_url, tmp_path / "cache", AWS_SECRET_ACCESS_KEY="not-the-secret"
    )
    refused = _tuneforge(
        "data", "upload", str(source), f"s3://{bucket}/x", environment=wrong_secret
    )
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith(f"tuneforge: uploading to s3://{bucket}/x: ")
    assert refused.stderr.count("\n") == 1
    assert "Contents" not in store.list_objects_v2(Bucket=bucket)

    no_credentials = {
        k: v
        for k, v in environment.items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    anonymous = _tuneforge(
        "data", "upload", str(source), f"s3://{bucket}/x", environment=no_credentials
    )
    assert anonymous.returncode == 2
    assert "no S3 credentials" in anonymous.stderr and anonymous.stderr.count("\n") == 1


def test_models_download_resumes_and_refuses_a_job_without_a_model(
    api_server: ApiServer, proxy: CountingProxy, store: Any, tmp_path: Path
) -> None:
    environment = _environment(
        proxy.endpoint_url, tmp_path / "cache", TUNEFORGE_ENDPOINT=api_server.grpc_target
    )
    with api_server.client() as rest:
        job_id = rest.post("/v1/jobs", json=demo_job("cli-download", epochCount=1)).json()["jobId"]

    # Not COMPLETED yet: a clear error, exit 1, nothing written.
    target = tmp_path / "model"
    early = _tuneforge("models", "download", job_id, str(target), environment=environment)
    assert early.returncode == 1, early.stdout + early.stderr
    assert early.stderr.startswith(f"tuneforge: job {job_id} is ")
    assert "COMPLETED" in early.stderr and early.stderr.count("\n") == 1
    assert not target.exists()

    job = api_server.wait_for(job_id, {"COMPLETED"}, 300)
    model_uri = job["output"]["modelS3Uri"]
    bucket, _, prefix = model_uri.removeprefix("s3://").partition("/")
    listed = store.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    objects = {
        item["Key"][len(prefix) :]: store.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        for item in listed
    }
    assert "config.json" in objects and any(n.endswith(".safetensors") for n in objects)
    assert len(objects) >= 3, sorted(objects)

    def download() -> dict[str, Any]:
        result = _tuneforge(
            "--rest", api_server.url, "models", "download", job_id, str(target), "--output",
            "json", environment=environment,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stderr == ""
        answer: dict[str, Any] = json.loads(result.stdout)
        local = {
            str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()
        }
        assert local == objects  # every file, byte for byte; no .part left behind
        return answer

    first = download()
    assert first["s3Uri"] == model_uri and first["files"] == len(objects)
    assert first["fetched"] == len(objects) and first["bytesReceived"] == first["size"]

    # Damage the copy: the weights cut in half, the config changed at the same size,
    # the tokenizer gone.
    weights = max((n for n in objects if n.endswith(".safetensors")), key=lambda n: len(objects[n]))
    with open(target / weights, "r+b") as handle:
        handle.truncate(len(objects[weights]) // 2)
    config = bytearray(objects["config.json"])
    config[0:1] = b"[" if config[0:1] != b"[" else b"{"
    (target / "config.json").write_bytes(bytes(config))
    gone = next(n for n in sorted(objects) if n not in (weights, "config.json"))
    (target / gone).unlink()

    received_before = proxy.bytes_to_clients
    second = download()
    assert second["resumed"] == 1 and second["fetched"] == 2
    assert second["alreadyComplete"] == len(objects) - 3
    missing = len(objects[weights]) - len(objects[weights]) // 2
    expected = missing + len(objects["config.json"]) + len(objects[gone])
    assert second["bytesReceived"] == expected
    # What crossed the wire: those bytes and the requests' answers, not the weights again.
    assert proxy.bytes_to_clients - received_before < expected + 256 * 1024

    third = download()
    assert third["alreadyComplete"] == len(objects) and third["bytesReceived"] == 0


def test_data_validate_dry_runs_a_local_file(
    api_server: ApiServer, store: Any, s3_server: EmbeddedS3, tmp_path: Path
) -> None:
    environment = _environment(
        s3_server.endpoint_url, tmp_path / "cache", TUNEFORGE_ENDPOINT=api_server.grpc_target
    )
    via = f"scratch-{uuid.uuid4().hex[:8]}/"
    common = ("--type", "FINE_TUNING", "--base-model", "s3://demo/models/tiny-llama/")

    bad = tmp_path / "bad.jsonl"
    lines = ['{"prompt": "1 + 1?", "completion": " 2"}', "{not json", '{"prompt": "x"}']
    bad.write_text("\n".join(lines) + "\n")
    checked = _tuneforge(
        "data", "validate", str(bad), *common, "--via", f"s3://demo/{via}",
        environment=environment, timeout=240,
    )  # fmt: skip
    assert checked.returncode == 5, checked.stdout + checked.stderr
    assert checked.stdout.startswith("invalid: 2 problem(s)\n"), checked.stdout
    assert f"  error: {bad}:2: " in checked.stdout
    assert f"  error: {bad}:3: " in checked.stdout
    assert "Contents" not in store.list_objects_v2(Bucket="demo", Prefix=via)

    good = tmp_path / "good.jsonl"
    sample = store.get_object(Bucket="demo", Key="datasets/sample-train.jsonl")["Body"].read()
    good.write_bytes(sample)
    checked = _tuneforge(
        "data", "validate", str(good), *common, "--via", f"s3://demo/{via}",
        "--max-sequence-length", "128", "--keep", "--output", "json",
        environment=environment, timeout=240,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["valid"] is True and not report.get("errors")
    assert report["training"]["s3Uri"] == str(good)
    assert int(report["training"]["records"]) == len([r for r in sample.splitlines() if r.strip()])
    assert int(report["training"]["tokens"]) > 0 and int(report["totalSteps"]) > 0
    # --keep: the uploaded copy stays, where stderr says.
    kept = checked.stderr.strip().rsplit(" ", 1)[-1]
    assert kept.startswith(f"s3://demo/{via}tuneforge-validate/"), checked.stderr
    key = kept.removeprefix("s3://demo/")
    assert store.get_object(Bucket="demo", Key=key)["Body"].read() == sample
    store.delete_object(Bucket="demo", Key=key)

    missing = _tuneforge(
        "data", "validate", str(tmp_path / "nope.jsonl"), *common, "--via", f"s3://demo/{via}",
        environment=environment,
    )  # fmt: skip
    assert missing.returncode == 2 and missing.stderr.startswith("tuneforge: no such file: ")
