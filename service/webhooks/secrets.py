"""Each tenant's webhook signing secret: deliveries of a job are signed with its tenant's.

Invariants:
- A tenant's secret is derived, never stored: HMAC-SHA256 of the operator's
  TUNEFORGE_WEBHOOK_SECRET over "tuneforge-webhook:<tenant>:<generation>", shown as
  `whsec_<hex>`. The operator's secret signs nothing itself and is shown to no one; a
  tenant's secret tells nothing about another tenant's (nor about the operator's), so
  no tenant can forge another's notifications.
- It exists from the first use: a tenant with no record is at generation 1, no write
  needed. `webhook-secrets/<tenant>.json` in the state bucket holds only the generation
  and when it was rotated; a rotation is a compare-and-swap to the next generation, so
  two rotations at once give two generations, never one lost.
- Replicas read the generation again after `cache_seconds`: a delivery signed within that
  long after a rotation may carry the previous secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from dataclasses import dataclass

from jobstore.documents import utc_now
from jobstore.storage import ObjectStore, PreconditionFailed, S3Location
from service.errors import InvalidArgument

_TENANT = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_PREFIX = "whsec_"


@dataclass(frozen=True)
class TenantWebhookSecret:
    tenant: str
    secret: str
    generation: int
    rotatedAt: str | None  # None: never rotated (generation 1)


class WebhookSecrets:
    def __init__(
        self,
        storage: ObjectStore,
        bucket: str,
        operator_secret: str,
        *,
        cache_seconds: float = 2.0,
    ) -> None:
        self.storage = storage
        self.bucket = bucket
        self._key = operator_secret.encode()
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, TenantWebhookSecret]] = {}
        self._lock = threading.Lock()

    def _location(self, tenant: str) -> S3Location:
        if not _TENANT.match(tenant):
            raise InvalidArgument(f"invalid tenant {tenant!r}", field="tenant")
        return S3Location(self.bucket, f"webhook-secrets/{tenant}.json")

    def _derive(self, tenant: str, generation: int) -> str:
        message = f"tuneforge-webhook:{tenant}:{generation}".encode()
        return _PREFIX + hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _read(self, tenant: str) -> tuple[TenantWebhookSecret, str | None]:
        found = self.storage.get_json(self._location(tenant))
        if found is None:
            return TenantWebhookSecret(tenant, self._derive(tenant, 1), 1, None), None
        record, etag = found
        generation = int(record["generation"])
        secret = TenantWebhookSecret(
            tenant, self._derive(tenant, generation), generation, record.get("rotatedAt")
        )
        return secret, etag

    def current(self, tenant: str) -> TenantWebhookSecret:
        """The secret that signs this tenant's deliveries now."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(tenant)
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        secret, _ = self._read(tenant)
        with self._lock:
            self._cache[tenant] = (now, secret)
        return secret

    def rotate(self, tenant: str) -> TenantWebhookSecret:
        """Move the tenant to its next secret; the previous one stops signing (on every
        replica within `cache_seconds`)."""
        location = self._location(tenant)
        for _ in range(20):
            current, etag = self._read(tenant)
            generation, rotated_at = current.generation + 1, utc_now()
            record = {"generation": generation, "rotatedAt": rotated_at}
            try:
                if etag is None:
                    self.storage.put_json(location, record, if_none_match=True)
                else:
                    self.storage.put_json(location, record, if_match=etag)
            except PreconditionFailed:
                continue  # rotated at the same moment elsewhere: rotate from that one
            rotated = TenantWebhookSecret(
                tenant, self._derive(tenant, generation), generation, rotated_at
            )
            with self._lock:
                self._cache[tenant] = (time.monotonic(), rotated)
            return rotated
        raise RuntimeError(f"the webhook secret of tenant {tenant} kept changing; try again")
