"""What one serving process builds on a store that is already up and probed: launcher,
reconciler, webhooks, auth, the REST app's context and the gRPC server.

`main()` builds one for a single-process server; with `TUNEFORGE_API_WORKERS` > 1 each
worker process builds its own (service/server/workers.py), so that every worker is a replica
like one on another host: its own reconcile loop, rate-limit buckets and metrics, and
nothing shared but the store.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

import boto3

from jobstore.documents import JobResources
from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from service.auth.keys import KeyStore
from service.auth.tenants import Access
from service.control.dry_run import DryRunner
from service.control.launch.base import Launcher
from service.control.launch.capacity import launch_capacity
from service.control.launch.gpus import GpuInventory
from service.control.launch.local import LocalLauncher, ResourceLimits
from service.control.reconcile_faults import FaultTracker
from service.control.reconciler import Reconciler
from service.control.trainer_credentials import TrainerCredentials
from service.errors import AuthConfigurationError, InvalidArgument, TuneforgeError
from service.faces.context import ServiceContext
from service.faces.grpc.server import GrpcServer, create_server, grpc_address
from service.observability.metrics import Metrics
from service.server.store_identities import TenantStoreIdentities
from service.settings import Settings
from service.webhooks.delivery import WebhookNotifier
from service.webhooks.secrets import WebhookSecrets

log = logging.getLogger("tuneforge")


@dataclass
class StoreAccess:
    """The store's endpoint and credentials as `main()` resolved them (the embedded
    store's generated secret included)."""

    endpoint_url: str
    access_key: str | None
    secret: str | None
    region: str


@dataclass
class Replica:
    context: ServiceContext
    launcher: Launcher
    reconciler: Reconciler
    notifier: WebhookNotifier | None
    grpc_server: GrpcServer | None = None

    def start(self, *, share_grpc_port: bool = False) -> int:
        """Listen for gRPC (return its port), then start the reconciler and webhooks."""
        settings = self.context.settings
        self.grpc_server, port = create_server(
            grpc_address(settings.grpc_host, settings.grpc_port),
            self.context,
            share_port=share_grpc_port,
        )
        if isinstance(self.launcher, LocalLauncher):
            self.launcher.start_spares()  # importing while the first job is created
        self.reconciler.start()
        if self.notifier is not None:
            self.notifier.start()
        if not self.context.store.tenant_index_complete():
            threading.Thread(
                target=self._complete_tenant_index, name="tenant-index", daemon=True
            ).start()
        return port

    def _complete_tenant_index(self) -> None:
        """Put the jobs created before the per-tenant index into it (jobstore/store.py);
        until then listings walk every job. Tried again at the next start if it fails."""
        try:
            written = self.context.store.backfill_tenant_index()
        except Exception:
            log.exception("completing the per-tenant job index failed; tried at next start")
            return
        log.info("per-tenant job index complete (%d jobs added to it)", written)

    def stop(self, *, stop_trainers: bool, kill_grace_seconds: float) -> None:
        """gRPC (in-flight calls get a grace), the reconciler, webhooks, dry runs still
        going; and the trainers this process started when they cannot outlive the store
        (embedded)."""
        try:
            if self.grpc_server is not None:
                self.grpc_server.stop(grace=10)
        finally:
            self.reconciler.stop()
            self.context.jobs.feeds.stop()  # open streams get nothing more
            if self.notifier is not None:
                self.notifier.stop()
            if self.context.dry_runs is not None:
                self.context.dry_runs.shutdown()
            if isinstance(self.launcher, LocalLauncher):
                self.launcher.close_spares()
            if stop_trainers:
                self.launcher.shutdown(kill_grace_seconds)


def cluster_launcher(settings: Settings) -> Launcher:
    """The Ray or Kubernetes launcher the settings name (docs/scaling.md)."""
    if settings.launcher == "ray":
        from service.control.launch.ray import RayLauncher

        if not settings.ray_address:
            raise TuneforgeError("TUNEFORGE_RAY_ADDRESS is required with TUNEFORGE_LAUNCHER=ray")
        return RayLauncher(
            settings.ray_address,
            python=settings.ray_trainer_python,
            cpus_per_trainer=settings.ray_trainer_cpus,
            forward_credentials=settings.ray_forward_s3_credentials,
            stop_grace_seconds=settings.kill_grace_seconds,
            ray_train=settings.ray_train,
            placement=settings.ray_train_placement,
        )
    from service.control.launch.kubernetes import KubernetesConfig, KubernetesLauncher

    return KubernetesLauncher(
        KubernetesConfig(
            namespace=settings.kubernetes_namespace,
            image=settings.kubernetes_trainer_image,
            s3_secret_name=settings.kubernetes_s3_secret,
            termination_grace_seconds=settings.kubernetes_termination_grace_seconds,
            cpu_request=settings.kubernetes_trainer_cpu,
            memory_request=settings.kubernetes_trainer_memory,
            memory_limit=settings.kubernetes_trainer_memory_limit,
            scratch_size=settings.kubernetes_scratch_size,
            service_account=settings.kubernetes_trainer_service_account,
            tenant_secrets=settings.kubernetes_tenant_s3_secrets,
            job_ttl_seconds=settings.kubernetes_job_ttl_seconds,
            rendezvous_restarts=settings.kubernetes_rendezvous_restarts,
        )
    )


