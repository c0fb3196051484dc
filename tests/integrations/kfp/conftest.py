"""The Kubeflow Pipelines venv, and an API server that requires API keys."""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer

ROOT = Path(__file__).resolve().parents[3]
KFP_PYTHON = ROOT / ".venv-kfp" / "bin" / "python"
DRIVER = Path(__file__).with_name("driver.py")


@pytest.fixture(scope="session")
def kfp_python() -> Path:
    """The kfp venv's Python. Missing is a failure, not a skip: `make test` builds it."""
    if not KFP_PYTHON.is_file():
        pytest.fail(
            f"{KFP_PYTHON} is missing: run `make .venv-kfp/.installed` (the kfp SDK and "
            "clients/kfp, from requirements/kfp.txt)"
        )
    return KFP_PYTHON


@dataclass
class KeyedServer:
    server: ApiServer
    api_key: str


@pytest.fixture
def keyed_server(s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path) -> Iterator[KeyedServer]:
    """A real API server with authentication on, and an API key of its tenant `pipelines`:
    the component must send the key it is given, as it would to a production server."""
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"kfp-{uuid.uuid4().hex[:12]}",
        admin_key=secrets.token_hex(16),
        extra_env={
            # One tenant, one store: its trainers may use the service's store credentials,
            # and it may use the demo bucket (the job's model, data and output).
            "TUNEFORGE_TRAINER_SHARED_CREDENTIALS": "true",
            "TUNEFORGE_ALLOWED_BUCKETS": '["demo"]',
            # Progress reported four times a second, so the step's log sees the job mid-way.
            "TUNEFORGE_TRAINER_HEARTBEAT_SECONDS": "0.25",
        },
    )
    server.start()
    try:
        yield KeyedServer(server, server.create_api_key("pipelines"))
    finally:
        server.stop()
        server.kill_trainers()


@dataclass
class DriverRun:
    returncode: int
    output: str
    work_dir: Path


def run_driver(
    python: Path, arguments_path: Path, work_dir: Path, api_key: str, timeout: float = 300
) -> DriverRun:
    """driver.py in the kfp venv; the API key only in its environment, as on a cluster."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TUNEFORGE_", "AWS_", "PIP_", "VIRTUAL_ENV", "PYTHON"))
    }
    environment.update(
        {
            "TUNEFORGE_API_KEY": api_key,
            # The step's own `pip install kfp==<release> --no-deps` must find kfp already
            # installed: with no index, any download it tried would fail the step.
            "PIP_NO_INDEX": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
    )
    finished = subprocess.run(
        [str(python), str(DRIVER), str(arguments_path), str(work_dir)],
        cwd=work_dir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = finished.stdout + finished.stderr
    # Kept beside the pipeline's outputs, for whoever looks into a failed test.
    (work_dir / "driver.log").write_text(output)
    return DriverRun(finished.returncode, output, work_dir)
