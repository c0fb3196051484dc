"""`python -m trainer --job-id <id>`: one fine-tuning job, one process (or one rank of
several under torchrun: trainer/torchrun.py, trainer/distributed.py).

Started by a launcher in a fresh working directory, with this environment:

    AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION
    TUNEFORGE_STATE_BUCKET       where jobs/<id>/ lives
    TUNEFORGE_ATTEMPT            the launch attempt this process is (fencing)
    TUNEFORGE_HEARTBEAT_SECONDS  heartbeat and stop-poll interval (default 2.0)
    TUNEFORGE_LOG_FILE           the file stdout+stderr go to; uploaded as the job log
    HF_HUB_OFFLINE=1             nothing is fetched from a model hub

The exit code is a `TrainerExit`: OK (a terminal state was written: COMPLETED or
STOPPED), BAD_INPUT (FAILED for bad data or a refused model; never retried), CRASHED
(FAILED for anything else, or nothing could be written), FENCED (another attempt owns
the job; nothing written), PREEMPTED (SIGTERM: checkpoint written, no terminal state;
the reconciler decides what happens next).

Under torchrun (RANK / WORLD_SIZE set) rank 0 is the process described above; ranks
1..N-1 work in `rank-<n>/` under the working directory and write nothing to the job.
A rank whose peer died exits CRASHED without recording a failure: the job is not
failed for a lost process, the launcher sees the group's exit and relaunches it.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from jobstore.documents import Failure, FailureReason, JobSpec, TrainerExit
from jobstore.errors import InvalidArgument, JobNotFound, StoreUnavailable, TuneforgeError
from jobstore.storage import ObjectStore, StorageError, parse_s3_uri
from jobstore.store import JobStore
from jobstore.structured_logging import bind_process_fields
from jobstore.structured_logging import configure_logging as configure_structured_logging
from trainer.errors import BadInput, Fenced
from trainer.follower import FollowerReporter
from trainer.reporting import Reporter

if TYPE_CHECKING:
    from trainer.recipe import FullFineTuningRecipe

log = logging.getLogger("trainer")

MAX_MESSAGE = 2000


@dataclass(frozen=True)
class TrainerEnvironment:
    state_bucket: str
    attempt: int
    heartbeat_seconds: float
    log_file: Path | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> TrainerEnvironment:
        """Read the TUNEFORGE_* variables; raise ValueError naming a missing or bad one."""
        try:
            attempt = int(environ["TUNEFORGE_ATTEMPT"])
            heartbeat = float(environ.get("TUNEFORGE_HEARTBEAT_SECONDS") or 2.0)
            bucket = environ["TUNEFORGE_STATE_BUCKET"]
        except KeyError as error:
            raise ValueError(f"environment variable {error.args[0]} is not set") from None
        if heartbeat <= 0:
            raise ValueError("TUNEFORGE_HEARTBEAT_SECONDS must be positive")
        log_file = environ.get("TUNEFORGE_LOG_FILE")
        return cls(bucket, attempt, heartbeat, Path(log_file) if log_file else None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainer", description="Run one fine-tuning job."
    )
    parser.add_argument("--job-id", required=True, help="the job to run (jobs/<id>/spec.json)")
    return parser.parse_args(argv)


def configure_logging() -> None:
    # Structured lines (jobstore/structured_logging.py); readable by default, as the
    # log is the job's own (GET /v1/jobs/{id}/logs). boto's debug output (request
    # signatures) stays quiet.
    configure_structured_logging(os.environ.get("TUNEFORGE_LOG_FORMAT") or "console")


def configure_libraries() -> None:
    """Settings that torch and transformers read when first imported, so before that.

    On a CPU the trainer shares cores with other processes (the object store, the API,
    other jobs). OpenMP threads that spin while they wait for each other then make each
    step 10-20x slower; passive waiting costs little when the cores are free. An
    operator's own OMP_* settings win. Progress bars fill the log with carriage returns.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def is_out_of_memory(error: Exception) -> bool:
    """A GPU out of memory, Python's MemoryError, or PyTorch's CPU allocator failing."""
    import torch

    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def memory_details(spec: JobSpec | None, storage: ObjectStore) -> str:
    """ ", at a peak of 3.10 GB of resident memory, with 92.0 MB of data": this process's
    peak (getrusage), and the size of the job's data files (left out if unreadable)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    text = f", at a peak of {_size_in_words(peak)} of resident memory"
    if spec is None:
        return text
    uris = [spec.trainingDataConfig.s3Uri]
    if spec.validationDataConfig is not None:
        uris.append(spec.validationDataConfig.s3Uri)
    try:
        heads = [storage.head(parse_s3_uri(uri, field="s3Uri")) for uri in uris]
    except (StorageError, StoreUnavailable, InvalidArgument) as error:
        log.warning("could not read the size of the data: %s", error)
        return text
    if all(head is not None for head in heads):
        size = sum(int(head.get("ContentLength", 0)) for head in heads if head is not None)
        text += f", with {_size_in_words(size)} of data"
    return text


def _size_in_words(size: int) -> str:
    """10.4 GB, 92.0 MB, 23.1 kB (as service/control/launch/memory.py writes them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size} bytes"


def failure_details(error: Exception, spec: JobSpec | None, storage: ObjectStore) -> str:
    """memory_details for running out of host memory; nothing for anything else (a GPU
    out of memory included: its resident memory says nothing of the GPU's). Never
    raises: the failure is recorded whatever this finds."""
    import torch

    if not is_out_of_memory(error) or isinstance(error, torch.OutOfMemoryError):
        return ""
    try:
        return memory_details(spec, storage)
    except Exception:
        log.exception("could not describe the memory of the failed trainer")
        return ""


