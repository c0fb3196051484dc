"""Watchers: what following a job costs everyone else.

Starts a real SeaweedFS and a real API server on loopback with one job RUNNING, then for
each count of watchers (`--watchers`, default 0, 100 and 1000) and each kind (SSE
`GET /v1/jobs/{id}/stream`, gRPC `WatchJob`): opens that many streams of the job (in a
process of their own), and for `--seconds` has one other client describe the same job,
one request at a time. Prints per row: the other client's describes/s and p99, the
server's CPU, its store calls per second (every call it made: the reconcile loop's
few included), those calls beyond the same kind's row with no watchers (what following
the job costs the store: the aim is at most 2/s), and the messages the watchers received
(each change goes to every one).

The trainer is a stand-in: the server's trainer command only sleeps (holding the slot),
and this script writes the job's progress into the store once a second, as a trainer
would, so every watcher has a change to receive each second.

    make bench-watchers     # or: .venv/bin/python bench/watchers.py --watchers 0,100,1000
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api_load import _process_cpu_seconds, _server_counters
from jobstore.documents import JobState, JobStatus, utc_now
from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from service.server.demo import seed_demo
from service.server.embedded_s3 import EmbeddedS3, free_port
from tests.servers import ApiServer, demo_job, waiting_trainer


async def _sse_watchers(host: str, port: int, job_id: str, count: int, stop: Any) -> int:
    """`count` SSE streams of the job on bare connections; the `event: job` lines read."""
    received = 0

    async def one() -> None:
        nonlocal received
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"GET /v1/jobs/{job_id}/stream HTTP/1.1\r\nHost: {host}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        try:
            while not stop.is_set():
                try:
                    line = await asyncio.wait_for(reader.readline(), 0.5)
                except TimeoutError:
                    continue
                if not line:
                    return
                if line.startswith(b"event: job"):
                    received += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    while not stop.is_set():
        await asyncio.sleep(0.2)
    await asyncio.gather(*tasks, return_exceptions=True)
    return received


async def _grpc_watchers(target: str, job_id: str, count: int, stop: Any) -> int:
    """`count` WatchJob calls of the job, over a few channels; the messages received."""
    import grpc
    from tuneforge.v1 import fine_tuning_pb2 as pb
    from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

    received = 0
    channels = [grpc.aio.insecure_channel(target) for _ in range(max(1, count // 100))]

    async def one(number: int) -> None:
        nonlocal received
        stub = pb_grpc.FineTuningServiceStub(channels[number % len(channels)])
        call = stub.WatchJob(pb.WatchJobRequest(job_id=job_id))
        try:
            async for _ in call:
                received += 1
        except grpc.aio.AioRpcError:
            pass  # cancelled below

    tasks = [asyncio.create_task(one(number)) for number in range(count)]
    while not stop.is_set():
        await asyncio.sleep(0.2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    return received


def _watchers_process(
    kind: str, server: dict[str, Any], job_id: str, count: int, stop: Any, opened: Any, results: Any
) -> None:
    async def main() -> int:
        if kind == "sse":
            task = asyncio.create_task(
                _sse_watchers(server["host"], server["port"], job_id, count, stop)
            )
        else:
            task = asyncio.create_task(_grpc_watchers(server["grpc"], job_id, count, stop))
        await asyncio.sleep(min(10.0, 1.0 + count / 200))  # let them connect
        opened.set()
        return await task

    results.put(asyncio.run(main()))


def _write_progress(store: JobStore, job_id: str, stop: threading.Event) -> None:
    """What a trainer writes once a second: a heartbeat and one more step."""

    def step(status: JobStatus) -> JobStatus:
        moved = status.model_copy(deep=True)
        if moved.state == JobState.QUEUED:
            moved = moved.moved_to(JobState.VALIDATING).moved_to(JobState.RUNNING)
        moved.progress.step += 1
        moved.heartbeatAt = utc_now()
        return moved

    while not stop.wait(1.0):
        store.update_status(job_id, step)


def _describes(url: str, job_id: str, seconds: float) -> list[float]:
    timings = []
    with httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client.get(f"/v1/jobs/{job_id}").raise_for_status()
            timings.append(time.perf_counter() - started)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", default="0,100,1000", help="counts, comma separated")
    parser.add_argument("--kinds", default="sse,grpc", help="sse, grpc or both")
    parser.add_argument("--seconds", type=float, default=20.0)
    arguments = parser.parse_args()
    counts = [int(count) for count in arguments.watchers.split(",")]
    kinds = arguments.kinds.split(",")
    context = multiprocessing.get_context("spawn")

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        s3 = EmbeddedS3(
            root / "s3", port=free_port(), access_key_id="bench", secret_access_key="bench-secret"
        )
        s3.start()
        storage = ObjectStore(
            endpoint_url=s3.endpoint_url,
            access_key_id="bench",
            secret_access_key="bench-secret",
            region="us-east-1",
        )
        seed_demo(storage)
        waits = waiting_trainer(root)
        most = str(max(counts) + 10)
        server = ApiServer(
            s3,
            root / "home",
            state_bucket="bench",
            extra_env={
                "TUNEFORGE_TRAINER_PYTHON": str(waits),
                "TUNEFORGE_LOG_LEVEL": "WARNING",
                "TUNEFORGE_MAX_WATCHERS_PER_TENANT": most,
                "TUNEFORGE_MAX_WATCHERS": most,
            },
        )
        server.start()
        stop_progress = threading.Event()
        try:
            with server.client() as client:
                created = client.post("/v1/jobs", json=demo_job("watched", epochCount=1))
                created.raise_for_status()
                job_id = created.json()["jobId"]
            store = JobStore(storage, "bench")
            deadline = time.monotonic() + 60
            while store.get_status(job_id)[0].launch is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("the job was not launched in 60 s")
                time.sleep(0.2)
            writer = threading.Thread(
                target=_write_progress, args=(store, job_id, stop_progress), daemon=True
            )
            writer.start()
            assert server.process is not None
            pid = server.process.pid
            address = {"host": "127.0.0.1", "port": server.port, "grpc": server.grpc_target}
            print(
                f"one job RUNNING (progress written once a second); an other client describes "
                f"it one request at a time for {arguments.seconds:.0f} s per row; server "
                f"{server.url}, {os.cpu_count()} cores shared with the watchers' process\n"
            )
            header = (
                f"{'kind':<6}{'watchers':>9}{'describes/s':>13}{'p50 ms':>8}{'p99 ms':>8}"
                f"{'server cpu':>12}{'store calls/s':>15}{'added/s':>9}{'messages':>10}"
            )
            print(header)
            print("-" * len(header))
            for kind in kinds:
                unwatched: float | None = None  # store calls/s of this kind's 0 row
                for count in counts:
                    stop, opened = context.Event(), context.Event()
                    results = context.Queue()
                    watchers = context.Process(
                        target=_watchers_process,
                        args=(kind, address, job_id, count, stop, opened, results),
                    )
                    watchers.start()
                    opened.wait(60)
                    before, cpu_before = _server_counters(server.url), _process_cpu_seconds(pid)
                    timings = _describes(server.url, job_id, arguments.seconds)
                    after, cpu = _server_counters(server.url), _process_cpu_seconds(pid)
                    stop.set()
                    received = results.get(timeout=60)
                    watchers.join(30)
                    calls = (after["store calls"] - before["store calls"]) / arguments.seconds
                    if count == 0:
                        unwatched = calls
                    added = f"{calls - unwatched:.1f}" if unwatched is not None else "-"
                    ordered = sorted(timings)
                    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
                    print(
                        f"{kind:<6}{count:>9}{len(timings) / arguments.seconds:>13.0f}"
                        f"{1000 * statistics.median(timings):>8.1f}{1000 * p99:>8.1f}"
                        f"{100 * (cpu - cpu_before) / arguments.seconds:>11.0f}%"
                        f"{calls:>15.1f}{added:>9}{received:>10}",
                        flush=True,
                    )
                    time.sleep(2)  # the streams closed, the server settles
            return 0
        finally:
            stop_progress.set()
            server.stop()
            server.kill_trainers()
            s3.stop()


if __name__ == "__main__":
    sys.exit(main())
