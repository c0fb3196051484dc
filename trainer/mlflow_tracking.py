"""Log a job's training to an MLflow tracking server (`integrations.mlflow` in its spec).

The MLflow REST API (/api/2.0/mlflow/...) over plain HTTP from the standard library:
the trainer needs five calls (find or create the experiment, create a run, log batches,
update the run), which is less than what the `mlflow-skinny` client would add to every
trainer image and to its start-up time.

What goes to MLflow, in one run named after the job (run id in a MLFLOW_RUN event):
- params: the hyperparameters, the customization type, base model and data locations;
- metrics by step: training_loss and learning_rate every step (and a causal LM's
  training_token_accuracy), validation_loss (and a causal LM's validation_token_accuracy,
  or the classification scores) at each evaluation;
- at the end: the final model's location (param and tag `tuneforge.modelS3Uri`) and the
  run's status (FINISHED, KILLED for a stop, FAILED).

Invariants:
- Training never waits on MLflow and never fails because of it: `log_metrics()` only
  queues; a background thread sends batches. The first error (unreachable, refused,
  slow) becomes one MLFLOW_UNAVAILABLE warning event, and the job goes on without
  MLflow from then on.
- The tracking URI was checked against the operator's allowed hosts at create
  (service/core/integrations.py); nothing here follows redirects to other hosts.
- No threads start at import or construction: the thread starts on the first metric.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobstore.documents import JobSpec

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 10.0
# How long the end of a job waits for the queued metrics to reach MLflow.
FINISH_TIMEOUT_SECONDS = 30.0
SEND_INTERVAL_SECONDS = 1.0
MAX_METRICS_PER_BATCH = 1000  # the server's limit for runs/log-batch
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000

# Event writer: (event type, message). The recipe passes its Reporter.event.
EventSink = Callable[[str, str], None]


class MlflowError(Exception):
    """A call to the tracking server failed (network, HTTP status, or bad answer)."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is an error: the allowed host is the only one we talk to


