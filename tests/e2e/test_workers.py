"""TUNEFORGE_API_WORKERS=2: two serving processes on one port, each a replica with its own
reconciler and local launcher, over the real store and a real trainer."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from service.server.embedded_s3 import EmbeddedS3
from tests.prometheus_text import samples
from tests.servers import ApiServer, demo_job, waiting_trainer


def _workers(pid: int) -> set[int]:
    """The server's worker processes (spawned by multiprocessing: not its resource
    tracker, the other child it spawns)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()}


def _serving_pids(log_path: Path) -> dict[int, int]:
    """Requests served per process, from the access log lines (each carries `pid`)."""
    served: dict[int, int] = {}
    for line in log_path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("event") == "request" and entry.get("logger") == "tuneforge.access":
            served[entry["pid"]] = served.get(entry["pid"], 0) + 1
    return served


def _two_worker_server(s3_server: EmbeddedS3, tmp_path: Path) -> ApiServer:
    return ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"state-{uuid.uuid4().hex[:12]}",
        extra_env={"TUNEFORGE_API_WORKERS": "2", "TUNEFORGE_LOG_FORMAT": "json"},
    )


def test_two_workers_serve_one_port_and_run_a_job_once(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> None:
    server = _two_worker_server(s3_server, tmp_path)
    server.start()
    try:
        assert server.process is not None
        workers = _workers(server.process.pid)
        assert len(workers) == 2, workers

        with server.client() as client:
            response = client.post("/v1/jobs", json=demo_job("two-workers", epochCount=1))
            assert response.status_code == 201, response.text
            job_id = response.json()["jobId"]
        job = server.wait_for(job_id, {"COMPLETED"}, timeout=240)
        assert job["failure"] is None

        # Fresh connections, several at once, until each worker has answered some (the
        # kernel hands a connection to whichever worker accepts first).
        def describe(_: int) -> int:
            return httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=30).status_code

        served: dict[int, int] = {}
        with ThreadPoolExecutor(8) as pool:
            for _ in range(50):
                assert set(pool.map(describe, range(32))) == {200}
                served = _serving_pids(server.log_path)
                if workers <= set(served):
                    break
                time.sleep(0.2)
        assert set(served) == workers, f"requests served per pid: {served}, workers {workers}"

        with server.client() as client:
            events = client.get(f"/v1/jobs/{job_id}/events").json()["events"]
        launches = [e for e in events if e["type"] == "LAUNCHED"]
        assert len(launches) == 1, events
    finally:
        server.stop()
        server.kill_trainers()
    assert server.process.poll() is not None
    for pid in workers:  # stopped with their parent
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_a_crash_is_a_crash_whichever_worker_looks_first(
    s3_server: EmbeddedS3, object_store: ObjectStore, demo_assets: None, tmp_path: Path
) -> None:
    """The trainer is a child of the worker that launched it; only that worker sees its
    exit code. A sibling must not take the exit for a lost trainer ("gone, exit code
    unknown": a preemption, outside the crash budget) before the parent classifies it."""
    server = _two_worker_server(s3_server, tmp_path)
    server.start()
    try:
        with server.client() as client:
            response = client.post("/v1/jobs", json=demo_job("crash-in-worker", epochCount=30))
            assert response.status_code == 201, response.text
            job_id = response.json()["jobId"]
        server.wait_for(job_id, {"RUNNING"}, timeout=240)
        status, _ = JobStore(object_store, server.state_bucket).get_status(job_id)
        assert status.launch is not None and status.launch.pid is not None
        assert server.process is not None
        workers = _workers(server.process.pid)
        assert status.launch.host.endswith(tuple(f"/worker-{pid}" for pid in workers))
        os.killpg(status.launch.pid, signal.SIGKILL)

        job = server.wait_for(job_id, {"COMPLETED"}, timeout=300)
        assert job["attempt"] == 2
        with server.client() as client:
            events = client.get(f"/v1/jobs/{job_id}/events").json()["events"]
        retries = [e["message"] for e in events if e["type"] == "RETRY"]
        assert len(retries) == 1 and "SIGKILL" in retries[0] and "(crash)" in retries[0], retries
    finally:
        server.stop()
        server.kill_trainers()


