"""API load: concurrent clients against a real API server and store, per operation.

Starts a real SeaweedFS and a real API server (subprocess) on loopback, creates a few
jobs to read, then runs `--clients` concurrent HTTP clients for `--seconds`, each picking
an operation at random by `--mix` (describe a job, list a page of jobs, create a job),
and then a burst of `--burst` creates sent at once. Prints, per operation, the count,
throughput, p50/p99 latency and the errors (any non-2xx or transport error; the aim is
zero).

Beside it, in the same run (figures on a shared machine move with other work): the same
clients against `/healthz` (the HTTP stack with no store work), and a raw boto3 GET of
the same job's `status.json` from the store (what one store read costs).

Trainers are not what is measured: by default the server's trainer command is
`/bin/true` (TUNEFORGE_TRAINER_PYTHON), so created jobs "crash" at once and the
reconciler retires them, without loading a model on this machine's cores;
`--real-trainers` keeps the real ones (one slot).

    make bench-api-load          # or: .venv/bin/python bench/api_load.py --clients 16 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import boto3
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.demo import seed_demo
from service.embedded_s3 import EmbeddedS3, free_port
from service.storage import ObjectStore
from tests.servers import ApiServer, demo_job

Latencies = dict[str, list[float]]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its reaped children (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds this bench client and the API server used during one phase: on a
    shared machine the client competes with the server, so both are reported."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.client_started = time.process_time()
        self.server_started = _process_cpu_seconds(server_pid)

    def line(self, requests: int, seconds: float) -> str:
        client = time.process_time() - self.client_started
        server = _process_cpu_seconds(self.server_pid) - self.server_started
        per_request = f"{1000 * client / requests:.2f} / {1000 * server / requests:.2f}"
        return (
            f"cpu: client {client:.1f} s ({100 * client / seconds:.0f}% of a core), server "
            f"{server:.1f} s ({100 * server / seconds:.0f}%); per request client / server "
            f"{per_request if requests else '-'} ms"
        )


def _server_counters(url: str) -> dict[str, float]:
    """Store calls (all S3 operations) and reconcile passes so far, from /metrics."""
    totals = {"store calls": 0.0, "passes": 0.0, "pass seconds": 0.0}
    for line in httpx.get(url + "/metrics", timeout=60).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("tuneforge_store_request_duration_seconds_count"):
            totals["store calls"] += float(value)
        elif name == "tuneforge_reconcile_duration_seconds_count":
            totals["passes"] = float(value)
        elif name == "tuneforge_reconcile_duration_seconds_sum":
            totals["pass seconds"] = float(value)
    return totals


def _store_line(before: dict[str, float], after: dict[str, float], requests: int) -> str:
    """Store calls per request (the reconciler's included: it shares the process), and the
    reconcile passes: what the work costs whatever the machine's load."""
    calls = after["store calls"] - before["store calls"]
    passes = after["passes"] - before["passes"]
    pass_seconds = after["pass seconds"] - before["pass seconds"]
    mean = f"{pass_seconds / passes:.2f} s" if passes else "-"
    return (
        f"store: {calls:.0f} calls ({calls / requests if requests else 0:.1f} per request); "
        f"reconcile: {passes:.0f} passes, mean {mean}"
    )


def _report(title: str, latencies: Latencies, errors: dict[str, int], seconds: float) -> None:
    print(f"\n{title}")
    print(f"{'operation':<12} {'count':>8} {'per s':>9} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}")
    for name in sorted(set(latencies) | set(errors)):
        values = latencies.get(name, [])
        if values:
            p50 = f"{1000 * statistics.median(values):9.1f}"
            p99 = f"{1000 * _percentile(values, 0.99):9.1f}"
        else:
            p50 = p99 = f"{'-':>9}"
        rate = len(values) / seconds if seconds > 0 else 0.0
        print(f"{name:<12} {len(values):>8} {rate:>9.1f} {p50} {p99} {errors.get(name, 0):>7}")


async def _call(
    client: httpx.AsyncClient,
    name: str,
    method: str,
    path: str,
    latencies: Latencies,
    errors: dict[str, int],
    body: dict[str, object] | None = None,
) -> str | None:
    started = time.perf_counter()
    try:
        response = await client.request(method, path, json=body)
    except httpx.HTTPError as error:
        errors[name] += 1
        print(f"  {name}: {type(error).__name__}: {error}", file=sys.stderr)
        return None
    latencies[name].append(time.perf_counter() - started)
    if response.status_code >= 300:
        errors[name] += 1
        print(f"  {name}: HTTP {response.status_code}: {response.text[:200]}", file=sys.stderr)
        return None
    return response.text


def _create_body() -> dict[str, object]:
    body = demo_job(f"load-{uuid.uuid4().hex[:8]}", epochCount=1)
    body["clientRequestToken"] = uuid.uuid4().hex
    return body


async def _run_mix(
    url: str, job_ids: list[str], clients: int, seconds: float, mix: dict[str, float]
) -> tuple[Latencies, dict[str, int], float]:
    latencies: Latencies = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    names = list(mix)
    weights = [mix[name] for name in names]
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one_client(seed: int) -> None:
            chooser = random.Random(seed)
            while time.perf_counter() < deadline:
                name = chooser.choices(names, weights)[0]
                if name == "describe":
                    job_id = chooser.choice(job_ids)
                    await _call(client, name, "GET", f"/v1/jobs/{job_id}", latencies, errors)
                elif name == "list":
                    await _call(client, name, "GET", "/v1/jobs?limit=20", latencies, errors)
                elif name == "create":
                    await _call(client, name, "POST", "/v1/jobs", latencies, errors, _create_body())
                else:
                    await _call(client, name, "GET", "/healthz", latencies, errors)

        started = time.perf_counter()
        await asyncio.gather(*(one_client(seed) for seed in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


async def _burst(url: str, count: int) -> tuple[Latencies, dict[str, int], float]:
    latencies: Latencies = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _call(client, "burst-create", "POST", "/v1/jobs", latencies, errors, _create_body())
                for _ in range(count)
            )
        )
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def _raw_store_get(s3: EmbeddedS3, bucket: str, job_id: str, count: int) -> list[float]:
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        region_name="us-east-1",
    )
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        client.get_object(Bucket=bucket, Key=f"jobs/{job_id}/status.json")["Body"].read()
        timings.append(time.perf_counter() - started)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--burst", type=int, default=100, help="creates sent at once")
    parser.add_argument("--jobs", type=int, default=20, help="jobs created before, to read")
    parser.add_argument(
        "--mix",
        default="describe=0.7,list=0.2,create=0.1",
        help="operation=weight,... (describe, list, create)",
    )
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--real-trainers", action="store_true")
    arguments = parser.parse_args()
    mix = {
        name: float(weight)
        for name, weight in (item.split("=") for item in arguments.mix.split(","))
    }

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        s3 = EmbeddedS3(
            root / "s3", port=free_port(), access_key_id="bench", secret_access_key="bench-secret"
        )
        s3.start()
        seed_demo(
            ObjectStore(
                endpoint_url=s3.endpoint_url,
                access_key_id="bench",
                secret_access_key="bench-secret",
                region="us-east-1",
            )
        )
        extra_env = {
            "TUNEFORGE_LOCAL_SLOTS": "1",
            "TUNEFORGE_LOG_LEVEL": "WARNING",
            # The load creates far more jobs than the per-tenant queue allows by default
            # (100): the limit's 429s are not what this measures.
            "TUNEFORGE_TENANT_MAX_QUEUED_JOBS": "1000000",
        }
        if not arguments.real_trainers:
            extra_env["TUNEFORGE_TRAINER_PYTHON"] = "/bin/true"
        server = ApiServer(s3, root / "home", state_bucket="bench", extra_env=extra_env)
        server.start()
        try:
            with server.client() as client:
                job_ids = []
                for _ in range(arguments.jobs):
                    response = client.post("/v1/jobs", json=_create_body())
                    response.raise_for_status()
                    job_ids.append(response.json()["jobId"])
            print(
                f"{arguments.clients} clients, {arguments.seconds:.0f} s, mix {mix}; "
                f"{arguments.jobs} jobs to read; server {server.url}"
            )
            assert server.process is not None
            pid = server.process.pid
            meter, counters = CpuMeter(pid), _server_counters(server.url)
            latencies, errors, elapsed = asyncio.run(
                _run_mix(server.url, job_ids, arguments.clients, arguments.seconds, mix)
            )
            _report(f"mixed load ({elapsed:.1f} s)", latencies, errors, elapsed)
            served = sum(len(v) for v in latencies.values())
            print(meter.line(served, elapsed))
            print(_store_line(counters, _server_counters(server.url), served))
            meter, counters = CpuMeter(pid), _server_counters(server.url)
            burst_latencies, burst_errors, burst_elapsed = asyncio.run(
                _burst(server.url, arguments.burst)
            )
            _report(
                f"burst of {arguments.burst} creates ({burst_elapsed:.1f} s)",
                burst_latencies,
                burst_errors,
                burst_elapsed,
            )
            served = sum(len(v) for v in burst_latencies.values())
            print(meter.line(served, burst_elapsed))
            print(_store_line(counters, _server_counters(server.url), served))
            meter = CpuMeter(pid)
            base_latencies, base_errors, base_elapsed = asyncio.run(
                _run_mix(
                    server.url,
                    job_ids,
                    arguments.clients,
                    arguments.baseline_seconds,
                    {"healthz": 1},
                )
            )
            _report(
                f"baseline: /healthz, same clients ({base_elapsed:.1f} s)",
                base_latencies,
                base_errors,
                base_elapsed,
            )
            print(meter.line(sum(len(v) for v in base_latencies.values()), base_elapsed))
            raw_started = time.perf_counter()
            raw = _raw_store_get(s3, "bench", job_ids[0], 200)
            raw_elapsed = time.perf_counter() - raw_started
            _report(
                "baseline: raw boto3 GET of the same job's status.json, one client, sequential",
                {"store-get": raw},
                {},
                raw_elapsed,
            )
            total_errors = sum(errors.values()) + sum(burst_errors.values())
            print(f"\nerrors: {total_errors}")
            return 1 if total_errors else 0
        finally:
            server.stop()
            server.kill_trainers()
            s3.stop()


if __name__ == "__main__":
    sys.exit(main())