def make_launcher(settings: Settings) -> Launcher:
    if settings.launcher != "local":
        return cluster_launcher(settings)
    # One of several workers on this host: its trainers are recorded under a host name
    # of its own, so a sibling worker judges them by their heartbeat, as it would a
    # trainer on another host, and never by a process it did not start and cannot reap
    # (it would see the exit as "gone, exit code unknown" before the parent classified
    # it: a crash or bad input taken for a preemption).
    host = socket.gethostname()
    if settings.api_workers > 1:
        host = f"{host}/worker-{os.getpid()}"
    return LocalLauncher(
        settings.home.resolve() / "work",
        settings.trainer_python,
        limits=ResourceLimits(
            memory_bytes=settings.trainer_max_memory_bytes,
            processes=settings.trainer_max_processes,
            open_files=settings.trainer_max_open_files,
            resident_bytes=settings.trainer_memory_limit_bytes,
        ),
        host=host,
        warm_trainers=settings.warm_trainers,
    )


def host_gpu_inventory(settings: Settings) -> GpuInventory | None:
    """The local launcher's GPUs and their locks, shared by every worker of the host
    through `<home>/gpus/` (service/control/launch/gpus.py); None for a cluster launcher."""
    if settings.launcher != "local":
        return None
    capacity = launch_capacity(settings)
    devices = list(capacity.host_gpus)
    try:  # Bedrock-face jobs ask for this many: they must be able to run here
        capacity.check(JobResources(gpus=settings.bedrock_job_gpus or 0))
    except InvalidArgument as error:
        raise ValueError(f"TUNEFORGE_BEDROCK_JOB_GPUS: {error.message}") from None
    log.info(
        "GPUs for trainers: %s",
        ", ".join(devices) if devices else "none (every job trains on the CPU)",
    )
    return GpuInventory(devices, settings.home.resolve() / "gpus")


def build_trainer_environment(
    settings: Settings, access_key: str | None, secret: str | None
) -> dict[str, str]:
    """What every trainer's environment gets from the server's settings (a launcher adds
    the job's own variables); nothing else of the server's environment is passed."""
    environment = {
        "AWS_ENDPOINT_URL": settings.endpoint_url,
        "AWS_DEFAULT_REGION": settings.s3_region,
        "TUNEFORGE_STATE_BUCKET": settings.state_bucket,
        "TUNEFORGE_HEARTBEAT_SECONDS": str(settings.trainer_heartbeat_seconds),
        "TUNEFORGE_STORE_OUTAGE_PATIENCE_SECONDS": str(
            settings.trainer_store_outage_patience_seconds
        ),
        # trainer/precision.py reads it; "0" spelled out so that the trainer's choice is
        # the server's, not whatever a launcher's base environment happens to hold.
        "TUNEFORGE_TORCH_COMPILE": "1" if settings.trainer_torch_compile else "0",
    }
    if settings.log_format is not None:  # unset: the trainer's log stays readable
        environment["TUNEFORGE_LOG_FORMAT"] = settings.log_format
    if access_key and secret:
        environment["AWS_ACCESS_KEY_ID"] = access_key
        environment["AWS_SECRET_ACCESS_KEY"] = secret
    return environment


def _trainer_environment_of_tenants(
    settings: Settings,
    storage: ObjectStore,
    store_access: StoreAccess,
    access: Access,
    credentials: TrainerCredentials,
) -> Callable[[str], dict[str, str]]:
    """Where a tenant's trainers get their store credentials: the operator's mapping when
    there is one; on the embedded store with authentication on, a store identity of the
    tenant's own, made by the service (service/server/store_identities.py); else the service's."""
    if (
        not settings.embedded_store
        or not access.enabled
        or credentials.by_tenant
        or settings.trainer_shared_credentials
    ):
        return credentials.environment_for
    iam = boto3.client(
        "iam",
        endpoint_url=store_access.endpoint_url,
        aws_access_key_id=store_access.access_key,
        aws_secret_access_key=store_access.secret,
        region_name=store_access.region,
    )
    identities = TenantStoreIdentities(
        storage,
        settings.state_bucket,
        iam,
        lambda tenant: access.policy(tenant).trainer_grants,
    )
    log.info("each tenant's trainers get a store identity of their own (embedded store)")
    return identities.environment_for