def test_a_metrics_scrape_counts_the_requests_of_every_worker(
    s3_server: EmbeddedS3, tmp_path: Path
) -> None:
    """A scrape reaches one worker; its request counter must still be the replica's: the
    sum over both workers, whichever one answers."""
    server = _two_worker_server(s3_server, tmp_path)
    server.start()
    try:
        assert server.process is not None
        workers = _workers(server.process.pid)

        def list_jobs(_: int) -> int:
            return httpx.get(f"{server.url}/v1/jobs", timeout=30).status_code

        sent = 0
        served: dict[int, int] = {}
        with ThreadPoolExecutor(8) as pool:
            for _ in range(50):  # fresh connections until both workers have answered
                assert set(pool.map(list_jobs, range(32))) == {200}
                sent += 32
                served = _serving_pids(server.log_path)
                if workers <= set(served):
                    break
                time.sleep(0.2)
        assert set(served) == workers, f"requests served per pid: {served}, workers {workers}"

        for _ in range(6):  # fresh connections: both workers answer some of the scrapes
            scraped = httpx.get(f"{server.url}/metrics", timeout=30)
            assert scraped.status_code == 200
            counted = samples(
                scraped.text, "tuneforge_requests_total", face="rest", operation="GET /v1/jobs"
            )
            assert sum(counted) == sent, (counted, sent, served)
            # The reconcile gauges come from the answering worker alone, not summed.
            assert samples(scraped.text, "tuneforge_queue_length") == [0.0]
    finally:
        server.stop()


def test_streams_of_a_killed_worker_are_no_longer_counted(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> None:
    """/metrics sums the open-streams gauge over the workers; a worker killed -9 while it
    held a stream must drop out of the sum (its replacement holds none), not count that
    stream for as long as the server runs."""
    sleeper = waiting_trainer(tmp_path)
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"state-{uuid.uuid4().hex[:12]}",
        # The job stays active (its trainer only sleeps), so its stream stays open.
        extra_env={"TUNEFORGE_API_WORKERS": "2", "TUNEFORGE_TRAINER_PYTHON": str(sleeper)},
    )
    server.start()
    try:
        with server.client() as client:
            response = client.post("/v1/jobs", json=demo_job("followed"))
            assert response.status_code == 201, response.text
            job_id = response.json()["jobId"]

        opened = threading.Event()

        def follow() -> None:
            # Ends with an error when its worker is killed.
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.stream("GET", f"{server.url}/v1/jobs/{job_id}/stream", timeout=120) as stream,
            ):
                assert stream.status_code == 200
                opened.set()
                for _ in stream.iter_lines():
                    pass

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        assert opened.wait(60), "the stream did not open"
        _wait_until(lambda: _open_streams(server) == 1, "the open stream counted")

        assert server.process is not None
        for pid in _workers(server.process.pid):
            os.kill(pid, signal.SIGKILL)
        # uvicorn starts two new workers (each imports the service) on a busy machine.
        _wait_until(
            lambda: _open_streams(server) == 0,
            "the killed worker's stream forgotten",
            timeout=120,
        )
        follower.join(30)
    finally:
        server.stop()
        server.kill_trainers()


def _open_streams(server: ApiServer) -> float | None:
    """The summed gauge, or None while no worker answers (they are being replaced)."""
    try:
        scraped = httpx.get(f"{server.url}/metrics", timeout=10)
    except httpx.HTTPError:
        return None
    if scraped.status_code != 200:
        return None
    found = samples(scraped.text, "tuneforge_open_job_streams")
    return found[0] if len(found) == 1 else None


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
