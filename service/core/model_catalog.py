"""Models by name: the base models a tenant may fine-tune, and the models its jobs made.
Transport-free (the OpenAI face's `model` and /v1/models).

- Base models: the operator's catalog (TUNEFORGE_BASE_MODELS, name -> s3:// folder), and
  the demo's tiny model as `tiny-llama` wherever the demo assets are in the store.
- Fine-tuned models: `ft:<base>:<suffix>:<job-id>` for each COMPLETED job of the tenant
  (the suffix is the job's name); its files are the job's `model/` folder. Deleting one
  removes those files, then leaves a marker, `deleted-models/<tenant>/<job-id>`, in the
  state bucket; the job itself stays, COMPLETED.

Invariants: a tenant sees and deletes only its own fine-tuned models (another tenant's
reads as not found); a model that a job not yet ended trains on is not deleted.
"""

from __future__ import annotations

import time

from jobstore.documents import JobState
from jobstore.storage import S3Location, parse_s3_uri
from jobstore.store import Job, JobStore
from service.core import jobs
from service.core.custom_models import jobs_using, model_prefix
from service.errors import InvalidArgument, JobNotFound, ModelNotFound, NameConflict
from service.settings import Settings

DEMO_MODEL_NAME = "tiny-llama"
DEMO_MODEL_URI = "s3://demo/models/tiny-llama/"
FINE_TUNED_PREFIX = "ft:"
# How long a replica trusts its look at whether the demo model is in the store.
_DEMO_CHECK_SECONDS = 60.0


class ModelCatalog:
    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._demo_checked_at = -_DEMO_CHECK_SECONDS
        self._demo_present = False

    def base_models(self) -> dict[str, str]:
        """Name -> s3:// folder of every base model a tenant may name."""
        models = dict(self.settings.base_models)
        if DEMO_MODEL_NAME not in models and self._demo_in_store():
            models[DEMO_MODEL_NAME] = DEMO_MODEL_URI
        return models

    def _demo_in_store(self) -> bool:
        now = time.monotonic()
        if now - self._demo_checked_at >= _DEMO_CHECK_SECONDS:
            config = parse_s3_uri(DEMO_MODEL_URI + "config.json", field="model")
            self._demo_present = self.store.storage.head(config) is not None
            self._demo_checked_at = now
        return self._demo_present

    def base_model_uri(self, tenant: str, name: str, *, field: str = "model") -> str:
        """The folder of a base model (by name) or of one of the tenant's fine-tuned
        models (`ft:...`), to train on. InvalidArgument naming `field` otherwise."""
        if name.startswith(FINE_TUNED_PREFIX):
            try:
                return model_prefix(self.fine_tuned_job(tenant, name))
            except ModelNotFound:
                raise InvalidArgument(
                    f"model '{name}' is not a fine-tuned model of yours that exists", field=field
                ) from None
        models = self.base_models()
        if name not in models:
            offered = ", ".join(sorted(models)) or "none: the operator sets TUNEFORGE_BASE_MODELS"
            raise InvalidArgument(
                f"model '{name}' is not a base model this service offers (offered: {offered})",
                field=field,
            )
        return models[name]

    def base_name(self, uri: str) -> str:
        """A base model's name: its catalog name, else the last folder of its URI."""
        for name, folder in self.base_models().items():
            if folder == uri:
                return name
        return uri.rstrip("/").rsplit("/", 1)[-1] or uri

    def fine_tuned_name(self, job: Job) -> str:
        base = self.base_name(job.spec.baseModelIdentifier)
        return f"{FINE_TUNED_PREFIX}{base}:{job.spec.jobName}:{job.spec.jobId}"

    def fine_tuned_job(self, tenant: str, name: str) -> Job:
        """The COMPLETED job of `tenant` that made the model `name`, its files not deleted."""
        job_id = name.rsplit(":", 1)[-1]
        if not name.startswith(FINE_TUNED_PREFIX) or not job_id:
            raise ModelNotFound(name)
        try:
            job = jobs.get_job(self.store, job_id, tenant=tenant)
        except (JobNotFound, InvalidArgument):
            raise ModelNotFound(name) from None
        if job.status.state != JobState.COMPLETED or self._deleted(tenant, job_id):
            raise ModelNotFound(name)
        # The job's id under another suffix is not its model. The base part is not
        # compared: it is the catalog's current name, which the operator may change.
        if not name.endswith(f":{job.spec.jobName}:{job.spec.jobId}"):
            raise ModelNotFound(name)
        return job

    def _deleted_marker(self, tenant: str, job_id: str) -> S3Location:
        return S3Location(self.store.bucket, f"deleted-models/{tenant}/{job_id}")

    def _deleted(self, tenant: str, job_id: str) -> bool:
        return self.store.storage.head(self._deleted_marker(tenant, job_id)) is not None

    def fine_tuned_jobs(self, tenant: str, *, limit: int = 1000) -> list[Job]:
        """The tenant's fine-tuned models (their jobs), newest first, at most `limit`."""
        deleted_folder = S3Location(self.store.bucket, f"deleted-models/{tenant}/")
        deleted = {
            item["key"].rsplit("/", 1)[-1]
            for item in self.store.storage.list_objects(deleted_folder)
        }
        found, _ = jobs.list_jobs(
            self.store, tenant=tenant, state=JobState.COMPLETED, limit=limit, page_token=None
        )
        return [job for job in found if job.spec.jobId not in deleted]

    def delete_fine_tuned(self, tenant: str, name: str) -> Job:
        """Remove the files of one of the tenant's fine-tuned models."""
        job = self.fine_tuned_job(tenant, name)
        users = jobs_using(self.store, job)
        if users:
            raise NameConflict(
                f"model '{name}' is the base model of job(s) {', '.join(users)} that have not "
                "ended; cancel them or wait for them to end, then delete it"
            )
        # The files first, the marker last: a delete cut short leaves the model listed,
        # and deleting it again finishes the job.
        self.store.storage.delete_prefix(parse_s3_uri(model_prefix(job), field="model"))
        self.store.storage.put_bytes(self._deleted_marker(tenant, job.spec.jobId), b"")
        return job
