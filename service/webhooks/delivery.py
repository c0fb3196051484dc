"""Job notifications: a signed JSON POST to the job's `notifications.webhookUrl` when it
reaches a terminal state (COMPLETED, FAILED, STOPPED).

Invariants:
- A webhook URL is http(s) and its host is one the operator allowed
  (`TUNEFORGE_WEBHOOK_ALLOWED_HOSTS`); anything else is refused at create, naming
  `notifications.webhookUrl`. Redirects are not followed (they could leave those hosts).
- Exactly one replica delivers: it claims the delivery by creating
  `webhooks/<job-id>.json` in the state bucket with `If-None-Match: *`. The record ends
  `delivered` or `failed`; a claim older than `_STALE_CLAIM_SECONDS` (its replica died)
  may be taken over with `If-Match`. The reconciler keeps a finished job active until
  its record has ended, so a delivery is not lost when a replica dies: delivery is
  at-least-once (a receiver may see a repeat; `deliveryId` is the same each time).
- Delivery runs on a worker thread, never in the reconcile pass: retried with
  exponential backoff for `max_attempts` tries, then the job gets a WEBHOOK_FAILED event.

Signature: `X-Tuneforge-Signature: t=<unix seconds>,v1=<hex>` where hex is
HMAC-SHA256(secret, f"{t}.".encode() + body) and `secret` is the job's tenant's own
(service/webhooks/secrets.py: `GET /v1/webhook-secret`); `verify_signature()` is the
receiver's check (docs/operating.md has the same snippet).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from jobstore.documents import JobSpec, JobStatus, utc_now
from jobstore.storage import PreconditionFailed, S3Location
from jobstore.store import Job, JobStore
from service.errors import InvalidArgument
from service.observability.metrics import Metrics
from service.observability.request_context import bind_job
from service.webhooks.secrets import WebhookSecrets

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Tuneforge-Signature"
FIELD = "notifications.webhookUrl"
_STALE_CLAIM_SECONDS = 600.0


# -- checks at create ----------------------------------------------------------------


def check_webhook_url(url: str, allowed_hosts: Collection[str]) -> str:
    """Return `url` if a job may notify it; raise InvalidArgument naming the field."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(f"{FIELD} must be an http:// or https:// URL", field=FIELD)
    if parts.username or parts.password:
        raise InvalidArgument(f"{FIELD} must not carry credentials", field=FIELD)
    if not allowed_hosts:
        raise InvalidArgument(
            f"{FIELD}: this server sends no webhooks (the operator allowed no hosts)",
            field=FIELD,
        )
    host = parts.hostname.lower()
    if host not in {h.lower() for h in allowed_hosts}:
        raise InvalidArgument(
            f"{FIELD}: host {host!r} is not one this server may notify; allowed: "
            f"{', '.join(sorted(allowed_hosts))}",
            field=FIELD,
        )
    return url


