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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from service.documents import JobState, Progress

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
        self.jobs = Gauge(
            "tuneforge_jobs",
            "Jobs not yet finished, by state, as the last reconcile pass saw them.",
            ["state"],
            registry=registry,
        )
        self.queue_length = Gauge(
            "tuneforge_queue_length",
            "Jobs waiting QUEUED for a free trainer slot.",
            registry=registry,
        )
        job_labels = ["job_id", "tenant"]
        self.job_step = Gauge(
            "tuneforge_job_step", "Optimizer steps done.", job_labels, registry=registry
        )
        self.job_total_steps = Gauge(
            "tuneforge_job_total_steps", "Optimizer steps planned.", job_labels, registry=registry
        )
        self.job_tokens_per_second = Gauge(
            "tuneforge_job_tokens_per_second",
            "Training throughput in non-padding tokens per second.",
            job_labels,
            registry=registry,
        )
        self.job_training_loss = Gauge(
            "tuneforge_job_training_loss",
            "Training loss of the latest step.",
            job_labels,
            registry=registry,
        )
        self.job_validation_loss = Gauge(
            "tuneforge_job_validation_loss",
            "Validation loss of the latest evaluation.",
            job_labels,
            registry=registry,
        )
        self.job_learning_rate = Gauge(
            "tuneforge_job_learning_rate",
            "Learning rate of the latest step.",
            job_labels,
            registry=registry,
        )
        self.job_gpu_memory = Gauge(
            "tuneforge_job_gpu_memory_bytes",
            "Peak GPU memory the trainer allocated (absent without a GPU).",
            job_labels,
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            "tuneforge_webhook_deliveries",
            "Webhook deliveries, by outcome (delivered, retried, failed).",
            ["outcome"],
            registry=registry,
        )
        self._job_gauges = (
            self.job_step,
            self.job_total_steps,
            self.job_tokens_per_second,
            self.job_training_loss,
            self.job_validation_loss,
            self.job_learning_rate,
            self.job_gpu_memory,
        )
        self._lock = threading.Lock()
        self._job_series: set[tuple[str, str]] = set()

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
        self, states: Iterable[JobState], queue_length: int, running: Iterable[RunningJob]
    ) -> None:
        """What one reconcile pass read: the active jobs' states, how many wait for a
        slot, and the running jobs' progress."""
        counts = dict.fromkeys(JobState, 0)
        for state in states:
            counts[state] += 1
        for state, count in counts.items():
            if not state.is_terminal():
                self.jobs.labels(state.value).set(count)
        self.queue_length.set(queue_length)
        self.set_running_jobs(running)

    def set_running_jobs(self, running: Iterable[RunningJob]) -> None:
        """Replace the per-job series with those of `running`; others are removed."""
        with self._lock:
            current: set[tuple[str, str]] = set()
            for job in running:
                labels = (job.job_id, job.tenant)
                current.add(labels)
                progress = job.progress
                self.job_step.labels(*labels).set(progress.step)
                self._set_optional(self.job_total_steps, labels, progress.totalSteps)
                self._set_optional(self.job_training_loss, labels, progress.trainingLoss)
                self._set_optional(self.job_validation_loss, labels, progress.validationLoss)
                self._set_optional(self.job_tokens_per_second, labels, progress.tokensPerSecond)
                self._set_optional(self.job_learning_rate, labels, progress.learningRate)
                self._set_optional(self.job_gpu_memory, labels, progress.gpuMemoryBytes)
            for gone in self._job_series - current:
                for gauge in self._job_gauges:
                    _remove(gauge, gone)
            self._job_series = current

    @staticmethod
    def _set_optional(gauge: Gauge, labels: tuple[str, str], value: float | None) -> None:
        if value is None:
            _remove(gauge, labels)
        else:
            gauge.labels(*labels).set(value)

    # -- exposition --------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The text format Prometheus scrapes, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def is_running(state: JobState) -> bool:
    return state in _RUNNING_STATES


def _remove(gauge: Gauge, labels: tuple[str, str]) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:
        pass  # the series was never set
