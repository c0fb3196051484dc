"""`make run`: start the service on its embedded defaults, or against a configured store.

Order at start: embedded SeaweedFS (when no endpoint is configured) -> state bucket ->
conditional-write probe (refuse to start if it fails) -> demo assets -> reconciler ->
REST. With TUNEFORGE_API_WORKERS > 1 the last steps (reconciler, gRPC, REST) run in
each worker process instead (service/server/workers.py). Ctrl-C stops, in reverse order,
everything this process started; with the embedded store that includes the trainers,
which cannot outlive their store. With an external store, trainers keep running and a
restarted server picks them up.
"""

from __future__ import annotations

import logging
import secrets
import signal
import sys
from pathlib import Path

import uvicorn

from jobstore.structured_logging import configure_logging
from service.control.launch.base import Launcher
from service.errors import TuneforgeError
from service.faces.grpc.server import grpc_address
from service.observability.metrics import Metrics
from service.server.embedded_s3 import EmbeddedS3
from service.server.http_app import create_app
from service.server.replica import (
    StoreAccess,
    build_replica,
    build_trainer_environment,
    make_launcher,
    open_storage,
)
from service.server.workers import prepare_store, serve_workers, uvicorn_options
from service.settings import Settings

# Re-exported: tests import it from here.
__all__ = ["build_trainer_environment", "main"]

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
            iam_writable=True,  # each tenant's store identity (service/server/store_identities.py)
        )
        embedded.start()
        env_file = _write_env_file(
            home, embedded.endpoint_url, access_key, secret, settings.s3_region
        )
        print(f"object store (SeaweedFS S3): {embedded.endpoint_url}  credentials: {env_file}")

    launcher: Launcher | None = None
    try:
        if settings.api_workers > 1:
            return serve_workers(settings, embedded, access_key, secret)
        launcher = make_launcher(settings)
        store_access = StoreAccess(settings.endpoint_url, access_key, secret, settings.s3_region)
        storage = open_storage(settings, store_access, metrics)
        prepare_store(settings, storage, seed=embedded is not None and settings.seed_demo)
        replica = build_replica(settings, storage, store_access, metrics, launcher)
        grpc_port = replica.start()
        print(f"REST API: http://{settings.rest_host}:{settings.rest_port}  (docs at /docs)")
        print(f"gRPC API: {grpc_address(settings.grpc_host, grpc_port)}  (health, reflection)")
        print(f"launcher: {launcher.name}, trainer work directories under {home / 'work'}")
        sys.stdout.flush()
        server = uvicorn.Server(
            uvicorn.Config(create_app(replica.context), **uvicorn_options(settings))
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
            replica.stop(stop_trainers=False, kill_grace_seconds=settings.kill_grace_seconds)
        return 0 if server.started else 1
    except TuneforgeError as error:
        print(f"tuneforge cannot start: {error.message}", file=sys.stderr)
        return 2
    finally:
        if embedded is not None:
            # The trainers write to this store; stop them before it goes away.
            if launcher is not None:
                launcher.shutdown(settings.kill_grace_seconds)
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
