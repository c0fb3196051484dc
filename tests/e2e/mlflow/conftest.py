"""A real MLflow tracking server (the `mlflow` package, test extra) on a free loopback
port, with its own SQLite store and artifact folder, and an API server allowed to send
jobs' metrics there."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.server.embedded_s3 import EmbeddedS3, free_port
from tests.servers import ApiServer

# A cold start of the MLflow server imports a large stack (SQLAlchemy, Flask, FastAPI,
# pandas, ...) and migrates its database: 1.5 minutes on an idle 2-core machine, over 5
# on a loaded one.
MLFLOW_START_SECONDS = 600


class MlflowServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.log_path = root / "mlflow.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        command = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            # One process: uvicorn's supervisor kills workers that start slowly.
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--default-artifact-root",
            str(self.root / "artifacts"),
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + MLFLOW_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"mlflow server not up after {MLFLOW_START_SECONDS}s: "
            f"{self.log_path.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET one of MLflow's REST endpoints."""
        response = httpx.get(f"{self.url}/api/2.0/mlflow/{path}", params=params, timeout=30)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def search_runs(self, experiment_id: str) -> list[dict[str, Any]]:
        response = httpx.post(
            f"{self.url}/api/2.0/mlflow/runs/search",
            json={"experiment_ids": [experiment_id]},
            timeout=30,
        )
        response.raise_for_status()
        return response.json().get("runs", [])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mlflow_api_server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """An API server whose jobs may log to MLflow on 127.0.0.1 (and nowhere else)."""
    server = ApiServer(
        s3_server,
        tmp_path_factory.mktemp("mlflow-api") / "home",
        state_bucket=f"state-{uuid.uuid4().hex[:12]}",
        extra_env={"TUNEFORGE_MLFLOW_ALLOWED_HOSTS": '["127.0.0.1"]'},
    )
    server.start()
    yield server
    server.stop()
    server.kill_trainers()
