"""Per-tenant limits: settings resolved for one tenant, and requests per second.

`TenantPolicy` is what the core needs to know about a tenant to create a job: how many
of its jobs may wait QUEUED, how many may run at once, which buckets its data, models
and outputs may live in. `RequestRate` is a token bucket per tenant in this replica's
memory (N replicas allow N times the rate; the limit is against floods, not billing).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from service.errors import InvalidArgument, TooManyRequests
from service.settings import Settings, TenantLimitOverrides
from service.storage import parse_s3_uri


@dataclass(frozen=True)
class TenantPolicy:
    tenant: str
    max_running_jobs: int  # 0: no limit but the launcher's slots
    max_queued_jobs: int  # 0: no limit
    requests_per_second: float  # 0: no limit
    burst: int
    allowed_buckets: tuple[str, ...]  # "*": any bucket but the state bucket
    state_bucket: str

    @classmethod
    def of(cls, settings: Settings, tenant: str) -> TenantPolicy:
        overrides = settings.tenant_limits.get(tenant) or TenantLimitOverrides()
        running, queued = overrides.max_running_jobs, overrides.max_queued_jobs
        rate, burst = overrides.requests_per_second, overrides.burst
        return cls(
            tenant=tenant,
            max_running_jobs=settings.tenant_max_running_jobs if running is None else running,
            max_queued_jobs=settings.tenant_max_queued_jobs if queued is None else queued,
            requests_per_second=settings.tenant_requests_per_second if rate is None else rate,
            burst=settings.tenant_burst if burst is None else burst,
            allowed_buckets=tuple(
                settings.tenant_allowed_buckets.get(tenant, settings.allowed_buckets)
            ),
            state_bucket=settings.state_bucket,
        )

    @classmethod
    def unlimited(cls, tenant: str, state_bucket: str) -> TenantPolicy:
        return cls(tenant, 0, 0, 0.0, 1, ("*",), state_bucket)

    def check_uri(self, uri: str, field: str) -> None:
        """Refuse a data, model or output URI outside the buckets this tenant may use.

        `parse_s3_uri` has already refused other schemes, `..`, `.` and empty segments
        (so no absolute-key tricks); here: an empty key, the state bucket (job documents
        and API keys live there), and buckets the operator did not allow.
        """
        location = parse_s3_uri(uri, field=field)
        if not location.key.strip("/"):
            raise InvalidArgument(
                f"{field} must name a folder or object inside the bucket, not the bucket "
                f"root: {uri!r}",
                field=field,
            )
        if location.bucket == self.state_bucket:
            raise InvalidArgument(
                f"{field}: bucket {location.bucket!r} holds the service's own state and "
                "cannot be used for job data, models or outputs",
                field=field,
            )
        if "*" not in self.allowed_buckets and location.bucket not in self.allowed_buckets:
            allowed = ", ".join(sorted(self.allowed_buckets)) or "none"
            raise InvalidArgument(
                f"{field}: bucket {location.bucket!r} is not one this tenant may use "
                f"(allowed: {allowed})",
                field=field,
            )


class RequestRate:
    """A token bucket per tenant; `take` raises TooManyRequests when one is empty."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, policy: TenantPolicy) -> None:
        rate = policy.requests_per_second
        if rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(policy.tenant, (float(policy.burst), now))
            tokens = min(float(policy.burst), tokens + (now - last) * rate)
            if tokens >= 1:
                self._buckets[policy.tenant] = (tokens - 1, now)
                return
            self._buckets[policy.tenant] = (tokens, now)
        wait = (1 - tokens) / rate
        raise TooManyRequests(
            f"too many requests: tenant '{policy.tenant}' may send {rate:g} per second "
            f"(bursts of {policy.burst}); retry in {math.ceil(wait)} s",
            retry_after_seconds=wait,
        )
