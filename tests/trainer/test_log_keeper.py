"""`python -m trainer.log_keeper` (the command of every Kubernetes trainer pod) on the real
store: the trainer's output reaches both its own stdout and the attempt's log in the
store, whatever way the trainer ends, and its exit code passes through unchanged."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from jobstore.documents import JobState, TrainerExit
from jobstore.store import JobStore
from tests.trainer.jobs import Demo, create_job, trainer_environment, wait_for


def keep(
    job_id: str, command: list[str], s3_environment: dict[str, str], directory: Path
) -> subprocess.Popen[bytes]:
    environment = trainer_environment(s3_environment, log_file=directory / "trainer.log")
    return subprocess.Popen(
        [sys.executable, "-m", "trainer.log_keeper", "--job-id", job_id, "--", *command],
        cwd=directory,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def stored_log(store: JobStore, job_id: str) -> str:
    found = store.storage.get_bytes(store.log_location(job_id, 1))
    assert found is not None, "no trainer log in the store"
    return found[0].decode()


def test_a_job_run_through_the_keeper_completes_and_its_log_is_in_the_store(
    job_store: JobStore, demo: Demo, s3_environment: dict[str, str], tmp_path: Path
) -> None:
    spec = create_job(job_store, training_uri=demo.train_uri, model_uri=demo.model_uri)
    keeper = keep(
        spec.jobId,
        [sys.executable, "-m", "trainer", "--job-id", spec.jobId],
        s3_environment,
        tmp_path,
    )
    output, _ = keeper.communicate(timeout=300)
    assert keeper.returncode == TrainerExit.OK, output.decode()
    assert job_store.get_status(spec.jobId)[0].state is JobState.COMPLETED
    text = stored_log(job_store, spec.jobId)
    assert "trainer exits with OK" in text
    assert "trainer exits with OK" in output.decode()  # the pod log still has it


def test_a_killed_trainer_leaves_its_whole_log_and_its_exit_code(
    job_store: JobStore, demo: Demo, s3_environment: dict[str, str], tmp_path: Path
) -> None:
    # What an out-of-memory kill looks like from outside: output, then SIGKILL.
    crash = "print('last words before the kill', flush=True); import os; os.kill(os.getpid(), 9)"
    keeper = keep("zzzzzzzzzzzzzzzz", [sys.executable, "-c", crash], s3_environment, tmp_path)
    keeper.communicate(timeout=60)
    assert keeper.returncode == 128 + signal.SIGKILL
    assert "last words before the kill" in stored_log(job_store, "zzzzzzzzzzzzzzzz")


def test_sigterm_reaches_the_trainer_and_its_exit_code_comes_back(
    job_store: JobStore, demo: Demo, s3_environment: dict[str, str], tmp_path: Path
) -> None:
    trainer = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        "    print('checkpoint written on SIGTERM', flush=True); sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('training', flush=True)\n"
        "time.sleep(60)\n"
    )
    keeper = keep("yyyyyyyyyyyyyyyy", [sys.executable, "-c", trainer], s3_environment, tmp_path)
    log_file = tmp_path / "trainer.log"
    wait_for(
        lambda: log_file.exists() and "training" in log_file.read_text(),
        timeout=30,
        what="the trainer to start",
    )
    keeper.send_signal(signal.SIGTERM)
    keeper.communicate(timeout=30)  # well before the 60 s sleep ends: the signal got through
    assert keeper.returncode == TrainerExit.PREEMPTED
    assert "checkpoint written on SIGTERM" in stored_log(job_store, "yyyyyyyyyyyyyyyy")


def test_a_fenced_trainer_uploads_nothing(
    job_store: JobStore, demo: Demo, s3_environment: dict[str, str], tmp_path: Path
) -> None:
    fenced = "print('another attempt owns the job'); raise SystemExit(3)"
    keeper = keep("xxxxxxxxxxxxxxxx", [sys.executable, "-c", fenced], s3_environment, tmp_path)
    keeper.communicate(timeout=60)
    assert keeper.returncode == TrainerExit.FENCED
    assert job_store.storage.get_bytes(job_store.log_location("xxxxxxxxxxxxxxxx", 1)) is None