def classify(error: Exception, details: str = "") -> tuple[FailureReason, str, TrainerExit]:
    """The failure reason, the message for the user, and the exit code for an error;
    `details` says more about an out-of-memory one (memory_details)."""
    if isinstance(error, BadInput):
        return error.reason, error.message, TrainerExit.BAD_INPUT

    if is_out_of_memory(error):
        return (
            FailureReason.OUT_OF_MEMORY,
            f"the trainer ran out of memory{details}; lower batchSize or maxSequenceLength "
            "(raise gradientAccumulationSteps to keep the same effective batch size), use "
            "method LORA, or ask the operator for more trainer memory",
            TrainerExit.CRASHED,
        )
    if isinstance(error, StoreUnavailable | StorageError):
        return FailureReason.STORAGE, f"object storage error: {error.message}", TrainerExit.CRASHED
    summary = f"{type(error).__name__}: {error}"
    return FailureReason.INTERNAL, f"internal trainer error: {summary}", TrainerExit.CRASHED


def record_failure(reporter: Reporter, error: Exception, details: str = "") -> TrainerExit:
    reason, message, code = classify(error, details)
    if isinstance(error, BadInput):
        log.error("job %s failed (%s): %s", reporter.job_id, reason, message)
    else:
        log.exception("job %s failed (%s)", reporter.job_id, reason, exc_info=error)
    reporter.stop_heartbeat()
    try:
        reporter.fail(Failure(reason=reason, message=message[:MAX_MESSAGE]))
    except Fenced as fenced:
        log.error("not recording the failure: %s", fenced)
        return TrainerExit.FENCED
    except Exception:
        log.exception("could not record the failure of job %s", reporter.job_id)
        return TrainerExit.CRASHED
    return code


def run(job_id: str, environment: TrainerEnvironment, preempted: threading.Event) -> TrainerExit:
    storage = ObjectStore.from_environment()
    store = JobStore(storage, environment.state_bucket)
    # Rank 0 writes the job's documents: torchrun's RANK 0, or the only process (as
    # Distributed.from_environ reads them; that module imports torch).
    is_main = "WORLD_SIZE" not in os.environ or os.environ.get("RANK", "0") == "0"
    reporter = (Reporter if is_main else FollowerReporter)(
        store,
        job_id,
        environment.attempt,
        heartbeat_seconds=environment.heartbeat_seconds,
        log_file=environment.log_file,
    )
    if is_main:
        # A sign of life before the imports below, which take seconds, and tens of seconds
        # on a busy host: a replica that could not record this process (it died while
        # starting it) judges it by its heartbeats alone, and would launch another.
        try:
            reporter.heartbeat()
        except Fenced as error:
            log.error("job %s belongs to another attempt: %s; exiting", job_id, error)
            return TrainerExit.FENCED
        except TuneforgeError as error:
            log.warning("the first heartbeat failed (the thread tries again): %s", error)
        reporter.start_heartbeat()

    # These import torch: after configure_libraries().
    from trainer.distributed import Distributed, is_lost_peer
    from trainer.recipe import FullFineTuningRecipe

    distributed = Distributed.from_environ(os.environ)
    if distributed.is_main != is_main:
        raise RuntimeError(
            f"rank {distributed.rank} is not what RANK={os.environ.get('RANK')} said"
        )
    workdir = Path.cwd()
    if not distributed.is_main:  # the ranks share the launcher's working directory
        workdir = workdir / f"rank-{distributed.rank}"
        workdir.mkdir(exist_ok=True)
    recipe: FullFineTuningRecipe | None = None
    spec: JobSpec | None = None
    try:
        spec = store.get_spec(job_id)
        fields: dict[str, object] = {"job_id": job_id, "tenant": spec.tenant}
        if distributed.enabled:
            fields["rank"] = distributed.rank
        bind_process_fields(**fields, attempt=environment.attempt)
        log.info("job %s attempt %d: %s", job_id, environment.attempt, spec.jobName)
        recipe = FullFineTuningRecipe(
            spec,
            storage=storage,
            reporter=reporter,
            workdir=workdir,
            preempted=preempted,
            distributed=distributed,
            host_workdir=Path.cwd(),
        )
        code = recipe.run()
    except JobNotFound:
        log.error("job %s has no spec in s3://%s/", job_id, environment.state_bucket)
        return TrainerExit.BAD_INPUT
    except Fenced as error:
        log.error("job %s belongs to another attempt: %s; exiting", job_id, error)
        reporter.fenced.set()
        return TrainerExit.FENCED
    except Exception as error:
        if is_lost_peer(error):
            log.error("job %s: rank %d lost a peer: %s", job_id, distributed.rank, error)
            code = TrainerExit.CRASHED
        else:
            code = record_failure(reporter, error, failure_details(error, spec, storage))
    finally:
        reporter.stop_heartbeat()
        if recipe is not None:
            recipe.cleanup()
        distributed.close()
    log.info("job %s: trainer exits with %s", job_id, code.name)
    try:
        reporter.upload_all()
    except Exception:
        log.exception("could not upload the final log and metrics")
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    configure_libraries()
    try:
        environment = TrainerEnvironment.from_environ(os.environ)
    except ValueError as error:
        log.error("%s", error)
        return TrainerExit.CRASHED
    preempted = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # Only a flag: the loop finishes its step, writes a checkpoint and exits.
        preempted.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    return int(run(args.job_id, environment, preempted))


if __name__ == "__main__":
    raise SystemExit(main())
