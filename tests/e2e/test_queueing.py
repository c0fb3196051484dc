"""With one trainer slot, jobs wait QUEUED in creation order with their queue position."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer, demo_job


def test_jobs_beyond_capacity_wait_their_turn(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> None:
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"queue-{uuid.uuid4().hex[:8]}",
        extra_env={"TUNEFORGE_LOCAL_SLOTS": "1"},
    ).start()
    try:
        with server.client() as client:
            ids = [
                client.post("/v1/jobs", json=demo_job(f"queued-{n}", epochCount=1)).json()["jobId"]
                for n in range(3)
            ]
            server.wait_for(ids[0], {"VALIDATING", "RUNNING"}, timeout=60)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                second, third = (client.get(f"/v1/jobs/{i}").json() for i in ids[1:])
                if second["queuePosition"] == 1 and third["queuePosition"] == 2:
                    break
                time.sleep(0.25)
            assert (second["state"], second["queuePosition"]) == ("QUEUED", 1)
            assert (third["state"], third["queuePosition"]) == ("QUEUED", 2)

            finished = [server.wait_for(i, {"COMPLETED"}, timeout=180) for i in ids]
        started = [job["stateTimes"]["VALIDATING"] for job in finished]
        ended = [job["stateTimes"]["COMPLETED"] for job in finished]
        assert started == sorted(started), "jobs did not start in creation order"
        assert started[1] >= ended[0] and started[2] >= ended[1], "two trainers ran at once"
        assert all(job["queuePosition"] is None for job in finished)
    finally:
        server.stop()
        server.kill_trainers()
