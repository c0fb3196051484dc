"""What a running API replica holds: built once in `main()` (or a test) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from jobstore.store import JobStore
from service.auth.tenants import Access
from service.control.dry_run import DryRunner
from service.control.reconciler import Reconciler
from service.core.files import FileStore
from service.core.job_service import JobService
from service.core.model_catalog import ModelCatalog
from service.observability.metrics import Metrics
from service.settings import Settings
from service.webhooks.secrets import WebhookSecrets


@dataclass
class ServiceContext:
    settings: Settings
    store: JobStore
    reconciler: Reconciler | None
    # Set once the store answered and passed the conditional-write probe.
    store_conformant: bool = False
    # Authentication and per-tenant limits; None: development mode, everyone is "default".
    access: Access | None = None
    # This replica's Prometheus metrics (GET /metrics).
    metrics: Metrics = field(default_factory=Metrics)
    # Each tenant's webhook signing secret; None: no TUNEFORGE_WEBHOOK_SECRET, no webhooks.
    webhook_secrets: WebhookSecrets | None = None
    # Runs dry runs (POST /v1/jobs with validateOnly); None: this replica runs none.
    dry_runs: DryRunner | None = None
    # The core every face calls, built from the fields above.
    jobs: JobService = field(init=False)
    # Tenants' uploaded files and the models by name (the OpenAI face's Files and Models).
    files: FileStore = field(init=False)
    models: ModelCatalog = field(init=False)

    def __post_init__(self) -> None:
        notify = self.reconciler.kick if self.reconciler is not None else None
        self.jobs = JobService(
            self.store,
            self.settings,
            notify=notify,
            dry_runs=self.dry_runs,
            on_open_streams=self.metrics.open_job_streams.set,
        )
        self.files = FileStore(self.store, self.settings.files_bucket)
        self.models = ModelCatalog(self.store, self.settings)
