"""Job start latency: from the create call returning to the first optimizer step.

Runs a real SeaweedFS, a real API server and real trainers on the demo assets, creates
the demo job N times (one at a time) and prints, per run and as medians, the time from
the create call returning to: the trainer launched, VALIDATING, RUNNING, and the first
optimizer step finished, first with every trainer started cold, then with warm spares
(the default). Beside them, in the same run, the import floor: a bare Python process
that imports torch and transformers (what a cold trainer process pays first).

    make bench-start-latency            # or: .venv/bin/python bench/start_latency.py --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from service.server.demo import seed_demo
from service.server.embedded_s3 import EmbeddedS3, free_port
from tests.servers import ApiServer, demo_job


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _import_floor() -> float:
    started = time.time()
    subprocess.run([sys.executable, "-c", "import torch, transformers"], check=True)
    return time.time() - started


def measure(server: ApiServer, store: JobStore, runs: int, label: str) -> list[dict[str, float]]:
    """Create the demo job `runs` times, one at a time; the stages of each."""
    rows = []
    for run in range(runs):
        # A warm spare takes a few seconds to import after the last one was used.
        time.sleep(4)
        response = httpx.post(
            server.url + "/v1/jobs", json=demo_job(f"{label}-{run}", epochCount=1), timeout=30
        )
        returned = time.time()
        job_id = response.json()["jobId"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, _ = store.get_status(job_id)
            if status.progress.firstStepAt or status.state.is_terminal():
                break
            time.sleep(0.05)
        assert status.progress.firstStepAt, f"run {run}: no first step: {status}"
        launched = next(e for e in store.list_events(job_id) if e.type == "LAUNCHED")
        rows.append(
            {
                "launched": _epoch(launched.time) - returned,
                "validating": _epoch(status.stateTimes["VALIDATING"]) - returned,
                "running": _epoch(status.stateTimes["RUNNING"]) - returned,
                "first_step": _epoch(status.progress.firstStepAt) - returned,
            }
        )
        server.wait_for(job_id, {"COMPLETED"}, timeout=300)
    return rows


def report(label: str, rows: list[dict[str, float]]) -> dict[str, float]:
    print(f"{label}:")
    print(f"{'run':>4} {'launched':>9} {'validating':>11} {'running':>8} {'first step':>11}")
    for number, row in enumerate(rows):
        print(
            f"{number:>4} {row['launched']:>8.2f}s {row['validating']:>10.2f}s "
            f"{row['running']:>7.2f}s {row['first_step']:>10.2f}s"
        )
    median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    print(
        f"{'med':>4} {median['launched']:>8.2f}s {median['validating']:>10.2f}s "
        f"{median['running']:>7.2f}s {median['first_step']:>10.2f}s"
    )
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    arguments = parser.parse_args()

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
        # The same server twice: every trainer started cold (the baseline), then handed
        # to a warm spare (service/control/launch/warm_pool.py, the default).
        results = {}
        try:
            for label, spares in (("cold", "0"), ("warm", "1")):
                server = ApiServer(
                    s3, root / f"home-{label}", extra_env={"TUNEFORGE_WARM_TRAINERS": spares}
                ).start()
                try:
                    results[label] = measure(
                        server, JobStore(storage, server.state_bucket), arguments.runs, label
                    )
                finally:
                    server.stop()
        finally:
            s3.stop()

    floors = [_import_floor() for _ in range(arguments.runs)]
    cold = report("cold start (TUNEFORGE_WARM_TRAINERS=0)", results["cold"])
    warm = report("warm start (TUNEFORGE_WARM_TRAINERS=1, the default)", results["warm"])
    print(
        f"baseline: python -c 'import torch, transformers' median {statistics.median(floors):.2f}s"
    )
    print(
        f"create -> first optimizer step, median of {arguments.runs}: "
        f"cold {cold['first_step']:.2f}s, warm {warm['first_step']:.2f}s"
    )


if __name__ == "__main__":
    main()