def _check_trainers_reach_only_their_tenant(
    settings: Settings, access: Access, credentials: TrainerCredentials
) -> None:
    """With authentication on and an external store, refuse to start when no tenant has
    store credentials of its own for its trainers: every trainer would hold the
    service's, which reach every tenant's data. TUNEFORGE_TRAINER_SHARED_CREDENTIALS=true
    says that is what the operator wants (one team, several tenants for bookkeeping)."""
    if not access.enabled or settings.embedded_store or settings.trainer_shared_credentials:
        return
    if settings.launcher == "kubernetes":
        mapped, setting = (
            bool(settings.kubernetes_tenant_s3_secrets),
            ("TUNEFORGE_KUBERNETES_TENANT_S3_SECRETS"),
        )
    else:
        mapped, setting = bool(credentials.by_tenant), "TUNEFORGE_TRAINER_CREDENTIALS_FILE"
    if not mapped:
        raise AuthConfigurationError(
            "authentication is on, but no tenant has store credentials of its own for its "
            f"trainers ({setting}): every trainer would get the service's, which reach every "
            "tenant's data. Map tenants to credentials scoped to their buckets, or set "
            "TUNEFORGE_TRAINER_SHARED_CREDENTIALS=true to share the service's on purpose"
        )


def open_storage(settings: Settings, store: StoreAccess, metrics: Metrics) -> ObjectStore:
    storage = ObjectStore(
        endpoint_url=store.endpoint_url,
        access_key_id=store.access_key,
        secret_access_key=store.secret,
        region=store.region,
    )
    storage.add_call_observer(metrics.observe_store_call)
    return storage


def build_replica(
    settings: Settings,
    storage: ObjectStore,
    store_access: StoreAccess,
    metrics: Metrics,
    launcher: Launcher,
) -> Replica:
    """Everything a serving process runs over `storage`; nothing runs until `start()`."""
    trainer_environment = build_trainer_environment(
        settings, store_access.access_key, store_access.secret
    )
    if settings.launcher == "kubernetes":
        # Trainer pods get store credentials only from Secrets, by reference
        # (TUNEFORGE_KUBERNETES_TENANT_S3_SECRETS): never values in a manifest.
        if settings.trainer_credentials_file is not None:
            log.warning(
                "TUNEFORGE_TRAINER_CREDENTIALS_FILE is not used by the kubernetes "
                "launcher: name each tenant's Secret in TUNEFORGE_KUBERNETES_TENANT_S3_SECRETS"
            )
        trainer_credentials = TrainerCredentials({})
    else:
        trainer_credentials = TrainerCredentials.load(settings.trainer_credentials_file)
    store = JobStore(storage, settings.state_bucket)
    # Before anything listens: refuses to start with auth off on a non-loopback bind.
    access = Access.start(
        settings,
        KeyStore(storage, settings.state_bucket, cache_seconds=settings.key_cache_seconds),
    )
    _check_trainers_reach_only_their_tenant(settings, access, trainer_credentials)
    notifier = None
    webhook_secrets = None
    if settings.webhook_secret is not None:
        webhook_secrets = WebhookSecrets(
            storage, settings.state_bucket, settings.webhook_secret.get_secret_value()
        )
    if settings.webhook_allowed_hosts and webhook_secrets is not None:
        notifier = WebhookNotifier(
            store,
            webhook_secrets,
            metrics=metrics,
            max_attempts=settings.webhook_max_attempts,
            retry_seconds=settings.webhook_retry_seconds,
            timeout_seconds=settings.webhook_timeout_seconds,
            replica_id=f"{socket.gethostname()}:{os.getpid()}",
        )
    tenant_environment = _trainer_environment_of_tenants(
        settings, storage, store_access, access, trainer_credentials
    )
    reconciler = Reconciler(
        store,
        launcher,
        trainer_environment,
        interval_seconds=settings.reconcile_interval_seconds,
        waiting_refresh_seconds=settings.reconcile_waiting_refresh_seconds,
        heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
        start_timeout_seconds=settings.trainer_start_timeout_seconds,
        stop_grace_seconds=settings.stop_grace_seconds,
        kill_grace_seconds=settings.kill_grace_seconds,
        crash_retry_budget=settings.crash_retry_budget,
        max_attempts=settings.max_attempts,
        slots=settings.cluster_slots if settings.launcher != "local" else settings.local_slots,
        tenant_running_limit=lambda tenant: access.policy(tenant).max_running_jobs,
        metrics=metrics,
        notifier=notifier,
        tenant_environment=tenant_environment,
        gpus=host_gpu_inventory(settings),
        faults=FaultTracker(
            give_up_after_failures=settings.reconcile_give_up_failures,
            give_up_after_seconds=settings.reconcile_give_up_seconds,
            set_aside_seconds=settings.reconcile_set_aside_seconds,
        ),
    )
    context = ServiceContext(
        settings,
        store,
        reconciler,
        store_conformant=True,
        access=access,
        metrics=metrics,
        webhook_secrets=webhook_secrets,
        dry_runs=DryRunner(
            settings.home.resolve() / "dry-runs",
            trainer_environment=trainer_environment,
            tenant_environment=tenant_environment,
            python=settings.trainer_python,
            limits=ResourceLimits(
                memory_bytes=settings.trainer_max_memory_bytes,
                processes=settings.trainer_max_processes,
                open_files=settings.trainer_max_open_files,
            ),
            timeout_seconds=settings.dry_run_timeout_seconds,
            max_concurrent=settings.dry_run_max_concurrent,
            cpu_flops=settings.dry_run_cpu_flops,
            gpu_flops=settings.dry_run_gpu_flops,
        ),
    )
    return Replica(context, launcher, reconciler, notifier)
