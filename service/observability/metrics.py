"""Prometheus metrics of one API replica, served at `GET /metrics`.

`Metrics` owns its own `CollectorRegistry`, built with the service context in `main()`
(or a test): nothing is registered at import time and two instances never collide.

What is measured, and who feeds it:
- requests: count and latency per face (`rest`, `grpc`, `bedrock`) and operation. The
  operation label is a route template (`GET /v1/jobs/{job_id}`) or a gRPC method name,
  never a raw path, so ids never become label values.
- store calls: latency and errors per S3 operation (`ObjectStore.add_call_observer`).
- the reconcile loop: pass duration, jobs by state, queue length.
- per running job (labels `job_id`, `tenant`): step, tokens/s, training loss, learning
  rate, GPU memory, from the trainer's status as the reconcile loop reads it anyway. A
  job's series are removed once it leaves RUNNING/STOPPING, so cardinality stays bounded
  by the jobs running at once.
Every replica reports the jobs it sees; dashboards aggregate with `max by (job_id)`.

With TUNEFORGE_API_WORKERS > 1 a replica is several processes and a scrape reaches one of
them: counters and histograms are then kept in prometheus_client's multiprocess files
(PROMETHEUS_MULTIPROC_DIR, set by service/server/workers.py for its workers) and every scrape
sums all workers'; the reconcile gauges are the answering worker's own snapshot, which is
the replica's too (every worker reconciles the same store). The open-streams gauge is
summed over the workers alive: the parent forgets a dead worker's files
(`forget_dead_processes`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobstore.documents import JobState, Progress

store_log = logging.getLogger("tuneforge.store")

FACES = ("rest", "grpc", "bedrock")
# S3 answers that are part of normal work: a read of a missing object, a lost
# conditional write (If-None-Match / If-Match).
_EXPECTED_STORE_ERRORS = frozenset(
    {"NoSuchKey", "404", "NotFound", "PreconditionFailed", "412", "ConditionalRequestConflict"}
)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# States a trainer works in: its job's gauges exist while the job is in one of them.
_RUNNING_STATES = (JobState.RUNNING, JobState.STOPPING)
# prometheus_client keeps every metric's values in files in this folder when it is set at
# import: TUNEFORGE_API_WORKERS > 1 sets it for its workers (service/server/workers.py).
MULTIPROCESS_DIRECTORY_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class RunningJob:
    job_id: str
    tenant: str
    progress: Progress


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "tuneforge_requests",
            "Requests served, by face (rest, grpc, bedrock), operation and status code.",
            ["face", "operation", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "tuneforge_request_duration_seconds",
            "Time to serve a request, by face and operation (streams: until they end).",
            ["face", "operation"],
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.store_duration = Histogram(
            "tuneforge_store_request_duration_seconds",
            "Latency of object store API calls (retries included), by S3 operation.",
            ["operation"],
            buckets=_STORE_BUCKETS,
            registry=registry,
        )
        self.store_errors = Counter(
            "tuneforge_store_errors",
            "Object store API calls that failed, by S3 operation and error code.",
            ["operation", "error"],
            registry=registry,
        )
        self.reconcile_duration = Histogram(
            "tuneforge_reconcile_duration_seconds",
            "Time of one reconcile pass over the active jobs.",
            buckets=_RECONCILE_BUCKETS,
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "tuneforge_reconcile_errors",
            "Failures reading or acting on one job in a reconcile pass (or of a step of the "
            "pass), by reason (service/control/reconcile_faults.py REASONS).",
            ["reason"],
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            "tuneforge_webhook_deliveries",
            "Webhook deliveries, by outcome (delivered, retried, failed).",
            ["outcome"],
            registry=registry,
        )
        # Summed over the workers of a replica in multiprocess mode ("livesum").
        self.open_job_streams = Gauge(
            "tuneforge_open_job_streams",
            "Job streams open on this replica (SSE streams and gRPC WatchJob calls), "
            "limited by TUNEFORGE_MAX_WATCHERS and TUNEFORGE_MAX_WATCHERS_PER_TENANT.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        # What the last reconcile pass saw, served as gauges by a collector of its own
        # (see _ReconcileSnapshot), registered beside the counters.
        self._snapshot = _ReconcileSnapshot()
        registry.register(self._snapshot)
        self._multiprocess_directory = os.environ.get(MULTIPROCESS_DIRECTORY_ENV)

    # -- feeds -------------------------------------------------------------------

    def observe_request(self, face: str, operation: str, code: str, seconds: float) -> None:
        self.requests.labels(face, operation, code).inc()
        self.request_duration.labels(face, operation).observe(seconds)

    def observe_store_call(self, operation: str, seconds: float, error: str | None) -> None:
        """An S3 call ended (`ObjectStore.add_call_observer`). Logged at DEBUG, and at
        WARNING when it failed in a way callers do not expect (a missing object or a
        lost conditional write are answers, not failures); the log line carries the
        request id and job bound where the call was made."""
        self.store_duration.labels(operation).observe(seconds)
        if error is not None:
            self.store_errors.labels(operation, error).inc()
        duration_ms = round(seconds * 1000, 1)
        if error is not None and error not in _EXPECTED_STORE_ERRORS:
            store_log.warning(
                "store call failed",
                extra={"operation": operation, "error": error, "duration_ms": duration_ms},
            )
        elif store_log.isEnabledFor(logging.DEBUG):
            store_log.debug(
                "store call",
                extra={"operation": operation, "error": error, "duration_ms": duration_ms},
            )

    def observe_jobs(
        self,
        states: Iterable[JobState],
        queue_length: int,
        running: Iterable[RunningJob],
        *,
        gpus: tuple[int, int] | None = None,
        set_aside: int = 0,
    ) -> None:
        """What one reconcile pass read: the active jobs' states, how many wait for a
        slot, the running jobs' progress, the host's (free, used) GPUs (None: the
        launcher has no GPU inventory) and how many jobs the loop has set aside (it
        could neither act on them nor fail them). Replaces what the pass before saw, so
        a job that left RUNNING/STOPPING has no series any more."""
        counts = dict.fromkeys((state for state in JobState if not state.is_terminal()), 0)
        for state in states:
            if state in counts:
                counts[state] += 1
        self._snapshot.replace(counts, queue_length, list(running), gpus, set_aside)

    # -- exposition --------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The text format Prometheus scrapes, and its content type. With several worker
        processes (PROMETHEUS_MULTIPROC_DIR set), the counters and histograms are those
        of every worker of this replica, summed; the reconcile gauges are this worker's."""
        if self._multiprocess_directory is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry(auto_describe=True)
        multiprocess.MultiProcessCollector(registry, path=self._multiprocess_directory)
        registry.register(self._snapshot)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def forget_dead_processes(directory: str) -> list[int]:
    """Remove the live-gauge files of the processes in `directory` that have ended, and
    return their pids. prometheus_client sums a `livesum` gauge over every file it finds,
    so a worker killed while it held streams open would count them until its files go
    (`mark_process_dead`, which only the parent, outliving its workers, can call)."""
    forgotten: list[int] = []
    for path in sorted(Path(directory).glob("gauge_live*_*.db")):
        pid = path.stem.rsplit("_", 1)[-1]
        if not pid.isdigit() or int(pid) in forgotten or _process_exists(int(pid)):
            continue
        multiprocess.mark_process_dead(int(pid), directory)
        forgotten.append(int(pid))
    return forgotten


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True


