"""The local launcher runs each trainer under resource limits from settings, with only
the environment it needs (nothing of the API server's own)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer, demo_job

MEMORY = 32 * 1024**3
PROCESSES = 20_000
OPEN_FILES = 2048
ADMIN_KEY = "trainer-limits-admin-key-0123456789"


def _trainer_pids(server: ApiServer) -> list[int]:
    work = str((server.home / "work").resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "cwd").startswith(work):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _limits(pid: int) -> dict[str, tuple[str, str]]:
    limits = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        limits[name] = (soft, hard)
    return limits


def test_trainer_runs_under_resource_limits_without_server_secrets(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> None:
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"limits-{uuid.uuid4().hex[:12]}",
        admin_key=ADMIN_KEY,
        extra_env={
            "TUNEFORGE_TRAINER_MAX_MEMORY_BYTES": str(MEMORY),
            "TUNEFORGE_TRAINER_MAX_PROCESSES": str(PROCESSES),
            "TUNEFORGE_TRAINER_MAX_OPEN_FILES": str(OPEN_FILES),
            "A_SECRET_OF_THE_SERVER": "must-not-reach-the-trainer",
            "TUNEFORGE_ALLOWED_BUCKETS": '["demo"]',  # the demo job's data, model and output
            "TUNEFORGE_TRAINER_SHARED_CREDENTIALS": "true",
        },
    )
    server.start()
    try:
        key = server.create_api_key("limits")
        with server.client(key) as rest:
            job_id = rest.post("/v1/jobs", json=demo_job("limited", epochCount=1)).json()["jobId"]
        deadline = time.monotonic() + 120
        pids: list[int] = []
        while not pids and time.monotonic() < deadline:
            pids = _trainer_pids(server)
            time.sleep(0.1)
        assert pids, "no trainer process appeared"
        limits = _limits(pids[0])
        assert limits["Max address space"] == (str(MEMORY), str(MEMORY))
        assert limits["Max processes"] == (str(PROCESSES), str(PROCESSES))
        assert limits["Max open files"] == (str(OPEN_FILES), str(OPEN_FILES))
        environment = Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0")
        names = {item.split(b"=", 1)[0].decode() for item in environment if item}
        assert "A_SECRET_OF_THE_SERVER" not in names
        assert not any(name.startswith("TUNEFORGE_ADMIN") for name in names)
        assert ADMIN_KEY.encode() not in b"\0".join(environment)
        # The limits leave room to train: the job completes.
        job = server.wait_for(job_id, {"COMPLETED"}, timeout=400, api_key=key)
        assert job["state"] == "COMPLETED"
    finally:
        server.stop()
        server.kill_trainers()
