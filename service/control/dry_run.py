"""Dry runs: a job's VALIDATING stage without a job (POST /v1/jobs with validateOnly).

The checks need the base model's tokenizer, torch and transformers, which are the
trainer's, and the service never imports the trainer. So the replica runs the trainer's
own entry point, `python -m trainer.dry_run` (trainer/dry_run.py), as a short-lived
subprocess, whatever the launcher: the spec (with a placeholder id, never stored) on its
stdin, a report file in a scratch directory under `<home>/dry-runs/` that is removed
afterwards. It is started as the local launcher starts trainers
(service/control/launch/local.py): a fresh environment with only the trainer's variables
(the store's endpoint, the tenant's store credentials), its own session, the same
resource limits, no GPU. It is killed past `timeout_seconds`.

With the ray or kubernetes launcher the replica runs it all the same: it works where the
API replica has the trainer's packages installed (the trainer image, or `pip install
-e .` with the training dependencies); where it does not (the slim API image), the
entry point cannot import them and the caller is told that dry runs need them.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from jobstore.documents import JobSpec, JobValidationReport
from service.control.launch.local import PASSED_THROUGH, ResourceLimits
from service.errors import (
    DryRunFailed,
    DryRunTimedOut,
    DryRunUnavailable,
    StoreUnavailable,
    TooManyRequests,
    TuneforgeError,
)

log = logging.getLogger(__name__)

# trainer/dry_run.py's exit code when torch or transformers cannot be imported.
MISSING_PACKAGES = 3
# Python's words when the trainer's package itself is not installed on this replica (the
# entry point then exits 1 before it can answer MISSING_PACKAGES). Any other missing
# module is a failure of the run, reported as such, not blamed on the installation.
_NO_TRAINER = "Error while finding module specification for 'trainer.dry_run'"
_TAIL_BYTES = 4000


class DryRunner:
    """Runs dry runs for one replica, at most `max_concurrent` at once."""

    def __init__(
        self,
        work_root: Path,
        *,
        trainer_environment: dict[str, str],
        tenant_environment: Callable[[str], dict[str, str]] | None = None,
        python: str | None = None,
        limits: ResourceLimits | None = None,
        timeout_seconds: float = 120.0,
        max_concurrent: int = 2,
        cpu_flops: float = 5e10,
        gpu_flops: float = 1e14,
    ) -> None:
        self.work_root = work_root
        self.trainer_environment = trainer_environment
        self.tenant_environment = tenant_environment or (lambda tenant: {})
        self.python = python or sys.executable
        self.limits = limits or ResourceLimits()
        self.timeout_seconds = timeout_seconds
        self.cpu_flops = cpu_flops
        self.gpu_flops = gpu_flops
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._running: set[subprocess.Popen[bytes]] = set()
        self._running_lock = threading.Lock()
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Scratch directories of dry runs whose server died mid-run. Several API workers
        share the folder, so only those older than any dry run can live are removed."""
        if not self.work_root.is_dir():
            return
        cutoff = time.time() - 2 * self.timeout_seconds - 60
        for entry in self.work_root.iterdir():
            try:
                if entry.is_dir() and entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                continue  # another worker removed it first

    def shutdown(self) -> None:
        """Kill the dry runs still going (their callers get no answer: the server is
        stopping); each one's `run` then removes its scratch directory."""
        with self._running_lock:
            running = list(self._running)
        for process in running:
            _kill_group(process)

    def run(self, spec: JobSpec) -> JobValidationReport:
        """The report of `spec`'s dry run. Raises TooManyRequests when this replica runs
        as many as it may already, DryRunTimedOut, DryRunUnavailable, DryRunFailed."""
        if not self._slots.acquire(blocking=False):
            raise TooManyRequests(
                "this replica is running as many dry runs as it may at once "
                "(TUNEFORGE_DRY_RUN_MAX_CONCURRENT); try again shortly",
                retry_after_seconds=5,
            )
        directory = self.work_root / uuid.uuid4().hex
        try:
            directory.mkdir(parents=True)
            return self._run(spec, directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
            self._slots.release()

    def _environment(self, spec: JobSpec, directory: Path) -> dict[str, str]:
        env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
        env.update(self.trainer_environment)
        try:
            env.update(self.tenant_environment(spec.tenant))
        except TuneforgeError:
            raise
        except Exception as error:  # the store's identity API (embedded IAM) failing
            log.warning("store credentials for tenant %s: %s", spec.tenant, error)
            raise StoreUnavailable(
                "the object store could not give this tenant's credentials for the dry run; "
                "try again shortly"
            ) from error
        env.update(
            {
                "HOME": str(directory),
                "HF_HOME": str(directory / "hf-home"),
                "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
                "CUDA_VISIBLE_DEVICES": "",  # preflight is CPU work
            }
        )
        return env

    def _run(self, spec: JobSpec, directory: Path) -> JobValidationReport:
        report_path = directory / "report.json"
        log_path = directory / "dry-run.log"
        arguments = [
            "-m",
            "trainer.dry_run",
            "--report",
            str(report_path),
            "--cpu-flops",
            repr(self.cpu_flops),
            "--gpu-flops",
            repr(self.gpu_flops),
        ]
        with open(log_path, "wb") as output:
            try:
                process = subprocess.Popen(
                    self.limits.command(self.python, arguments),
                    cwd=directory,
                    env=self._environment(spec, directory),
                    stdin=subprocess.PIPE,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group: killed whole on a timeout
                    close_fds=True,
                )
            except OSError as error:
                raise DryRunUnavailable(
                    f"could not start the dry run ({self.python}: {error}); dry runs need the "
                    "trainer's packages on the API replica (docs/data.md, Dry runs)"
                ) from error
            with self._running_lock:
                self._running.add(process)
            try:
                process.communicate(spec.model_dump_json().encode(), timeout=self.timeout_seconds)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                raise DryRunTimedOut(
                    f"the dry run took longer than {self.timeout_seconds:g} s "
                    "(TUNEFORGE_DRY_RUN_TIMEOUT_SECONDS) and was stopped: the data is too large "
                    "to check within a request. Create the job instead (its VALIDATING stage "
                    "checks the same and fails naming every bad line before any training), dry "
                    "run a sample of the data, or ask the operator to raise the limit"
                ) from None
            except BaseException:
                _kill_group(process)
                raise
            finally:
                with self._running_lock:
                    self._running.discard(process)
        code = process.returncode
        tail = _tail(log_path)
        if code == 0 and report_path.is_file():
            try:
                return JobValidationReport.model_validate_json(report_path.read_bytes())
            except ValueError as error:  # pydantic's ValidationError is a ValueError
                log.error("dry run of job %s wrote an unreadable report: %s", spec.jobId, error)
                raise DryRunFailed(
                    "the dry run wrote a report this server cannot read (are the API replica "
                    "and its trainer packages the same release?); the server's log has more"
                ) from error
        if code == MISSING_PACKAGES or _NO_TRAINER in tail:
            log.warning("dry run unavailable on this replica: %s", tail.strip()[-500:])
            raise DryRunUnavailable(
                "dry runs need the trainer's packages (torch, transformers and tuneforge's "
                "trainer) installed on the API replica, which this one lacks; create the job "
                "instead (its VALIDATING stage runs the same checks), or run the API from an "
                "image with the trainer's packages (docs/data.md, Dry runs)"
            )
        log.error("dry run of job %s exited with %s: %s", spec.jobId, code, tail)
        raise DryRunFailed(
            f"the dry run failed (exit code {code}); the server's log has its output"
        )


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _TAIL_BYTES))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
