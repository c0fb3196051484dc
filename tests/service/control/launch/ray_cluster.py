"""A real single-node Ray cluster on 127.0.0.1 for the Ray launcher's tests, and an API
server that submits its trainers there.

The cluster is started with `ray start --head` (bounded wait) once per test module and
torn down with `ray stop --force` after it. The Ray node holds the S3 credentials in its
own environment (the launcher does not send them by default), as a real cluster's nodes
would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.control.launch.ray import submission_id
from service.server.embedded_s3 import EmbeddedS3, free_port
from tests.conftest import ACCESS_KEY, SECRET_KEY
from tests.servers import ApiServer

RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


@pytest.fixture(scope="module")
def ray_cluster(s3_server: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`ray start --head` on loopback; yields the dashboard (Jobs API) address."""
    root = tmp_path_factory.mktemp("ray")
    scratch = root / "scratch"
    scratch.mkdir()
    gcs, dashboard, client_server, agent = _free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEFORGE_", "AWS_"))}
    env.update(
        {
            # Ray otherwise swaps 127.0.0.1 for the host's outward address.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            # What the node gives its jobs: the store's credentials, a scratch TMPDIR.
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "TMPDIR": str(scratch),
            "HF_HUB_OFFLINE": "1",
        }
    )
    command = [
        RAY, "start", "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client_server}",
        f"--dashboard-agent-listen-port={agent}",
        "--num-cpus=2",
        # Logical GPUs only (Ray schedules them; the CPU-only torch never sees one), so
        # a job asking for GPUs is placed and its ranks train on CPUs with gloo.
        "--num-gpus=2",
        "--include-dashboard=true",
        "--disable-usage-stats",
        f"--temp-dir={root / 't'}",
    ]  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    try:
        for _ in range(2):  # on a crowded machine Ray's own start-up wait can run out
            started = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=240, check=False
            )
            if started.returncode == 0:
                break
            subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        if started.returncode != 0:
            raise RuntimeError(
                f"ray start failed: {started.stdout[-2000:]}{started.stderr[-2000:]}"
            )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{address}/api/version", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Ray dashboard did not answer within 120 s")
            time.sleep(1)
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def ray_api_server_with(
    ray_cluster: str, s3_server: EmbeddedS3, home: Path, **settings: str
) -> ApiServer:
    """An API server (not started) whose launcher is the Ray cluster; `settings` are
    more TUNEFORGE_ variables."""
    return ApiServer(
        s3_server,
        home,
        state_bucket=f"ray-{uuid.uuid4().hex[:12]}",
        extra_env={
            "TUNEFORGE_LAUNCHER": "ray",
            "TUNEFORGE_RAY_ADDRESS": ray_cluster,
            "TUNEFORGE_RAY_TRAINER_PYTHON": sys.executable,
            # Ray on two shared cores starts a job's runtime slowly.
            "TUNEFORGE_HEARTBEAT_TIMEOUT_SECONDS": "120",
            # One Ray node here: STRICT_SPREAD (the default) could never place a group
            # of two workers; SPREAD packs them onto it.
            "TUNEFORGE_RAY_TRAIN_PLACEMENT": "SPREAD",
        }
        | settings,
    )


@pytest.fixture
def ray_api_server(
    ray_cluster: str, s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> Iterator[ApiServer]:
    server = ray_api_server_with(ray_cluster, s3_server, tmp_path / "home")
    server.start()
    yield server
    server.stop()


def ray_job_status(address: str, job_id: str, attempt: int) -> dict[str, Any]:
    """Ray's final word on an attempt (the trainer writes the job's state before it
    exits, so Ray may still say RUNNING for a moment)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + 120
    while True:
        info = client.get_job_info(submission_id(job_id, attempt))
        if info.status.is_terminal() or time.monotonic() > deadline:
            return {"status": str(info.status), "driver_exit_code": info.driver_exit_code}
        time.sleep(1)


def trainer_pids(job_id: str) -> list[int]:
    """Processes whose command line is `... -m trainer --job-id <job_id>`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"trainer" in argv and b"--job-id" in argv and job_id.encode() in argv:
            found.append(int(entry.name))
    return found
