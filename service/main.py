"""`make run`: start the service on its embedded defaults, or against a configured store.

Order at start: embedded SeaweedFS (when no endpoint is configured) -> state bucket ->
conditional-write probe (refuse to start if it fails) -> demo assets -> reconciler ->
REST. Ctrl-C stops, in reverse order, everything this process started; with the
embedded store that includes the trainers, which cannot outlive their store. With an
external store, trainers keep running and a restarted server picks them up.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

import uvicorn

from service.api.app import create_app
from service.auth.keys import KeyStore
from service.auth.tenants import Access
from service.context import ServiceContext
from service.embedded_s3 import EmbeddedS3
from service.errors import TuneforgeError
from service.grpc_api.server import create_server, grpc_address
from service.launch.base import Launcher
from service.launch.local import LocalLauncher, ResourceLimits, visible_gpu_count
from service.observability.logging import configure_logging
from service.observability.metrics import Metrics
from service.probe import check_conditional_writes
from service.reconciler import Reconciler
from service.settings import Settings
from service.storage import ObjectStore
from service.store import JobStore
from service.trainer_credentials import TrainerCredentials
from service.webhooks import WebhookNotifier

log = logging.getLogger("tuneforge")


def _embedded_secret(home: Path) -> str:
    path = home / "s3-secret"
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(24)
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    return secret


def _write_env_file(home: Path, endpoint: str, key: str, secret: str, region: str) -> Path:
    path = home / "env"
    path.touch(mode=0o600)
    path.write_text(
        f"AWS_ENDPOINT_URL={endpoint}\nAWS_ACCESS_KEY_ID={key}\n"
        f"AWS_SECRET_ACCESS_KEY={secret}\nAWS_DEFAULT_REGION={region}\n"
    )
    return path


def _stop_requested(signum: int, frame: object) -> None:
    log.info("shutting down (%s)", signal.Signals(signum).name)


def cluster_launcher(settings: Settings) -> Launcher:
    """The Ray or Kubernetes launcher the settings name (README, "Scaling out")."""
    if settings.launcher == "ray":
        from service.launch.ray import RayLauncher

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
    from service.launch.kubernetes import KubernetesConfig, KubernetesLauncher

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
        )
    )


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


def main() -> int:
    settings = Settings()
    configure_logging(settings.log_format, level=getattr(logging, settings.log_level))
    metrics = Metrics()
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)

    embedded: EmbeddedS3 | None = None
    access_key = settings.s3_access_key_id
    secret = (
        settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
    )
    if settings.embedded_store:
        access_key = access_key or "tuneforge"
        secret = secret or _embedded_secret(home)
        embedded = EmbeddedS3(
            home / "s3" / "data",
            port=settings.embedded_s3_port,
            access_key_id=access_key,
            secret_access_key=secret,
            log_path=home / "s3" / "seaweedfs.log",
        )
        embedded.start()
        env_file = _write_env_file(
            home, embedded.endpoint_url, access_key, secret, settings.s3_region
        )
        print(f"object store (SeaweedFS S3): {embedded.endpoint_url}  credentials: {env_file}")

    launcher: Launcher = LocalLauncher(
        home / "work",
        settings.trainer_python,
        limits=ResourceLimits(
            memory_bytes=settings.trainer_max_memory_bytes,
            processes=settings.trainer_max_processes,
            open_files=settings.trainer_max_open_files,
        ),
    )
    try:
        if settings.launcher != "local":
            launcher = cluster_launcher(settings)
        storage = ObjectStore(
            endpoint_url=settings.endpoint_url,
            access_key_id=access_key,
            secret_access_key=secret,
            region=settings.s3_region,
        )
        storage.add_call_observer(metrics.observe_store_call)
        storage.ensure_bucket(settings.state_bucket)
        check_conditional_writes(storage, settings.state_bucket)
        if embedded is not None and settings.seed_demo:
            from service.demo import seed_demo

            seed_demo(storage)
            print("demo assets: s3://demo/datasets/, s3://demo/models/tiny-llama/")

        trainer_environment = build_trainer_environment(settings, access_key, secret)
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
        notifier = None
        if settings.webhook_allowed_hosts and settings.webhook_secret is not None:
            notifier = WebhookNotifier(
                store,
                settings.webhook_secret.get_secret_value(),
                metrics=metrics,
                max_attempts=settings.webhook_max_attempts,
                retry_seconds=settings.webhook_retry_seconds,
                timeout_seconds=settings.webhook_timeout_seconds,
                replica_id=f"{socket.gethostname()}:{os.getpid()}",
            )
        reconciler = Reconciler(
            store,
            launcher,
            trainer_environment,
            interval_seconds=settings.reconcile_interval_seconds,
            heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
            stop_grace_seconds=settings.stop_grace_seconds,
            kill_grace_seconds=settings.kill_grace_seconds,
            crash_retry_budget=settings.crash_retry_budget,
            max_attempts=settings.max_attempts,
            slots=(
                settings.cluster_slots
                if settings.launcher != "local"
                else settings.local_slots or visible_gpu_count() or 1
            ),
            tenant_running_limit=lambda tenant: access.policy(tenant).max_running_jobs,
            metrics=metrics,
            notifier=notifier,
            tenant_environment=trainer_credentials.environment_for,
        )
        context = ServiceContext(
            settings, store, reconciler, store_conformant=True, access=access, metrics=metrics
        )
        grpc_server, grpc_port = create_server(
            grpc_address(settings.grpc_host, settings.grpc_port),
            context,
            watch_poll_seconds=settings.grpc_watch_poll_seconds,
        )
        reconciler.start()
        if notifier is not None:
            notifier.start()
        print(f"REST API: http://{settings.rest_host}:{settings.rest_port}  (docs at /docs)")
        print(f"gRPC API: {grpc_address(settings.grpc_host, grpc_port)}  (health, reflection)")
        print(f"launcher: {launcher.name}, trainer work directories under {home / 'work'}")
        sys.stdout.flush()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(context),
                host=settings.rest_host,
                port=settings.rest_port,
                log_level="info",
                # Logging is configured above (structured); requests are logged, with
                # their request id, by service/observability/middleware.py.
                log_config=None,
                access_log=False,
                timeout_keep_alive=settings.rest_keep_alive_seconds,
                timeout_graceful_shutdown=10,
            )
        )
        # uvicorn re-raises the signal that stopped it once it is done. Note it rather than
        # die of it, so that gRPC (in-flight calls), the reconciler and the embedded store
        # stop in turn below.
        for handled in (signal.SIGINT, signal.SIGTERM):
            signal.signal(handled, _stop_requested)
        try:
            server.run()
        finally:
            # After REST: in-flight gRPC calls get the same grace; watches end UNAVAILABLE.
            grpc_server.stop(grace=10)
        reconciler.stop()
        if notifier is not None:
            notifier.stop()
        return 0 if server.started else 1
    except TuneforgeError as error:
        print(f"tuneforge cannot start: {error.message}", file=sys.stderr)
        return 2
    finally:
        if embedded is not None:
            # The trainers write to this store; stop them before it goes away.
            launcher.shutdown(settings.kill_grace_seconds)
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
