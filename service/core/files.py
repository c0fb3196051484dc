"""Files a tenant uploads for its jobs' data (the OpenAI face's Files API). Transport-free.

    s3://<files_bucket>/<tenant>/<file-id>.jsonl     the bytes, as uploaded
    <state bucket>/files/<tenant>/<file-id>.json     {id, filename, bytes, createdAt, purpose}

Invariants:
- A file belongs to one tenant: its keys are built here from the tenant id and a file id
  this module made (`file-` and 24 hex digits); an id of any other form is not found, and
  one tenant never reads, lists or deletes another's.
- The bytes are written first and the record last (If-None-Match), so a file that is
  listed is whole; an upload cut short leaves no record (and its bytes are overwritten by
  nothing: the id is new each time). Deleting removes the record first, and is refused
  while a job that has not ended reads the file (it would fail, or fail to resume).
- The upload is streamed to the store in parts; nothing holds a whole file in memory.
- A job reads a file by its s3:// URI, which every tenant's data grant includes for its
  own files folder (`TenantPolicy.files_folder`).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from typing import BinaryIO

from pydantic import BaseModel

from jobstore.storage import ObjectMissing, S3Location
from jobstore.store import JobStore
from service.errors import FailedPrecondition, FileNotFound, InvalidArgument, TuneforgeError

_FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
_TENANT = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
PURPOSES = ("fine-tune",)


class FileRecord(BaseModel):
    id: str
    filename: str
    bytes: int
    createdAt: int  # Unix seconds
    purpose: str


class FileStore:
    """The files of every tenant, in the files bucket, with their records in the store."""

    def __init__(self, store: JobStore, files_bucket: str) -> None:
        self.store = store
        self.files_bucket = files_bucket

    def _record_location(self, tenant: str, file_id: str) -> S3Location | None:
        if not _FILE_ID.match(file_id) or not _TENANT.match(tenant):
            return None
        return S3Location(self.store.bucket, f"files/{tenant}/{file_id}.json")

    def content_location(self, tenant: str, file_id: str) -> S3Location:
        return S3Location(self.files_bucket, f"{tenant}/{file_id}.jsonl")

    def uri(self, tenant: str, file_id: str) -> str:
        """The s3:// URI a job names to read the file (the file must exist)."""
        self.get(tenant, file_id)
        return self.content_location(tenant, file_id).uri

    def file_id_of(self, tenant: str, uri: str) -> str | None:
        """The id of the tenant's file at `uri`, None when `uri` is not one."""
        prefix = f"s3://{self.files_bucket}/{tenant}/"
        if not uri.startswith(prefix) or not uri.endswith(".jsonl"):
            return None
        file_id = uri[len(prefix) : -len(".jsonl")]
        return file_id if _FILE_ID.match(file_id) else None

    def upload(self, tenant: str, filename: str, purpose: str, stream: BinaryIO) -> FileRecord:
        if purpose not in PURPOSES:
            raise InvalidArgument(
                f"purpose '{purpose}' is not one this service takes: use one of "
                f"{', '.join(PURPOSES)}",
                field="purpose",
            )
        file_id = f"file-{secrets.token_hex(12)}"
        record_location = self._record_location(tenant, file_id)
        if record_location is None:
            raise InvalidArgument(f"tenant '{tenant}' cannot hold files", field="tenant")
        content = self.content_location(tenant, file_id)
        self.store.storage.upload_stream(stream, content, content_type="application/jsonl")
        head = self.store.storage.head(content)
        size = int(head["ContentLength"]) if head is not None else 0
        record = FileRecord(
            id=file_id,
            filename=filename[:256] or "upload.jsonl",
            bytes=size,
            createdAt=int(time.time()),
            purpose=purpose,
        )
        self.store.storage.put_json(record_location, record.model_dump(), if_none_match=True)
        return record

    def get(self, tenant: str, file_id: str, *, field: str = "file_id") -> FileRecord:
        location = self._record_location(tenant, file_id)
        found = None if location is None else self.store.storage.get_json(location)
        if found is None:
            raise FileNotFound(file_id, field)
        return FileRecord.model_validate(found[0])

    def list(self, tenant: str) -> list[FileRecord]:
        """The tenant's files, newest first."""
        if not _TENANT.match(tenant):
            return []
        records = []
        folder = S3Location(self.store.bucket, f"files/{tenant}/")
        for item in self.store.storage.list_objects(folder):
            found = self.store.storage.get_json(S3Location(self.store.bucket, item["key"]))
            if found is not None:
                records.append(FileRecord.model_validate(found[0]))
        records.sort(key=lambda record: (record.createdAt, record.id), reverse=True)
        return records

    def content(self, tenant: str, file_id: str) -> Iterator[bytes]:
        self.get(tenant, file_id)
        try:
            return self.store.storage.read_stream(self.content_location(tenant, file_id))
        except ObjectMissing:
            raise FileNotFound(file_id) from None

    def delete(self, tenant: str, file_id: str) -> None:
        location = self._record_location(tenant, file_id)
        self.get(tenant, file_id)
        assert location is not None
        users = jobs_reading(self.store, tenant, self.uri(tenant, file_id))
        if users:
            raise FailedPrecondition(
                f"file {file_id} is the data of job(s) {', '.join(users)} that have not "
                "ended; cancel them or wait for them to end, then delete it",
                field="file_id",
            )
        self.store.storage.delete(location)
        self.store.storage.delete(self.content_location(tenant, file_id))


def jobs_reading(store: JobStore, tenant: str, uri: str) -> list[str]:
    """Ids of the tenant's jobs not yet ended whose training or validation data is `uri`
    (only the tenant's own jobs can read its files). A check, not a lock: a job created
    right after it may still find the file gone, and fails naming it."""
    users = []
    for job_id in store.list_active_job_ids():
        try:
            spec = store.get_spec(job_id)
            if spec.tenant != tenant:
                continue
            data = [spec.trainingDataConfig.s3Uri]
            if spec.validationDataConfig is not None:
                data.append(spec.validationDataConfig.s3Uri)
            if uri in data and not store.get_status(job_id)[0].state.is_terminal():
                users.append(job_id)
        except TuneforgeError:  # gone meanwhile, or unreadable: not a reader of this
            continue
    return users
