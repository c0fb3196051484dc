"""The trainer's first heartbeat comes before its heavy imports (torch, transformers):
a replica that could not record the trainer's process judges it by its heartbeats
alone, and a start slowed by a busy host must not look like a trainer that never came.

The real trainer runs with `import torch` held back (a `sitecustomize` on its path that
waits for a file before letting the import go on): its heartbeat must be in the job's
status while the import still waits; released, the job completes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from jobstore.documents import JobState
from jobstore.store import JobStore
from tests.trainer.jobs import (
    REPO_ROOT,
    Demo,
    create_job,
    trainer_environment,
)

HOLD_BACK_TORCH = textwrap.dedent(
    """
    import importlib.abc
    import os
    import sys
    import time


    class HoldBackTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                release = os.environ["TEST_RELEASE_TORCH"]
                open(os.environ["TEST_TORCH_WAITING"], "w").close()
                while not os.path.exists(release):
                    time.sleep(0.05)
                sys.meta_path.remove(self)
            return None


    sys.meta_path.insert(0, HoldBackTorch())
    """
)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_the_first_heartbeat_is_written_before_torch_is_imported(
    job_store: JobStore, demo: Demo, s3_environment: dict[str, str], tmp_path: Path
) -> None:
    spec = create_job(job_store, training_uri=demo.train_uri, model_uri=demo.model_uri)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_BACK_TORCH)
    waiting, release = tmp_path / "torch-waiting", tmp_path / "release-torch"
    log_file = tmp_path / "trainer.log"
    environment = trainer_environment(s3_environment, log_file=log_file)
    environment |= {
        "PYTHONPATH": f"{hook}:{REPO_ROOT}",
        "TEST_TORCH_WAITING": str(waiting),
        "TEST_RELEASE_TORCH": str(release),
    }
    workdir = tmp_path / "work"
    workdir.mkdir()
    with log_file.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "trainer", "--job-id", spec.jobId],
            cwd=workdir,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait(waiting.exists, 60, "the trainer to reach `import torch`")
        _wait(
            lambda: job_store.get_status(spec.jobId)[0].heartbeatAt is not None,
            60,
            "a heartbeat while `import torch` is held back",
        )
        assert not release.exists() and process.poll() is None
        release.touch()
        assert process.wait(timeout=300) == 0, log_file.read_text(errors="replace")
        assert job_store.get_status(spec.jobId)[0].state == JobState.COMPLETED
    finally:
        release.touch()
        if process.poll() is None:
            process.kill()
            process.wait()
