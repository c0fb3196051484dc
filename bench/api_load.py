"""API load: concurrent clients against a real API server and store, per operation.

Starts a real SeaweedFS and a real API server (subprocess) on loopback, creates a few
jobs to read, then runs `--clients` concurrent HTTP clients for `--seconds`, each picking
an operation at random by `--mix` (describe a job, list a page of jobs, create a job),
and then a burst of `--burst` creates sent at once. Prints, per operation, the count,
throughput, p50/p99 latency and the errors (any non-2xx or transport error; the aim is
zero).

The clients are bench/http_load.py's: bare asyncio HTTP/1.1 keep-alive connections spread
over `--client-processes` processes, cheap enough that the server, not the client, is
what saturates; each phase prints both sides' CPU, so a reader sees which one was.

Beside it, in the same run (figures on a shared machine move with other work): the same
clients against `/healthz` (the HTTP stack with no store work), and a raw boto3 GET of
the same job's `status.json` from the store (what one store read costs).

Trainers are not what is measured: by default the server's trainer command is a script
that only sleeps (TUNEFORGE_TRAINER_PYTHON), holding the one slot, so no model loads on
this machine's cores and the jobs created wait QUEUED; `--real-trainers` keeps the real
ones (one slot). Two kinds of describe, as a replica serves them differently:
`describe` reads a waiting job (its status and control) and
`describe-finished` one that ended (STOPPED before the load: served from the replica's
memory once read, as a finished job never changes). A waiting job is read from the store
at most once per `--read-staleness` seconds (the server's bound, 1 s by default; 0 reads
it on every describe, as before the bound existed).

With `--other-tenant-jobs N`, the same list load runs twice, side by side: before and
after another tenant comes to own N finished jobs (written straight to the store, newer
than the caller's): the caller's page should cost the same store calls and time.

With `--finished-jobs N`, the caller's tenant also owns N finished jobs from before the
load (written straight to the store, older than the jobs the bench creates): 10,000 jobs
in the store are `--jobs 1000 --finished-jobs 8000`. After the load, an idle phase
(`--idle-seconds`, no requests) prints what the reconcile passes alone cost: store calls
per pass, mean pass time, the server's CPU. `--waiting-refresh 0` sets the server's
TUNEFORGE_RECONCILE_WAITING_REFRESH_SECONDS to 0: every waiting job read every pass, as
before passes read only what changed (the baseline for that change).

    make bench-api-load          # or: .venv/bin/python bench/api_load.py --clients 16 --seconds 10
    .venv/bin/python bench/api_load.py --mix list=1 --other-tenant-jobs 5000
    .venv/bin/python bench/api_load.py --mix list=1 --jobs 1000 --finished-jobs 8000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from concurrent.futures import ThreadPoolExecutor

from bench.http_load import Operation, Results, run_load
from jobstore.documents import (
    DataLocation,
    HyperParameters,
    JobSpec,
    JobState,
    JobStatus,
    new_job_id,
    utc_now,
)
from jobstore.storage import ObjectStore, S3Location
from service.server.demo import seed_demo
from service.server.embedded_s3 import EmbeddedS3, free_port
from tests.servers import ApiServer, demo_job, waiting_trainer

Latencies = dict[str, list[float]]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, its reaped children, and its live descendants
    (the API workers, with TUNEFORGE_API_WORKERS > 1), from Linux /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0  # exited meanwhile: its time is in its parent's cutime once reaped
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK") + sum(_process_cpu_seconds(int(c)) for c in children)


class ServerCpu:
    """CPU seconds the API server used during one phase (its reconciler included: it
    shares the process)."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.started = _process_cpu_seconds(server_pid)

    def line(self, results: Results, processes: int) -> str:
        """Both sides' CPU: on a shared machine the client competes with the server, and
        whichever is near 100% of its cores is what limited the throughput."""
        seconds, requests = results.elapsed, results.served
        client = results.client_cpu_seconds
        server = _process_cpu_seconds(self.server_pid) - self.started
        per_request = (
            f"{1000 * client / requests:.2f} / {1000 * server / requests:.2f}" if requests else "-"
        )
        return (
            f"cpu: client {client:.1f} s ({100 * client / seconds:.0f}% of a core, "
            f"{processes} processes), server {server:.1f} s ({100 * server / seconds:.0f}%); "
            f"per request client / server {per_request} ms"
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


def _idle_phase(url: str, server_pid: int, seconds: float) -> None:
    """What the reconcile passes alone cost: no requests for `seconds`, then the store
    calls per pass (every call the server made: the passes are all it does), the mean
    pass time and the server's CPU."""
    before, cpu_before = _server_counters(url), _process_cpu_seconds(server_pid)
    time.sleep(seconds)
    after, cpu = _server_counters(url), _process_cpu_seconds(server_pid) - cpu_before
    passes = after["passes"] - before["passes"]
    calls = after["store calls"] - before["store calls"]
    pass_seconds = after["pass seconds"] - before["pass seconds"]
    per_pass = f"{calls / passes:.1f}" if passes else "-"
    mean = f"{1000 * pass_seconds / passes:.0f} ms" if passes else "-"
    print(
        f"\nidle ({seconds:.0f} s, no requests): {passes:.0f} reconcile passes, {per_pass} "
        f"store calls per pass, mean pass {mean}; server cpu {cpu:.1f} s "
        f"({100 * cpu / seconds:.0f}% of a core)"
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


def _create_body() -> dict[str, object]:
    body = demo_job(f"load-{uuid.uuid4().hex[:8]}", epochCount=1)
    body["clientRequestToken"] = uuid.uuid4().hex
    return body


def _operations(
    job_ids: list[str], finished_ids: list[str], mix: dict[str, float]
) -> list[tuple[Operation, float]]:
    known = {
        "describe": Operation("describe", "", paths=tuple(f"/v1/jobs/{j}" for j in job_ids)),
        "describe-finished": Operation(
            "describe-finished", "", paths=tuple(f"/v1/jobs/{j}" for j in finished_ids)
        ),
        "list": Operation("list", "/v1/jobs?limit=20"),
        "create": Operation("create", "/v1/jobs", body=_create_body),
        "healthz": Operation("healthz", "/healthz"),
    }
    return [(known[name], weight) for name, weight in mix.items()]


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


def _write_finished_jobs(s3: EmbeddedS3, bucket: str, tenant: str, count: int) -> None:
    """`count` finished jobs of `tenant`, as the service writes them (its index marker,
    spec, status), straight to the store: created now (newer than the jobs before,
    older than the jobs after), and finished, so no reconcile pass acts on them."""
    storage = ObjectStore(
        endpoint_url=s3.endpoint_url,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
        region="us-east-1",
    )

    def write(number: int) -> None:
        now = utc_now()
        spec = JobSpec(
            jobId=new_job_id(),
            jobName=f"{tenant}-{number}",
            tenant=tenant,
            createdAt=now,
            baseModelIdentifier="s3://demo/models/tiny-llama/",
            trainingDataConfig=DataLocation(s3Uri="s3://demo/datasets/sample-train.jsonl"),
            outputDataConfig=DataLocation(s3Uri="s3://demo/output/"),
            hyperParameters=HyperParameters(),
        )
        status = JobStatus(updatedAt=now, state=JobState.COMPLETED, stateTimes={"QUEUED": now})
        storage.put_bytes(S3Location(bucket, f"tenants/{tenant}/jobs/{spec.jobId}"), b"")
        storage.put_json(
            S3Location(bucket, f"jobs/{spec.jobId}/spec.json"), spec.model_dump(mode="json")
        )
        storage.put_json(
            S3Location(bucket, f"jobs/{spec.jobId}/status.json"), status.model_dump(mode="json")
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(write, range(count)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--burst", type=int, default=100, help="creates sent at once")
    parser.add_argument(
        "--jobs",
        type=int,
        default=20,
        help="jobs created before the load, to read: as many waiting, as many finished",
    )
    parser.add_argument(
        "--mix",
        default="describe=0.7,list=0.2,create=0.1",
        help="operation=weight,... (describe, list, create)",
    )
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument(
        "--client-processes",
        type=int,
        default=2,
        help="client processes the connections are spread over (each its own event loop)",
    )
    parser.add_argument("--real-trainers", action="store_true")
    parser.add_argument(
        "--other-tenant-jobs",
        type=int,
        default=0,
        help="then list again, side by side, once another tenant owns this many jobs",
    )
    parser.add_argument(
        "--finished-jobs",
        type=int,
        default=0,
        help="finished jobs of the caller's tenant written to the store before the load",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=10.0,
        help="after the load: how long to watch the reconcile passes with no requests",
    )
    parser.add_argument(
        "--waiting-refresh",
        type=float,
        default=None,
        help="the server's TUNEFORGE_RECONCILE_WAITING_REFRESH_SECONDS (0: every waiting "
        "job read every pass; default: the server's own)",
    )
    parser.add_argument(
        "--api-workers", type=int, default=1, help="the server's TUNEFORGE_API_WORKERS"
    )
    parser.add_argument(
        "--read-staleness",
        type=float,
        default=None,
        help="the server's TUNEFORGE_READ_STALENESS_SECONDS (0: every describe reads the "
        "store, as before the bound; default: the server's own, 1 s)",
    )
    parser.add_argument(
        "--server-log-level",
        default="WARNING",
        help="the server's TUNEFORGE_LOG_LEVEL; INFO writes the access log line per request",
    )
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
            "TUNEFORGE_LOG_LEVEL": arguments.server_log_level,
            "TUNEFORGE_API_WORKERS": str(arguments.api_workers),
            # The load creates far more jobs than the per-tenant queue allows by default
            # (100): the limit's 429s are not what this measures.
            "TUNEFORGE_TENANT_MAX_QUEUED_JOBS": "1000000",
        }
        if arguments.waiting_refresh is not None:
            extra_env["TUNEFORGE_RECONCILE_WAITING_REFRESH_SECONDS"] = str(
                arguments.waiting_refresh
            )
        if arguments.finished_jobs:
            started = time.perf_counter()
            _write_finished_jobs(s3, "bench", "default", arguments.finished_jobs)
            print(
                f"(the caller's tenant owns {arguments.finished_jobs} finished jobs, written "
                f"in {time.perf_counter() - started:.0f} s)"
            )
        if arguments.read_staleness is not None:
            extra_env["TUNEFORGE_READ_STALENESS_SECONDS"] = str(arguments.read_staleness)
        if not arguments.real_trainers:
            extra_env["TUNEFORGE_TRAINER_PYTHON"] = str(waiting_trainer(root))
        server = ApiServer(s3, root / "home", state_bucket="bench", extra_env=extra_env)
        server.start()
        try:
            with server.client() as client:
                job_ids, finished_ids = [], []
                for _ in range(arguments.jobs):
                    for ids in (job_ids, finished_ids):
                        response = client.post("/v1/jobs", json=_create_body())
                        response.raise_for_status()
                        ids.append(response.json()["jobId"])
                for job_id in finished_ids:
                    client.post(f"/v1/jobs/{job_id}/stop").raise_for_status()
            for job_id in finished_ids:
                server.wait_for(job_id, {"STOPPED"}, timeout=120)
            print(
                f"{arguments.clients} clients, {arguments.seconds:.0f} s, mix {mix}; "
                f"{arguments.jobs} waiting and {arguments.jobs} finished jobs to read; "
                f"server {server.url}"
            )
            assert server.process is not None
            pid, processes = server.process.pid, arguments.client_processes

            def phase(
                title: str, mix: dict[str, float], clients: int, seconds: float, once: bool
            ) -> Results:
                cpu, counters = ServerCpu(pid), _server_counters(server.url)
                results = run_load(
                    server.url,
                    _operations(job_ids, finished_ids, mix),
                    clients=clients,
                    seconds=seconds,
                    processes=processes,
                    once=once,
                )
                _report(
                    f"{title} ({results.elapsed:.1f} s)",
                    results.latencies,
                    results.errors,
                    results.elapsed,
                )
                print(cpu.line(results, processes))
                store = _store_line(counters, _server_counters(server.url), results.served)
                print(store)  # every worker's counters, summed, whichever answers
                return results

            mixed = phase("mixed load", mix, arguments.clients, arguments.seconds, False)
            _idle_phase(server.url, pid, arguments.idle_seconds)
            if arguments.other_tenant_jobs:
                list_only = {"list": 1.0}
                phase(
                    "list, no other tenant", list_only, arguments.clients, arguments.seconds, False
                )
                started = time.perf_counter()
                _write_finished_jobs(s3, "bench", "other", arguments.other_tenant_jobs)
                print(
                    f"\n(another tenant now owns {arguments.other_tenant_jobs} jobs, written in "
                    f"{time.perf_counter() - started:.0f} s)"
                )
                phase(
                    f"list, another tenant owns {arguments.other_tenant_jobs} jobs",
                    list_only,
                    arguments.clients,
                    arguments.seconds,
                    False,
                )
            burst = phase(
                f"burst of {arguments.burst} creates", {"create": 1}, arguments.burst, 0, True
            )
            phase(
                "baseline: /healthz, same clients",
                {"healthz": 1},
                arguments.clients,
                arguments.baseline_seconds,
                False,
            )
            raw_started = time.perf_counter()
            raw = _raw_store_get(s3, "bench", job_ids[0], 200)
            raw_elapsed = time.perf_counter() - raw_started
            _report(
                "baseline: raw boto3 GET of the same job's status.json, one client, sequential",
                {"store-get": raw},
                {},
                raw_elapsed,
            )
            total_errors = sum(mixed.errors.values()) + sum(burst.errors.values())
            print(f"\nerrors: {total_errors}")
            return 1 if total_errors else 0
        finally:
            server.stop()
            server.kill_trainers()
            s3.stop()


if __name__ == "__main__":
    sys.exit(main())
