"""Data at scale: how long a job on a large instruction dataset takes to start training,
and how much memory its trainer holds meanwhile.

Runs a real SeaweedFS, a real API server and real trainers on the demo model. For each
size it writes an instruction dataset ({"prompt", "completion"}: 40-word prompts,
12-word completions, ~300 bytes a record), creates a job on it (epochCount 1,
batchSize 8), waits for the first optimizer step, stops the job, and prints:

    records, MB               the dataset
    create->RUNNING s         from the create call returning to state RUNNING
    create->step 1 s          ... to the first optimizer step finished
    preflight rec/s           records / (DATA_VALIDATED event - VALIDATING)
    peak RSS GB               the trainer's process tree (every process whose working
    peak RssAnon GB           directory is the job's), sampled from /proc every 50 ms;
                              RssAnon is what the processes own (memory-mapped file
                              pages are the page cache's, shared)

With --ranks 2 each job runs as two CPU ranks (torchrun, gloo) and the table adds
each rank's peak RssAnon (the two largest processes of the tree: torchrun's own is
smaller), so the growth from the smallest size to the others shows whether the ranks
share one copy of the tokens.

    make bench-data                              # 10k, 100k, 300k, 1M records
    .venv/bin/python bench/data_scale.py --sizes 1000,100000 --ranks 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobstore.storage import ObjectStore, S3Location
from service.server.demo import seed_demo
from service.server.embedded_s3 import EmbeddedS3, free_port
from tests.servers import ApiServer

# fmt: off
WORDS = (
    "apple", "bread", "chair", "dance", "eagle", "flame", "grape", "house", "juice", "knife",
    "lemon", "money", "night", "ocean", "piano", "queen", "river", "stone", "table", "uncle",
    "voice", "water", "youth", "zebra", "cloud", "dream", "field", "ghost", "heart", "light",
    "mouse", "north", "paper", "quiet", "radio", "smile", "tiger", "under", "value", "whale",
    "amber", "berry",
)
# fmt: on


TERMINAL = {"STOPPED", "COMPLETED", "FAILED"}


def write_dataset(path: Path, records: int, seed: int = 1) -> int:
    """An instruction dataset of `records` records; returns its size in bytes."""
    generator = random.Random(seed)
    with path.open("w", encoding="utf-8") as file:
        for number in range(records):
            prompt = " ".join(generator.choice(WORDS) for _ in range(40))
            completion = " ".join(generator.choice(WORDS) for _ in range(12))
            file.write(json.dumps({"prompt": f"{number}: {prompt}", "completion": completion}))
            file.write("\n")
    return path.stat().st_size


@dataclass
class MemorySampler:
    """Peak RSS and RssAnon of the processes working under `directory`, summed, and
    each process's own peak RssAnon, sampled until stopped."""

    directory: str
    peak_rss: int = 0
    peak_anon: int = 0
    per_process_anon: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            rss = anon = 0
            for pid, (process_rss, process_anon) in self._sample().items():
                rss += process_rss
                anon += process_anon
                self.per_process_anon[pid] = max(self.per_process_anon.get(pid, 0), process_anon)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_anon = max(self.peak_anon, anon)

    def _sample(self) -> dict[int, tuple[int, int]]:
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if not os.readlink(entry / "cwd").startswith(self.directory):
                    continue
                fields = dict(
                    line.split(":", 1) for line in (entry / "status").read_text().splitlines()
                )
            except (OSError, ValueError):
                continue
            rss = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
            anon = int(fields.get("RssAnon", "0 kB").split()[0]) * 1024
            found[int(entry.name)] = (rss, anon)
        return found


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def run_one(
    server: ApiServer, storage: ObjectStore, root: Path, records: int, ranks: int
) -> dict[str, Any]:
    path = root / f"data-{records}.jsonl"
    size = write_dataset(path, records)
    location = S3Location("demo", f"datasets/scale-{records}-{uuid.uuid4().hex[:6]}.jsonl")
    storage.upload_file(path, location)
    path.unlink()
    body: dict[str, Any] = {
        "jobName": f"scale-{records}",
        "baseModelIdentifier": "s3://demo/models/tiny-llama/",
        "trainingDataConfig": {"s3Uri": location.uri},
        "outputDataConfig": {"s3Uri": f"s3://demo/output/scale-{uuid.uuid4().hex[:8]}/"},
        "hyperParameters": {"epochCount": 1, "batchSize": 8, "maxSequenceLength": 256},
    }
    if ranks > 1:
        body["resources"] = {"gpus": ranks}
    sampler = MemorySampler(str((server.home / "work").resolve()))
    with server.client() as client:
        response = client.post("/v1/jobs", json=body)
        created = time.time()
        response.raise_for_status()
        job_id = response.json()["jobId"]
        sampler.start()
        job: dict[str, Any] = {}
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if (job.get("progress") or {}).get("step", 0) >= 1 or job["state"] in TERMINAL:
                break
            time.sleep(0.2)
        first_step = time.time() - created
        sampler.stop()
        client.post(f"/v1/jobs/{job_id}/stop")
        events = client.get(f"/v1/jobs/{job_id}/events").json()["events"]
    if (job.get("progress") or {}).get("step", 0) < 1:
        raise RuntimeError(f"job {job_id} did not train: {json.dumps(job)[:2000]}")
    times = {state: _epoch(moment) for state, moment in job["stateTimes"].items()}
    validating = times.get("VALIDATING", created)
    running = times.get("RUNNING", time.time())
    validated = next((_epoch(e["time"]) for e in events if e["type"] == "DATA_VALIDATED"), running)
    server.wait_for(job_id, TERMINAL, 300)
    per_rank = sorted(sampler.per_process_anon.values(), reverse=True)[:ranks]
    return {
        "records": records,
        "megabytes": size / 1e6,
        "create_to_running": running - created,
        "create_to_first_step": first_step,
        "preflight_records_per_second": records / max(validated - validating, 1e-6),
        "peak_rss_gb": sampler.peak_rss / 1e9,
        "peak_anon_gb": sampler.peak_anon / 1e9,
        "rank_anon_gb": [value / 1e9 for value in per_rank],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000,300000,1000000")
    parser.add_argument("--ranks", type=int, default=1)
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]

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
        environment = {"TUNEFORGE_LOCAL_CPU_RANKS": "true"} if arguments.ranks > 1 else {}
        server = ApiServer(s3, root / "home", extra_env=environment | {"CUDA_VISIBLE_DEVICES": ""})
        server.start()
        try:
            print(
                f"{'records':>9} {'MB':>7} {'create->RUNNING s':>18} {'create->step 1 s':>17} "
                f"{'preflight rec/s':>16} {'peak RSS GB':>12} {'peak RssAnon GB':>16}"
                + ("  peak RssAnon MB per rank" if arguments.ranks > 1 else "")
            )
            for records in sizes:
                row = run_one(server, storage, root, records, arguments.ranks)
                print(
                    f"{row['records']:>9,} {row['megabytes']:>7.1f} "
                    f"{row['create_to_running']:>18.1f} {row['create_to_first_step']:>17.1f} "
                    f"{row['preflight_records_per_second']:>16,.0f} "
                    f"{row['peak_rss_gb']:>12.2f} {row['peak_anon_gb']:>16.2f}"
                    + (
                        "  " + " ".join(f"{value * 1000:.0f}" for value in row["rank_anon_gb"])
                        if arguments.ranks > 1
                        else ""
                    ),
                    flush=True,
                )
        finally:
            server.stop()
            server.kill_trainers()
            s3.stop()


if __name__ == "__main__":
    main()