class MlflowClient:
    """The few REST calls the trainer makes; each raises MlflowError on any failure."""

    def __init__(self, tracking_uri: str, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self.base = tracking_uri.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirects)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.base}/api/2.0/mlflow/{path}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            detail = error.read()[:500].decode("utf-8", "replace")
            raise MlflowError(f"{method} {path}: HTTP {error.code} {detail}") from error
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise MlflowError(f"{method} {path}: {error}") from error

    def experiment_id(self, name: str) -> str:
        """The id of experiment `name`, created if it does not exist."""
        query = urllib.parse.urlencode({"experiment_name": name})
        try:
            found = self._call("GET", f"experiments/get-by-name?{query}")
            return str(found["experiment"]["experiment_id"])
        except MlflowError as error:
            if "RESOURCE_DOES_NOT_EXIST" not in str(error):
                raise
        try:
            return str(self._call("POST", "experiments/create", {"name": name})["experiment_id"])
        except MlflowError as error:
            if "RESOURCE_ALREADY_EXISTS" not in str(error):
                raise
            found = self._call("GET", f"experiments/get-by-name?{query}")  # created meanwhile
            return str(found["experiment"]["experiment_id"])

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> str:
        answer = self._call(
            "POST",
            "runs/create",
            {
                "experiment_id": experiment_id,
                "run_name": name,
                "start_time": _now_ms(),
                "tags": [{"key": key, "value": value} for key, value in tags.items()],
            },
        )
        return str(answer["run"]["info"]["run_id"])

    def log_batch(
        self,
        run_id: str,
        *,
        metrics: list[dict[str, Any]] | None = None,
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self._call(
            "POST",
            "runs/log-batch",
            {
                "run_id": run_id,
                "metrics": metrics or [],
                "params": [{"key": k, "value": v} for k, v in (params or {}).items()],
                "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
            },
        )

    def end_run(self, run_id: str, status: str) -> None:
        self._call(
            "POST", "runs/update", {"run_id": run_id, "status": status, "end_time": _now_ms()}
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


def job_params(spec: JobSpec) -> dict[str, str]:
    """The run's params: every hyperparameter, and where the job's inputs come from."""
    params: dict[str, str] = {
        "customizationType": spec.customizationType,
        "baseModelIdentifier": spec.baseModelIdentifier,
        "trainingData": spec.trainingDataConfig.s3Uri,
        "jobId": spec.jobId,
    }
    if spec.validationDataConfig is not None:
        params["validationData"] = spec.validationDataConfig.s3Uri
    for name, value in spec.hyperParameters.model_dump(mode="json").items():
        params[name] = value if isinstance(value, str) else json.dumps(value)
    return {key: value[:MAX_PARAM_VALUE] for key, value in params.items()}


@dataclass
class _Finish:
    status: str
    model_uri: str | None
    done: threading.Event


class MlflowTracking:
    """One job's MLflow run, fed from the training loop, sent from a background thread."""

    def __init__(
        self, spec: JobSpec, tracking_uri: str, experiment_name: str, events: EventSink
    ) -> None:
        self.spec = spec
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.client = MlflowClient(tracking_uri)
        self.events = events
        self.run_id: str | None = None
        self.failed = threading.Event()
        self._queue: queue.Queue[dict[str, Any] | _Finish] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._finished = False

    # -- called by the recipe (never blocks on the network) ---------------------------

    def log_metrics(self, step: int, values: dict[str, float | None]) -> None:
        """Queue metrics of optimizer step `step`; non-finite values are left out."""
        if self.failed.is_set() or self._finished:
            return
        timestamp = _now_ms()
        for key, value in values.items():
            if value is not None and math.isfinite(value):
                self._queue.put(
                    {"key": key, "value": float(value), "timestamp": timestamp, "step": step}
                )
        self._start_thread()

    def finish(self, status: str, model_uri: str | None = None) -> None:
        """Send what is queued, the model's location, and end the run with `status`
        (FINISHED, KILLED or FAILED). Waits at most FINISH_TIMEOUT_SECONDS."""
        if self._finished:
            return
        self._finished = True
        if self.failed.is_set() or self._thread is None:
            return  # gave up on MLflow, or no step was ever logged: no run to end
        done = threading.Event()
        self._queue.put(_Finish(status, model_uri, done))
        self._start_thread()
        if not done.wait(FINISH_TIMEOUT_SECONDS):
            log.warning(
                "MLflow did not take the end of the run within %.0f s", FINISH_TIMEOUT_SECONDS
            )

    # -- the sending thread -------------------------------------------------------------

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._send_loop, name="mlflow", daemon=True)
            self._thread.start()

    def _send_loop(self) -> None:
        while True:
            pending: list[dict[str, Any]] = []
            finish: _Finish | None = None
            item = self._queue.get()
            deadline = time.monotonic() + SEND_INTERVAL_SECONDS
            while True:  # gather what arrives within the interval into one batch
                if isinstance(item, _Finish):
                    finish = item
                    break
                pending.append(item)
                if len(pending) >= MAX_METRICS_PER_BATCH:
                    break
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            try:
                self._send(pending, finish)
            except MlflowError as error:
                self._give_up(error)
            if finish is not None:
                finish.done.set()
                return
            if self.failed.is_set():
                self._drain()
                return

    def _send(self, metrics: list[dict[str, Any]], finish: _Finish | None) -> None:
        if self.failed.is_set():
            return
        if self.run_id is None:
            self._start_run()
        assert self.run_id is not None
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
        if finish is not None:
            if finish.model_uri is not None:
                self.client.log_batch(
                    self.run_id,
                    params={"modelS3Uri": finish.model_uri},
                    tags={"tuneforge.modelS3Uri": finish.model_uri},
                )
            self.client.end_run(self.run_id, finish.status)

    def _start_run(self) -> None:
        experiment = self.client.experiment_id(self.experiment_name)
        tags = {
            "tuneforge.jobId": self.spec.jobId,
            "tuneforge.jobName": self.spec.jobName,
            "mlflow.source.name": "tuneforge",
        }
        run_id = self.client.create_run(experiment, self.spec.jobName, tags)
        params = job_params(self.spec)
        names = sorted(params)
        for start in range(0, len(names), MAX_PARAMS_PER_BATCH):
            chunk = {name: params[name] for name in names[start : start + MAX_PARAMS_PER_BATCH]}
            self.client.log_batch(run_id, params=chunk)
        self.run_id = run_id
        message = (
            f"MLflow run {run_id} ({self.spec.jobName}) in experiment "
            f"{self.experiment_name!r} at {self.tracking_uri}"
        )
        log.info("%s", message)
        self.events("MLFLOW_RUN", message)

    def _give_up(self, error: MlflowError) -> None:
        self.failed.set()
        message = (
            f"could not log to MLflow at {self.tracking_uri}: {error}; training goes on "
            "without MLflow tracking"
        )
        log.warning("%s", message)
        try:
            self.events("MLFLOW_UNAVAILABLE", message[:2000])
        except Exception:
            log.exception("could not record the MLflow warning event")

    def _drain(self) -> None:
        """After giving up: release anyone waiting on a finish still in the queue."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Finish):
                item.done.set()


class NoTracking:
    """For a job without integrations.mlflow: every call does nothing."""

    run_id: str | None = None

    def log_metrics(self, step: int, values: dict[str, float | None]) -> None:
        return None

    def finish(self, status: str, model_uri: str | None = None) -> None:
        return None


def tracking_for(spec: JobSpec, events: EventSink) -> MlflowTracking | NoTracking:
    """The job's tracker: MLflow when its spec asks for it, else one that does nothing."""
    mlflow = spec.integrations.mlflow if spec.integrations is not None else None
    if mlflow is None:
        return NoTracking()
    return MlflowTracking(spec, mlflow.trackingUri, mlflow.experimentName, events)
