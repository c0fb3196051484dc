"""Per-tenant limits: settings resolved for one tenant, and requests per second.

`TenantPolicy` is what the core needs to know about a tenant to create a job: how many
of its jobs may wait QUEUED, how many may run at once, and its grants: the buckets and
folders its data, models and outputs may live in.

Grants (docs/auth.md, "Buckets: what each tenant may use"): with authentication on, a
tenant may use only what is granted to it: its own list
(TUNEFORGE_TENANT_ALLOWED_BUCKETS), else the list for every tenant
(TUNEFORGE_ALLOWED_BUCKETS, empty unless the operator sets it), plus its own folder
`s3://<TUNEFORGE_TENANT_HOME_BUCKET>/<tenant>/` when that bucket is set.
Nothing is granted to everyone by default; "*" (any bucket) only when written out. With
authentication off (development mode, one tenant) the default is "*". The state bucket
is never usable, whatever is granted. `RequestRate` is a token bucket per tenant in this replica's
memory (N replicas allow N times the rate; the limit is against floods, not billing).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from jobstore.storage import S3Location, parse_s3_uri
from service.errors import InvalidArgument, PermissionDenied, TooManyRequests
from service.settings import Settings, TenantLimitOverrides

ANY_BUCKET = "*"


@dataclass(frozen=True)
class Grant:
    """A bucket, or a folder in one (`prefix` ends with "/"), that a tenant may use."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> Grant:
        """From `bucket`, `bucket/folder` or `s3://bucket/folder/`; a folder always ends
        at a "/" (a grant of `shared/team` must not reach `shared/team2/`)."""
        location = parse_s3_uri(text if text.startswith("s3://") else f"s3://{text}", field="grant")
        prefix = location.key.strip("/")
        return cls(location.bucket, f"{prefix}/" if prefix else "")

    def covers(self, location: S3Location) -> bool:
        return location.bucket == self.bucket and location.key.startswith(self.prefix)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def tenant_grants(settings: Settings, tenant: str, *, authenticated: bool) -> tuple[str, ...]:
    """What `tenant` may use, as written in settings ("*" for any bucket)."""
    shared = settings.allowed_buckets
    if shared is None:
        shared = [] if authenticated else [ANY_BUCKET]
    grants = list(settings.tenant_allowed_buckets.get(tenant, shared))
    if settings.tenant_home_bucket:
        grants.append(f"{settings.tenant_home_bucket}/{tenant}/")
    return tuple(grants)


@dataclass(frozen=True)
class TenantPolicy:
    tenant: str
    max_running_jobs: int  # 0: no limit but the launcher's slots
    max_queued_jobs: int  # 0: no limit
    requests_per_second: float  # 0: no limit
    burst: int
    allowed_buckets: tuple[str, ...]  # grants (`Grant.parse`); "*": any but the state bucket
    state_bucket: str
    # "bucket/tenant/": the tenant's own folder of uploaded files (service/core/files.py)
    # and of the outputs of jobs made from them; granted to every tenant.
    files_folder: str | None = None

    @classmethod
    def of(cls, settings: Settings, tenant: str, *, authenticated: bool = True) -> TenantPolicy:
        overrides = settings.tenant_limits.get(tenant) or TenantLimitOverrides()
        running, queued = overrides.max_running_jobs, overrides.max_queued_jobs
        rate, burst = overrides.requests_per_second, overrides.burst
        return cls(
            tenant=tenant,
            max_running_jobs=settings.tenant_max_running_jobs if running is None else running,
            max_queued_jobs=settings.tenant_max_queued_jobs if queued is None else queued,
            requests_per_second=settings.tenant_requests_per_second if rate is None else rate,
            burst=settings.tenant_burst if burst is None else burst,
            allowed_buckets=tenant_grants(settings, tenant, authenticated=authenticated),
            state_bucket=settings.state_bucket,
            files_folder=f"{settings.files_bucket}/{tenant}/",
        )

    @property
    def trainer_grants(self) -> tuple[str, ...]:
        """Where the tenant's trainers may read and write: its grants and its files."""
        return self.allowed_buckets + ((self.files_folder,) if self.files_folder else ())

    @classmethod
    def unlimited(cls, tenant: str, state_bucket: str) -> TenantPolicy:
        return cls(tenant, 0, 0, 0.0, 1, (ANY_BUCKET,), state_bucket)

    def check_uri(self, uri: str, field: str) -> None:
        """Refuse a data, model or output URI outside what this tenant may use.

        `parse_s3_uri` has already refused other schemes, `..`, `.` and empty segments
        (so no absolute-key tricks); here: an empty key and the state bucket (job
        documents and API keys live there) are invalid (InvalidArgument), and a URI
        outside the tenant's grants is not allowed (PermissionDenied, naming the field,
        the URI and the grants). The tenant's own files folder is always granted, and
        the rest of the files bucket never is unless a grant names it ("*" does not).
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
        if self.files_folder and Grant.parse(self.files_folder).covers(location):
            return
        grants = [Grant.parse(grant) for grant in self.allowed_buckets if grant != ANY_BUCKET]
        if any(grant.covers(location) for grant in grants):
            return
        files_bucket = self.files_folder.split("/", 1)[0] if self.files_folder else None
        if location.bucket == files_bucket:
            # Every tenant's uploads live there: "*" does not reach another's folder.
            raise PermissionDenied(
                f"{field}: {uri} is in the service's files bucket, outside the files of "
                f"tenant '{self.tenant}' (s3://{self.files_folder})",
                field=field,
            )
        if ANY_BUCKET in self.allowed_buckets:
            return
        if not any(grant.covers(location) for grant in grants):
            granted = ", ".join(sorted(str(grant) for grant in grants)) or (
                "nothing: the operator grants buckets with TUNEFORGE_TENANT_ALLOWED_BUCKETS, "
                "TUNEFORGE_ALLOWED_BUCKETS or TUNEFORGE_TENANT_HOME_BUCKET"
            )
            own = f"; and its own files, s3://{self.files_folder}" if self.files_folder else ""
            raise PermissionDenied(
                f"{field}: {uri} is outside what tenant '{self.tenant}' may use "
                f"(granted: {granted}{own})",
                field=field,
            )


class TokenBuckets:
    """Token buckets by name (a tenant, a client address) in this process's memory,
    refilled at `rate` per second up to `burst`. At most `max_buckets` are kept; the
    least recently used goes first (it had refilled, or nearly)."""

    def __init__(self, max_buckets: int = 10_000) -> None:
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, name: str, rate: float, burst: int) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(name, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            taken = tokens >= 1
            self._buckets[name] = (tokens - 1 if taken else tokens, now)
            self._buckets.move_to_end(name)
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
        return 0.0 if taken else (1 - tokens) / rate


class RequestRate:
    """A token bucket per tenant; `take` raises TooManyRequests when one is empty."""

    def __init__(self) -> None:
        self._buckets = TokenBuckets()

    def take(self, policy: TenantPolicy) -> None:
        rate = policy.requests_per_second
        if rate <= 0:
            return
        wait = self._buckets.take(policy.tenant, rate, policy.burst)
        if wait <= 0:
            return
        raise TooManyRequests(
            f"too many requests: tenant '{policy.tenant}' may send {rate:g} per second "
            f"(bursts of {policy.burst}); retry in {math.ceil(wait)} s",
            retry_after_seconds=wait,
        )
