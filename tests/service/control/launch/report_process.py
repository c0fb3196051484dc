"""Run in a warm trainer by tests/service/control/launch/test_warm_pool.py in place of the
trainer: prints, as one JSON line, what the process it runs in holds (its directory,
environment, limits and open files), waits until the file named by `--hold-until`
exists (so that the test can look at it from outside), then exits 7."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path


def main() -> int:
    files = []
    for entry in Path("/proc/self/fd").iterdir():
        try:
            files.append(os.readlink(entry))
        except OSError:
            continue
    report = {
        "cwd": os.getcwd(),
        "environment": dict(os.environ),
        "address_space": resource.getrlimit(resource.RLIMIT_AS)[0],
        "open_files": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "files": files,
        "session_leader": os.getsid(0) == os.getpid(),
    }
    print(json.dumps(report), flush=True)
    release = Path(sys.argv[sys.argv.index("--hold-until") + 1])
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return 7


if __name__ == "__main__":
    raise SystemExit(main())
