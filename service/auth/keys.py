"""API keys: made once, shown once, stored only as a hash. Transport-free.

    keys/<key-id>.json   {keyId, tenant, createdAt, revoked, revokedAt, sha256}

A key reads `tfk_<key-id>_<secret>`: the id (12 hex digits) names the record to read, so
checking a key is one GET and a constant-time comparison of SHA-256 digests; the secret
(256 random bits) is what makes it unguessable, so a plain hash is enough (no salt or
slow hash: there is nothing to brute-force). Nothing stores the key itself.

Invariants:
- A record is created with If-None-Match: a key id is never reused.
- Revoking sets `revoked`; records are never deleted, so a revoked id stays refused.
- Every replica trusts what it read of a record for at most `cache_seconds`, so a
  revocation takes effect everywhere within that time.
- Memory is bounded whatever callers send: records read are kept in a least-recently-used
  map of `cache_size` known keys, and ids found missing in a separate one of the same
  size, so a flood of made-up ids never pushes out the keys in use. Lookups of ids not
  known (each costs a store read) are what the caller limits per client address
  (service/auth/tenants.py).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from pydantic import BaseModel, Field

from jobstore.documents import utc_now
from jobstore.storage import ObjectStore, PreconditionFailed, S3Location
from service.errors import InvalidArgument, KeyNotFound

KEY_PREFIX = "tfk"
TENANT_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
_KEY_ID = re.compile(r"^[0-9a-f]{12}$")
_KEY = re.compile(r"^tfk_(?P<id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{32,128})$")
_TENANT = re.compile(TENANT_PATTERN)


class KeyRecord(BaseModel):
    """What the store keeps of a key: never the key itself."""

    keyId: str
    tenant: str
    createdAt: str
    revoked: bool = False
    revokedAt: str | None = None
    sha256: str = Field(description="hex SHA-256 of the whole key")


@dataclass(frozen=True)
class NewKey:
    record: KeyRecord
    key: str  # shown to the operator once, then forgotten


def check_tenant(tenant: str) -> str:
    if not _TENANT.match(tenant):
        raise InvalidArgument("tenant must be 1-64 letters, digits, '-' or '_'", field="tenant")
    return tenant


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(
        self,
        storage: ObjectStore,
        bucket: str,
        *,
        cache_seconds: float = 2.0,
        cache_size: int = 10_000,
    ) -> None:
        self.storage = storage
        self.bucket = bucket
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        # key id -> (when read, record): records that exist, and ids found missing.
        self._known: OrderedDict[str, tuple[float, KeyRecord]] = OrderedDict()
        self._missing: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def _location(self, key_id: str) -> S3Location:
        if not _KEY_ID.match(key_id):
            raise KeyNotFound(key_id)
        return S3Location(self.bucket, f"keys/{key_id}.json")

    # -- admin -----------------------------------------------------------------

    def create(self, tenant: str) -> NewKey:
        check_tenant(tenant)
        while True:
            key_id = secrets.token_hex(6)
            key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
            record = KeyRecord(
                keyId=key_id, tenant=tenant, createdAt=utc_now(), sha256=_digest(key)
            )
            try:
                self.storage.put_json(
                    self._location(key_id), record.model_dump(mode="json"), if_none_match=True
                )
            except PreconditionFailed:
                continue  # 48 random bits collided: draw another id
            self._remember(key_id, record, time.monotonic())
            return NewKey(record, key)

    def get(self, key_id: str) -> KeyRecord:
        found = self.storage.get_json(self._location(key_id))
        if found is None:
            raise KeyNotFound(key_id)
        return KeyRecord.model_validate(found[0])

    def list(self) -> list[KeyRecord]:
        records = []
        for item in self.storage.list_objects(S3Location(self.bucket, "keys/")):
            found = self.storage.get_json(S3Location(self.bucket, item["key"]))
            if found is not None:
                records.append(KeyRecord.model_validate(found[0]))
        return sorted(records, key=lambda record: (record.createdAt, record.keyId))

    def any_exist(self) -> bool:
        return (
            next(iter(self.storage.list_objects(S3Location(self.bucket, "keys/"))), None)
            is not None
        )

    def revoke(self, key_id: str) -> KeyRecord:
        location = self._location(key_id)
        while True:
            found = self.storage.get_json(location)
            if found is None:
                raise KeyNotFound(key_id)
            record = KeyRecord.model_validate(found[0])
            if record.revoked:
                return record
            record.revoked, record.revokedAt = True, utc_now()
            try:
                self.storage.put_json(location, record.model_dump(mode="json"), if_match=found[1])
            except PreconditionFailed:
                continue  # changed in between: read again
            self._remember(key_id, record, time.monotonic())
            return record

    # -- requests ------------------------------------------------------------

    def tenant_of(self, key: str) -> str | None:
        """The tenant a valid, unrevoked key acts for; None for any other string."""
        match = _KEY.match(key)
        if match is None:
            return None
        record = self._cached(match.group("id"))
        if record is None or record.revoked:
            return None
        if not hmac.compare_digest(record.sha256.encode(), _digest(key).encode()):
            return None
        return record.tenant

    def knows_now(self, key: str) -> bool:
        """Whether `tenant_of(key)` can answer without reading the store: a malformed key,
        or one whose record (or absence) was read less than `cache_seconds` ago."""
        match = _KEY.match(key)
        if match is None:
            return True
        key_id, now = match.group("id"), time.monotonic()
        with self._lock:
            known = self._known.get(key_id)
            missing = self._missing.get(key_id)
        if known is not None:
            return now - known[0] < self.cache_seconds
        return missing is not None and now - missing < self.cache_seconds

    def is_unknown(self, key: str) -> bool:
        """Whether checking `key` would read the store for an id this replica has never
        seen exist: the lookups a flood of made-up keys makes (limited per client)."""
        match = _KEY.match(key)
        if match is None:
            return False
        with self._lock:
            return match.group("id") not in self._known

    def _remember(self, key_id: str, record: KeyRecord | None, when: float) -> None:
        with self._lock:
            if record is not None:
                self._missing.pop(key_id, None)
                self._known[key_id] = (when, record)
                self._known.move_to_end(key_id)
                while len(self._known) > self.cache_size:
                    self._known.popitem(last=False)
            else:
                self._known.pop(key_id, None)
                self._missing[key_id] = when
                self._missing.move_to_end(key_id)
                while len(self._missing) > self.cache_size:
                    self._missing.popitem(last=False)

    def _cached(self, key_id: str) -> KeyRecord | None:
        now = time.monotonic()
        with self._lock:
            known = self._known.get(key_id)
            missing = self._missing.get(key_id)
            if known is not None:
                self._known.move_to_end(key_id)
        if known is not None and now - known[0] < self.cache_seconds:
            return known[1]
        if known is None and missing is not None and now - missing < self.cache_seconds:
            return None
        try:
            record: KeyRecord | None = self.get(key_id)
        except KeyNotFound:
            record = None
        self._remember(key_id, record, now)
        return record