class _ReconcileSnapshot(Collector):
    """The gauges of the last reconcile pass: jobs by state, queue length, and per running
    job its step, loss, learning rate, tokens/s and GPU memory.

    A collector rather than `Gauge`s: a snapshot replaced whole needs no removal of the
    series of jobs that ended, and it is read from this process's memory in both modes
    (prometheus_client's multiprocess gauges live in files that a removed series would
    outlive). Every worker reconciles the same store, so one worker's snapshot is the
    replica's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[JobState, int] = {}
        self._queue_length = 0
        self._running: list[RunningJob] = []
        self._gpus: tuple[int, int] | None = None
        self._set_aside = 0

    def replace(
        self,
        counts: dict[JobState, int],
        queue_length: int,
        running: list[RunningJob],
        gpus: tuple[int, int] | None,
        set_aside: int,
    ) -> None:
        with self._lock:
            self._counts = dict(counts)
            self._queue_length = queue_length
            self._running = running
            self._gpus = gpus
            self._set_aside = set_aside

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            counts, queue_length, running = self._counts, self._queue_length, self._running
            gpus, set_aside = self._gpus, self._set_aside
        jobs = GaugeMetricFamily(
            "tuneforge_jobs",
            "Jobs not yet finished, by state, as the last reconcile pass saw them.",
            labels=["state"],
        )
        for state, count in counts.items():
            jobs.add_metric([state.value], count)
        yield jobs
        yield GaugeMetricFamily(
            "tuneforge_queue_length",
            "Jobs waiting QUEUED for a free trainer slot.",
            value=queue_length,
        )
        yield GaugeMetricFamily(
            "tuneforge_reconcile_jobs_set_aside",
            "Jobs the reconcile loop gave up on but could not fail (their status could not "
            "be written); each is tried again every TUNEFORGE_RECONCILE_SET_ASIDE_SECONDS.",
            value=set_aside,
        )
        if gpus is not None:
            family = GaugeMetricFamily(
                "tuneforge_gpus",
                "The host's GPUs for trainers (local launcher), free or used by a trainer.",
                labels=["state"],
            )
            family.add_metric(["free"], gpus[0])
            family.add_metric(["used"], gpus[1])
            yield family
        for name, documentation, read in _JOB_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=["job_id", "tenant"])
            for job in running:
                value = read(job.progress)
                if value is not None:
                    family.add_metric([job.job_id, job.tenant], value)
            yield family


# Per running job: (name, help, how to read it from the trainer's progress). A value the
# trainer has not reported (no GPU, no validation yet) has no series.
_JOB_GAUGES: tuple[tuple[str, str, Callable[[Progress], float | None]], ...] = (
    ("tuneforge_job_step", "Optimizer steps done.", lambda progress: progress.step),
    ("tuneforge_job_total_steps", "Optimizer steps planned.", lambda progress: progress.totalSteps),
    (
        "tuneforge_job_tokens_per_second",
        "Training throughput in non-padding tokens per second.",
        lambda progress: progress.tokensPerSecond,
    ),
    (
        "tuneforge_job_training_loss",
        "Training loss of the latest step.",
        lambda progress: progress.trainingLoss,
    ),
    (
        "tuneforge_job_validation_loss",
        "Validation loss of the latest evaluation.",
        lambda progress: progress.validationLoss,
    ),
    (
        "tuneforge_job_training_token_accuracy",
        "Share of the latest step's target tokens predicted right (causal-LM jobs).",
        lambda progress: progress.trainingTokenAccuracy,
    ),
    (
        "tuneforge_job_validation_token_accuracy",
        "Share of the validation target tokens predicted right at the latest evaluation.",
        lambda progress: progress.validationMetrics.get("token_accuracy"),
    ),
    (
        "tuneforge_job_validation_reward_accuracy",
        "Share of the validation pairs whose chosen answer wins at the latest evaluation "
        "(preference jobs).",
        lambda progress: progress.validationMetrics.get("reward_accuracy"),
    ),
    (
        "tuneforge_job_learning_rate",
        "Learning rate of the latest step.",
        lambda progress: progress.learningRate,
    ),
    (
        "tuneforge_job_gpu_memory_bytes",
        "Peak GPU memory the trainer allocated (absent without a GPU).",
        lambda progress: progress.gpuMemoryBytes,
    ),
)


def is_running(state: JobState) -> bool:
    return state in _RUNNING_STATES
