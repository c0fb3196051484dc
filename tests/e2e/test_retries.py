"""A trainer that dies is relaunched within its retry budget; past it, the job fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer, demo_job

TUNEFORGE = [sys.executable, "-m", "tuneforge"]


def _cli_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}


def _kill_running_trainer(server: ApiServer, store: JobStore, job_id: str) -> int:
    server.wait_for(job_id, {"RUNNING"}, timeout=120)
    status, _ = store.get_status(job_id)
    assert status.launch is not None and status.launch.pid is not None
    os.kill(status.launch.pid, signal.SIGKILL)
    return status.launch.pid


def test_killed_trainer_is_relaunched_and_the_job_completes(
    api_server: ApiServer, object_store: ObjectStore
) -> None:
    store = JobStore(object_store, api_server.state_bucket)
    with api_server.client() as client:
        job_id = client.post("/v1/jobs", json=demo_job("crash-once", epochCount=2)).json()["jobId"]
    # `tuneforge jobs logs --follow` from the start: it moves on to the relaunched attempt.
    follow = ["--endpoint", api_server.grpc_target, "jobs", "logs", job_id, "--follow"]
    follower = subprocess.Popen(
        [*TUNEFORGE, *follow, "--interval", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_cli_environment(),
    )
    try:
        _kill_running_trainer(api_server, store, job_id)
        job = api_server.wait_for(job_id, {"COMPLETED"}, timeout=240)
        followed, errors = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:  # a failure above: do not leave it behind
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, errors
    first, second = (f"job {job_id} attempt {n}:".encode() for n in (1, 2))
    assert first in followed and second in followed, followed[-2000:]
    assert followed.index(first) < followed.index(second)
    assert b"trainer exits with OK" in followed.rstrip().splitlines()[-1], followed[-500:]
    assert job["attempt"] == 2
    status, _ = store.get_status(job_id)
    assert status.retries == {"crash": 1}
    retries = [e for e in store.list_events(job_id) if e.type == "RETRY"]
    assert len(retries) == 1 and "SIGKILL" in retries[0].message
    assert len([e for e in store.list_events(job_id) if e.type == "LAUNCHED"]) == 2
    _assert_each_attempt_has_its_log(api_server, job_id)


def _assert_each_attempt_has_its_log(server: ApiServer, job_id: str) -> None:
    """The killed attempt's log survives its relaunch: REST, gRPC and the CLI read the
    current attempt's log by default and the older one by its number."""
    with server.client() as client:
        current = client.get(f"/v1/jobs/{job_id}/logs")
        first = client.get(f"/v1/jobs/{job_id}/logs", params={"attempt": 1})
        beyond = client.get(f"/v1/jobs/{job_id}/logs", params={"attempt": 3})
    assert current.headers["x-log-attempt"] == "2" and first.headers["x-log-attempt"] == "1"
    assert f"job {job_id} attempt 2:" in current.text and "trainer exits with OK" in current.text
    assert f"job {job_id} attempt 1:" in first.text and "attempt 2:" not in first.text
    assert beyond.status_code == 400 and beyond.json()["error"]["field"] == "attempt"

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.FineTuningServiceStub(channel)
        older = stub.ReadJobLog(pb.ReadJobLogRequest(job_id=job_id, attempt=1), timeout=30)
        newest = stub.ReadJobLog(pb.ReadJobLogRequest(job_id=job_id), timeout=30)
    assert older.attempt == 1 and older.data == first.content
    assert newest.attempt == 2 and newest.data == current.content

    for transport in (["--endpoint", server.grpc_target], ["--rest", server.url]):
        printed = subprocess.run(
            [*TUNEFORGE, *transport, "jobs", "logs", job_id, "--attempt", "1"],
            capture_output=True,
            env=_cli_environment(),
            timeout=60,
        )
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout == first.content


def test_crash_past_the_budget_fails_the_job(
    s3_server: EmbeddedS3, demo_assets: None, object_store: ObjectStore, tmp_path: Path
) -> None:
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"budget-{uuid.uuid4().hex[:8]}",
        extra_env={"TUNEFORGE_CRASH_RETRY_BUDGET": "0"},
    ).start()
    store = JobStore(object_store, server.state_bucket)
    try:
        with server.client() as client:
            body = demo_job("crash-no-budget", epochCount=50)
            job_id = client.post("/v1/jobs", json=body).json()["jobId"]
        _kill_running_trainer(server, store, job_id)
        job = server.wait_for(job_id, {"FAILED"}, timeout=60)
        assert job["failure"]["reason"] == "TRAINER_CRASHED"
        message = job["failure"]["message"]
        assert "SIGKILL" in message and "retry budget" in message
        assert f"s3://{server.state_bucket}/jobs/{job_id}/logs/attempt-1/trainer.log" in message
        assert job["attempt"] == 1
    finally:
        server.stop()
        server.kill_trainers()


def _process_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (T stopped, Z zombie), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def test_a_frozen_trainer_is_killed_after_the_heartbeat_timeout_and_relaunched(
    api_server: ApiServer, object_store: ObjectStore
) -> None:
    """A trainer whose process lives but sends no heartbeat (here frozen with SIGSTOP, as
    a paused VM or a hung collective would leave it) does not hold its job forever."""
    store = JobStore(object_store, api_server.state_bucket)
    with api_server.client() as client:
        job_id = client.post("/v1/jobs", json=demo_job("frozen", epochCount=2)).json()["jobId"]
    api_server.wait_for(job_id, {"RUNNING"}, timeout=120)
    status, _ = store.get_status(job_id)
    assert status.launch is not None and status.launch.pid is not None
    frozen = status.launch.pid
    os.killpg(frozen, signal.SIGSTOP)  # the trainer's own process group: all of it
    try:
        job = api_server.wait_for(job_id, {"COMPLETED"}, timeout=300)
    finally:
        if _process_state(frozen) == "T":  # a failure above: do not leave it stopped
            os.killpg(frozen, signal.SIGKILL)
    assert job["attempt"] == 2
    status, _ = store.get_status(job_id)
    assert status.retries == {"crash": 1}
    (retry,) = [e for e in store.list_events(job_id) if e.type == "RETRY"]
    assert "sent no heartbeat" in retry.message, retry.message
    assert _process_state(frozen) is None  # killed and reaped, not left stopped
