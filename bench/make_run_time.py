"""Time from a fresh clone to a serving API: `make run` until it prints "REST API:".

Clones the repository at each ref given (default: a baseline ref and HEAD) into a scratch
folder, runs `make run` there (creating its .venv and installing, then starting the
service on free ports), stops it once the REST line appears, and prints the seconds each
took, side by side, in one run on one machine. Caches are what the machine has (pip's,
uv's): say so beside the figures.

    python bench/make_run_time.py --baseline 694aae5          # baseline, then HEAD
    python bench/make_run_time.py --refs HEAD                 # HEAD alone
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def time_make_run(ref: str, scratch: Path, timeout: float) -> float:
    """Seconds from `make run` in a fresh clone at `ref` to its "REST API:" line."""
    clone = scratch / ref.replace("/", "_")
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", ref], check=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    environment.update(
        TUNEFORGE_HOME=str(clone / ".home"),
        TUNEFORGE_REST_PORT=str(free_port()),
        TUNEFORGE_GRPC_PORT=str(free_port()),
        TUNEFORGE_EMBEDDED_S3_PORT=str(free_port()),
    )
    log = clone / "make-run.log"
    started = time.monotonic()
    with open(log, "wb") as output:
        process = subprocess.Popen(
            ["make", "run"],
            cwd=clone,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while b"REST API:" not in log.read_bytes():
            if process.poll() is not None:
                raise SystemExit(f"{ref}: make run exited {process.returncode}; see {log}")
            if time.monotonic() - started > timeout:
                raise SystemExit(f"{ref}: no REST API line within {timeout:g} s; see {log}")
            time.sleep(0.2)
        return time.monotonic() - started
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a ref to time before HEAD (e.g. 694aae5)")
    parser.add_argument("--refs", nargs="+", help="the refs to time, in order")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    refs = args.refs or ([args.baseline] if args.baseline else []) + ["HEAD"]
    figures = []
    with tempfile.TemporaryDirectory(prefix="make-run-time-") as scratch:
        for ref in refs:
            seconds = time_make_run(ref, Path(scratch), args.timeout)
            figures.append((ref, seconds))
            print(f"{ref}: make run -> 'REST API:' in {seconds:.1f} s", flush=True)
    if len(figures) > 1:
        base = figures[0][1]
        for ref, seconds in figures[1:]:
            print(f"{ref} vs {figures[0][0]}: {seconds / base:.2f}x the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