# -- signing -------------------------------------------------------------------------


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Tuneforge-Signature header value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify_signature(
    secret: str, body: bytes, header: str, *, tolerance_seconds: float = 300.0
) -> bool:
    """True if `header` signs `body` with `secret`, within `tolerance_seconds` of now."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_seconds:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), fields.get("v1", ""))


def payload(spec: JobSpec, status: JobStatus) -> dict[str, Any]:
    failure = (
        {"reason": status.failure.reason.value, "message": status.failure.message}
        if status.failure
        else None
    )
    return {
        "deliveryId": f"{spec.jobId}.{status.state.value}",
        "jobId": spec.jobId,
        "jobName": spec.jobName,
        "state": status.state.value,
        "failure": failure,
        "createdAt": spec.createdAt,
        "startedAt": status.startedAt,
        "endedAt": status.endedAt,
        "outputS3Uri": spec.output_prefix,
        "modelS3Uri": spec.output_prefix + "model/",
    }


def webhook_url(spec: JobSpec) -> str | None:
    notifications = getattr(spec, "notifications", None)
    if notifications is None:
        return None
    url = getattr(notifications, "webhookUrl", None)
    return url if isinstance(url, str) else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# -- delivery ------------------------------------------------------------------------


class WebhookNotifier:
    """Claims and delivers terminal-state notifications; `settled()` is the reconciler's
    question "may this finished job leave the active set?"."""

    def __init__(
        self,
        store: JobStore,
        secrets: WebhookSecrets,
        *,
        metrics: Metrics | None = None,
        max_attempts: int = 6,
        retry_seconds: float = 1.0,
        timeout_seconds: float = 10.0,
        replica_id: str = "",
    ) -> None:
        self.store = store
        self.secrets = secrets  # each tenant's: a job's deliveries are signed with its tenant's
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.retry_seconds = retry_seconds
        self.timeout_seconds = timeout_seconds
        self.replica_id = replica_id
        self._queue: queue.Queue[tuple[Job, str] | None] = queue.Queue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._opener = urllib.request.build_opener(_NoRedirect)

    def _record(self, job_id: str) -> S3Location:
        # job_id was checked by the store when the job was read.
        return S3Location(self.store.bucket, f"webhooks/{job_id}.json")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def settled(self, job: Job) -> bool:
        """True when `job` (terminal) needs no more delivery work: it has no webhook, or
        its delivery ended. Otherwise claims the delivery when nobody holds it and
        queues it here, and returns False (ask again on a later pass)."""
        url = webhook_url(job.spec)
        if url is None or not job.status.state.is_terminal():
            return True
        job_id = job.spec.jobId
        with self._lock:
            if job_id in self._pending:
                return False
        location = self._record(job_id)
        try:
            found = self.store.storage.get_json(location)
        except ValueError as error:  # a damaged delivery record must not hold the job
            log.error(
                "job %s: its webhook record %s does not read (%s); not delivered again",
                job_id,
                location.uri,
                error,
            )
            return True
        claim = {"state": job.status.state.value, "outcome": "claimed", "claimedAt": utc_now()}
        claim["claimedBy"] = self.replica_id
        try:
            if found is None:
                self.store.storage.put_json(location, claim, if_none_match=True)
            elif found[0].get("outcome") in ("delivered", "failed"):
                return True
            elif _age_seconds(found[0].get("claimedAt")) > _STALE_CLAIM_SECONDS:
                self.store.storage.put_json(location, claim, if_match=found[1])
            else:
                return False  # another replica is delivering it
        except PreconditionFailed:
            return False  # another replica claimed it first
        with self._lock:
            self._pending.add(job_id)
        self._queue.put((job, url))
        return False

    def _work(self) -> None:
        while not self._stopping.is_set():
            item = self._queue.get()
            if item is None:
                return
            job, url = item
            with bind_job(job.spec.jobId, job.spec.tenant, _attempt(job)):
                try:
                    self._deliver(job, url)
                except Exception:
                    log.exception("webhook delivery failed unexpectedly")
                finally:
                    with self._lock:
                        self._pending.discard(job.spec.jobId)

    def _deliver(self, job: Job, url: str) -> None:
        status, _ = self.store.get_status(job.spec.jobId)
        body = json.dumps(payload(job.spec, status), separators=(",", ":")).encode()
        problem = ""
        for attempt in range(1, self.max_attempts + 1):
            if self._stopping.is_set():
                return  # the claim goes stale; another replica (or a restart) delivers
            problem = self._post(url, body, self.secrets.current(job.spec.tenant).secret)
            if not problem:
                self._finish(job, "delivered", attempt)
                log.info("webhook delivered", extra={"tries": attempt})
                return
            self._count("retried" if attempt < self.max_attempts else "failed")
            log.warning("webhook delivery failed: %s", problem, extra={"tries": attempt})
            if attempt < self.max_attempts:
                self._stopping.wait(self.retry_seconds * 2 ** (attempt - 1))
        self._finish(job, "failed", self.max_attempts)
        host = urlsplit(url).hostname
        self.store.append_event(
            job.spec.jobId,
            "WEBHOOK_FAILED",
            f"the {status.state.value} notification to {host} failed {self.max_attempts} "
            f"times; last: {problem}",
        )

    def _post(self, url: str, body: bytes, secret: str) -> str:
        """POST once, signed with `secret`; return '' on a 2xx answer, else what went
        wrong."""
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "tuneforge-webhooks/1",
                SIGNATURE_HEADER: sign(secret, body, int(time.time())),
            },
        )
        try:
            with self._opener.open(request, timeout=self.timeout_seconds) as response:
                code = response.status
        except urllib.error.HTTPError as error:
            code = error.code
        except (urllib.error.URLError, OSError) as error:
            return f"{type(error).__name__}: {getattr(error, 'reason', error)}"
        return "" if 200 <= code < 300 else f"HTTP {code}"

    def _finish(self, job: Job, outcome: str, tries: int) -> None:
        if outcome == "delivered":
            self._count("delivered")
        record = {
            "state": job.status.state.value,
            "outcome": outcome,
            "tries": tries,
            "endedAt": utc_now(),
        }
        self.store.storage.put_json(self._record(job.spec.jobId), record)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_deliveries.labels(outcome).inc()


def _attempt(job: Job) -> int:
    return job.status.launch.attempt if job.status.launch else 0


def _age_seconds(timestamp: Any) -> float:
    if not isinstance(timestamp, str):
        return float("inf")
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return (datetime.now(UTC) - then).total_seconds()
