"""Run the real API server (`python -m service.server.main`) as a subprocess on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from service.server.embedded_s3 import EmbeddedS3, free_port

TERMINAL = {"COMPLETED", "FAILED", "STOPPED"}


class ApiServer:
    def __init__(
        self,
        s3: EmbeddedS3,
        home: Path,
        *,
        state_bucket: str = "tuneforge",
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
        admin_key: str | None = None,
        embedded_store: bool = False,
    ) -> None:
        self.s3 = s3
        # Its own embedded store (started by the server, in its home, on a free port), as
        # `make run` has, rather than `s3`: what it does only on its own store is tested so.
        self.embedded_store_port = free_port() if embedded_store else None
        # With an admin key the server requires API keys on every face (service/auth/);
        # `create_api_key` makes them, and `client(api_key)` / `wait_for(api_key=)` use them.
        self.admin_key = admin_key
        self.home = home
        self.port = port or free_port()
        self.state_bucket = state_bucket
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = home / f"api-{self.port}.log"
        # The gRPC face of the same process (TUNEFORGE_GRPC_PORT).
        self.grpc_port = free_port()
        while self.grpc_port == self.port:
            self.grpc_port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEFORGE_", "AWS_"))}
        if self.embedded_store_port is not None:
            env["TUNEFORGE_EMBEDDED_S3_PORT"] = str(self.embedded_store_port)
        else:
            env["TUNEFORGE_S3_ENDPOINT_URL"] = self.s3.endpoint_url
            env["TUNEFORGE_S3_ACCESS_KEY_ID"] = str(self.s3.access_key_id)
            env["TUNEFORGE_S3_SECRET_ACCESS_KEY"] = str(self.s3.secret_access_key)
        env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "TUNEFORGE_HOME": str(self.home),
                "TUNEFORGE_REST_PORT": str(self.port),
                "TUNEFORGE_STATE_BUCKET": self.state_bucket,
                "TUNEFORGE_RECONCILE_INTERVAL_SECONDS": "0.5",
                "TUNEFORGE_TRAINER_HEARTBEAT_SECONDS": "1",
                "TUNEFORGE_HEARTBEAT_TIMEOUT_SECONDS": "30",
                # A replica killed between a launch's claim and recording its trainer's
                # pid leaves an attempt known only by its heartbeats; a cold start on a
                # busy 2-core machine can take over 30 s before its first one.
                "TUNEFORGE_TRAINER_START_TIMEOUT_SECONDS": "120",
                "TUNEFORGE_STOP_GRACE_SECONDS": "10",
                "TUNEFORGE_KILL_GRACE_SECONDS": "5",
                # Tests start several short jobs at once; queueing has its own test.
                "TUNEFORGE_LOCAL_SLOTS": "4",
                # Trainers start cold unless a test asks for warm spares (the service's
                # default, service/control/launch/warm_pool.py) with TEST_WARM_TRAINERS:
                # tests/e2e/faults and the pool's own tests do. On a 2-core machine a spare
                # importing beside every test server costs more than it saves.
                "TUNEFORGE_WARM_TRAINERS": os.environ.get("TEST_WARM_TRAINERS", "0"),
            }
        )
        env["TUNEFORGE_GRPC_PORT"] = str(self.grpc_port)
        if self.admin_key is not None:
            env["TUNEFORGE_ADMIN_KEY"] = self.admin_key
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> ApiServer:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.server.main"],
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"API server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        # Not ready in time: stopped here (its embedded store with it), since the caller's
        # clean-up never runs for a server whose start raised.
        self.stop()
        raise RuntimeError(f"API server not ready: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill_trainers(self) -> None:
        """SIGKILL every trainer working under this server's home, and its spare
        trainers (test clean-up).

        With an external store, trainers outlive the API server by design; a test that
        fails half-way must not leave them running into the next test.
        """
        places = (str((self.home / "work").resolve()), str((self.home / "spares").resolve()))
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd.startswith(places):
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # -- helpers for tests ------------------------------------------------------

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def client(self, api_key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        return httpx.Client(base_url=self.url, timeout=30, headers=headers)

    def create_api_key(self, tenant: str) -> str:
        """A new API key for `tenant`, through the admin endpoint (needs `admin_key`)."""
        assert self.admin_key is not None, "start the server with admin_key= to make keys"
        with self.client(self.admin_key) as admin:
            response = admin.post("/v1/admin/keys", json={"tenant": tenant})
        assert response.status_code == 201, response.text
        key: str = response.json()["key"]
        return key

    def wait_for(
        self,
        job_id: str,
        states: set[str],
        timeout: float = 120.0,
        *,
        api_key: str | None = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        with self.client(api_key) as client:
            while time.monotonic() < deadline:
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["state"] in states:
                    return job
                if job["state"] in TERMINAL:
                    raise AssertionError(f"job ended {job['state']}, wanted {states}: {job}")
                time.sleep(0.25)
        raise AssertionError(f"job {job_id} not in {states} after {timeout}s: {job}")


def demo_job(name: str = "demo", **hyper_parameters: Any) -> dict[str, Any]:
    """A create body on the demo assets, fast enough for tests."""
    hyper = {"epochCount": 3, "batchSize": 8, "learningRate": 0.003, "seed": 7}
    hyper.update(hyper_parameters)
    return {
        "jobName": name,
        "baseModelIdentifier": "s3://demo/models/tiny-llama/",
        "trainingDataConfig": {"s3Uri": "s3://demo/datasets/sample-train.jsonl"},
        "validationDataConfig": {"s3Uri": "s3://demo/datasets/sample-validation.jsonl"},
        "outputDataConfig": {"s3Uri": "s3://demo/output/"},
        "hyperParameters": hyper,
    }


def waiting_trainer(directory: Path) -> Path:
    """A trainer command (TUNEFORGE_TRAINER_PYTHON) that only sleeps: a job launched with
    it stays active, holding its slot, with no model loaded."""
    script = directory / "trainer-that-waits"
    script.write_text("#!/bin/sh\nexec sleep 100000\n")
    script.chmod(0o755)
    return script


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
