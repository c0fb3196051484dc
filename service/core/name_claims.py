"""Names a tenant claims in the state bucket, one small record per name, by compare-and-swap.

    <folder>/<tenant>/<name>.json      a record naming (in time) the job that holds the name

Used for the Bedrock face's job names (`names/`) and for custom model names (`models/`).

Invariants:
- A record is created with If-None-Match: of two claims of one name, exactly one wins and
  the other reads the winner's record.
- A record is changed only with If-Match on the version read (`replace`, `set_job_id`),
  so a change made on a stale read loses instead of overwriting.
- The job id is written once, after the job exists; a record without one is a create in
  flight (or one that died half-way).
- Keys are built here from a tenant id and a name that match their patterns; anything
  else has no record (`location` is None).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from jobstore.storage import PreconditionFailed, S3Location
from jobstore.store import JobStore
from service.errors import InvalidArgument, NameConflict

_TENANT = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# How often a claim is tried again when the holder it lost to gave the name up before its
# record could be read; more means another create keeps taking and giving up the name.
_CLAIM_ATTEMPTS = 3


class ClaimRecord(BaseModel):
    """What every claim record holds: the job that holds the name, once it exists."""

    jobId: str | None = None


RecordT = TypeVar("RecordT", bound=ClaimRecord)


@dataclass(frozen=True)
class NameClaims(Generic[RecordT]):
    """The claims of one kind of name (`folder`), with records of `record_type`."""

    store: JobStore
    folder: str
    record_type: type[RecordT]
    name_pattern: re.Pattern[str]
    max_name_length: int = 63

    def location(self, tenant: str, name: str) -> S3Location | None:
        if (
            len(name) > self.max_name_length
            or not self.name_pattern.match(name)
            or not _TENANT.match(tenant)
        ):
            return None
        return S3Location(self.store.bucket, f"{self.folder}/{tenant}/{name}.json")

    def _valid_location(self, tenant: str, name: str) -> S3Location:
        location = self.location(tenant, name)
        if location is None:  # callers validate names first: a bug, said plainly
            raise InvalidArgument(f"'{name}' is not a name that can be claimed", field="name")
        return location

    def claim(self, tenant: str, name: str, record: RecordT) -> tuple[RecordT, bool]:
        """Create `record` for `name`; return the record that holds the name and whether
        it is ours. Raises NameConflict if the name keeps changing hands while we try."""
        location = self._valid_location(tenant, name)
        for _ in range(_CLAIM_ATTEMPTS):
            try:
                self.store.storage.put_json(
                    location, record.model_dump(mode="json"), if_none_match=True
                )
                return record, True
            except PreconditionFailed:
                holder = self.get(tenant, name)
                if holder is not None:
                    return holder, False
                # The holder gave the name up between our write and our read: try again.
        raise NameConflict(
            f"the name '{name}' is being claimed and released by other requests; retry"
        )

    def replace(self, tenant: str, name: str, record: RecordT, holder: RecordT) -> bool:
        """Give `name` to `record` if its record is still exactly `holder` (If-Match on the
        version read); returns whether it did."""
        location = self._valid_location(tenant, name)
        found = self.store.storage.get_json(location)
        if found is None or self.record_type.model_validate(found[0]) != holder:
            return False
        try:
            self.store.storage.put_json(location, record.model_dump(mode="json"), if_match=found[1])
        except PreconditionFailed:
            return False
        return True

    def set_job_id(self, tenant: str, name: str, job_id: str) -> None:
        """Name the job that now holds `name`, once; a record gone or already set is left."""
        location = self._valid_location(tenant, name)
        found = self.store.storage.get_json(location)
        if found is None:
            return
        record = self.record_type.model_validate(found[0])
        if record.jobId is not None:
            return
        record.jobId = job_id
        try:
            self.store.storage.put_json(location, record.model_dump(mode="json"), if_match=found[1])
        except PreconditionFailed:
            pass  # another replica finished the same create and wrote the same id

    def release(self, tenant: str, name: str) -> None:
        location = self.location(tenant, name)
        if location is not None:
            self.store.storage.delete(location)

    def get(self, tenant: str, name: str) -> RecordT | None:
        location = self.location(tenant, name)
        if location is None:
            return None
        found = self.store.storage.get_json(location)
        return None if found is None else self.record_type.model_validate(found[0])

    def list(self, tenant: str) -> list[RecordT]:
        """Every record of `tenant` (one read each; a record deleted meanwhile is left out)."""
        if not _TENANT.match(tenant):
            return []
        records = []
        folder = S3Location(self.store.bucket, f"{self.folder}/{tenant}/")
        for item in self.store.storage.list_objects(folder):
            found = self.store.storage.get_json(S3Location(self.store.bucket, item["key"]))
            if found is not None:
                records.append(self.record_type.model_validate(found[0]))
        return records
