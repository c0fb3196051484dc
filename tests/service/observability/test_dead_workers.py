"""The open-streams gauge of several API workers is summed over the workers alive: the
files of a worker that died are forgotten (service/observability/metrics.py,
forget_dead_processes), those of a live one kept. Real worker-like processes write the
gauge through prometheus_client's multiprocess files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from service.observability.metrics import MULTIPROCESS_DIRECTORY_ENV, forget_dead_processes
from tests.prometheus_text import samples

# A worker's share of the gauge: `streams` open, then it ends or waits for its stdin.
WORKER = """
import sys
from service.observability.metrics import Metrics
Metrics().open_job_streams.inc(int(sys.argv[1]))
print("counted", flush=True)
if sys.argv[2] == "stay":
    sys.stdin.read()
"""


def _worker(directory: Path, streams: int, stay: bool) -> subprocess.Popen[str]:
    environment = os.environ | {MULTIPROCESS_DIRECTORY_ENV: str(directory)}
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(streams), "stay" if stay else "end"],
        env=environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "counted\n"
    return process


def _summed(directory: Path) -> list[float]:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return samples(generate_latest(registry).decode(), "tuneforge_open_job_streams")


def test_a_dead_workers_streams_are_forgotten_and_a_live_ones_kept(tmp_path: Path) -> None:
    dead = _worker(tmp_path, streams=3, stay=False)
    dead.wait()
    live = _worker(tmp_path, streams=2, stay=True)
    try:
        assert _summed(tmp_path) == [5.0]  # prometheus_client alone counts the dead one

        assert forget_dead_processes(str(tmp_path)) == [dead.pid]
        assert _summed(tmp_path) == [2.0]
        assert forget_dead_processes(str(tmp_path)) == []  # the live one stays
    finally:
        assert live.stdin is not None
        live.stdin.close()
        live.wait()
    assert forget_dead_processes(str(tmp_path)) == [live.pid]
