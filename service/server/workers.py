"""`TUNEFORGE_API_WORKERS` > 1: several serving processes on one REST port (and one gRPC
port), for a host with more cores than one Python process can use.

The parent does the one-time work (embedded store, bucket, conditional-write probe, demo
assets, the auth refusal check), binds the REST socket, and hands it to uvicorn's
process supervisor, which starts the workers (spawned, not forked: the parent has
threads) and replaces one that dies. Each worker builds its own replica
(service/server/replica.py): its own reconcile loop, launcher, rate-limit buckets, metrics and
gRPC server (the gRPC port is shared through SO_REUSEPORT, grpc's default on Linux). So
a worker is a replica like one on another host: the store's compare-and-swap keeps
launches exactly-once and per-tenant request rates are enforced per worker. A scrape
of /metrics reaches one worker and sums every worker's counters (PROMETHEUS_MULTIPROC_DIR,
a folder of this run's).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from uvicorn.supervisors import Multiprocess

from jobstore.conformance import check_conditional_writes
from jobstore.storage import ObjectStore
from jobstore.structured_logging import configure_logging
from service.auth.keys import KeyStore
from service.auth.tenants import Access
from service.errors import TuneforgeError
from service.faces.grpc.server import grpc_address
from service.observability.metrics import (
    MULTIPROCESS_DIRECTORY_ENV,
    Metrics,
    forget_dead_processes,
)
from service.server.embedded_s3 import EmbeddedS3
from service.server.http_app import create_app
from service.server.replica import StoreAccess, build_replica, make_launcher, open_storage
from service.settings import Settings

log = logging.getLogger("tuneforge")

# Set by the parent for its workers: they must stop their trainers when they stop (the
# embedded store the trainers write to goes away with the parent).
_STOP_TRAINERS_ENV = "TUNEFORGE_INTERNAL_WORKERS_STOP_TRAINERS"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.rest_host,
        "port": settings.rest_port,
        "log_level": "info",
        # Logging is configured by us (structured); requests are logged, with their
        # request id, by service/observability/middleware.py.
        "log_config": None,
        "access_log": False,
        "timeout_keep_alive": settings.rest_keep_alive_seconds,
        "timeout_graceful_shutdown": 10,
    }


def prepare_store(settings: Settings, storage: ObjectStore, *, seed: bool) -> None:
    """The state and files buckets, the conditional-write probe (refuses to start if it
    fails), and the demo assets on the embedded store."""
    storage.ensure_bucket(settings.state_bucket)
    storage.ensure_bucket(settings.files_bucket)
    check_conditional_writes(storage, settings.state_bucket)
    if seed:
        from service.server.demo import seed_demo

        seed_demo(storage)
        print("demo assets: s3://demo/datasets/, s3://demo/models/tiny-llama/")


def serve_workers(
    settings: Settings, embedded: EmbeddedS3 | None, access_key: str | None, secret: str | None
) -> int:
    """Run `settings.api_workers` workers on the REST port until a signal stops them."""
    if settings.grpc_port == 0:
        raise TuneforgeError(
            "TUNEFORGE_GRPC_PORT=0 with TUNEFORGE_API_WORKERS > 1 would give each worker a "
            "gRPC port of its own: name a port"
        )
    store_access = StoreAccess(settings.endpoint_url, access_key, secret, settings.s3_region)
    storage = open_storage(settings, store_access, Metrics())
    prepare_store(settings, storage, seed=embedded is not None and settings.seed_demo)
    # Refused here, once and before anything listens, as every worker would refuse it.
    Access.start(settings, KeyStore(storage, settings.state_bucket, cache_seconds=0))
    # The workers read their settings from the environment: give them the store this
    # process resolved (the embedded one's generated secret included), so that none of
    # them starts a store of its own.
    os.environ["TUNEFORGE_S3_ENDPOINT_URL"] = settings.endpoint_url
    if access_key is not None:
        os.environ["TUNEFORGE_S3_ACCESS_KEY_ID"] = access_key
    if secret is not None:
        os.environ["TUNEFORGE_S3_SECRET_ACCESS_KEY"] = secret
    os.environ[_STOP_TRAINERS_ENV] = "1" if embedded is not None else "0"
    config = uvicorn.Config(
        "service.server.workers:create_worker_app",
        factory=True,
        workers=settings.api_workers,
        **uvicorn_options(settings),
    )
    sockets = [config.bind_socket()]
    print(
        f"REST API: http://{settings.rest_host}:{settings.rest_port}  (docs at /docs), "
        f"{settings.api_workers} worker processes"
    )
    print(f"gRPC API: {grpc_address(settings.grpc_host, settings.grpc_port)}  (every worker)")
    print(f"launcher: {settings.launcher}, one per worker")
    # The workers' counters go to files here, so that a scrape of /metrics, whichever
    # worker answers it, sums them all (service/observability/metrics.py). A folder of
    # this run's own: files a previous run left would be counted again.
    metrics_directory = tempfile.mkdtemp(prefix="tuneforge-metrics-")
    os.environ[MULTIPROCESS_DIRECTORY_ENV] = metrics_directory
    stopping = threading.Event()
    forgetter = threading.Thread(
        target=_forget_dead_workers,
        args=(metrics_directory, stopping),
        name="forget-dead-workers",
        daemon=True,
    )
    forgetter.start()
    try:
        supervisor = Multiprocess(config, sockets=sockets)
        supervisor.run()  # until SIGINT/SIGTERM; then stops the workers and waits for them
    finally:
        stopping.set()
        forgetter.join()
        shutil.rmtree(metrics_directory, ignore_errors=True)
    return 0


def _forget_dead_workers(metrics_directory: str, stopping: threading.Event) -> None:
    """Every second, drop the gauge values of workers that died (uvicorn starts another in
    their place), so that /metrics does not count the streams a dead worker held."""
    while not stopping.wait(1.0):
        try:
            for pid in forget_dead_processes(metrics_directory):
                log.info("worker %d is gone: its open streams are no longer counted", pid)
        except OSError as error:
            log.warning("could not forget the metrics of dead workers: %s", error)


def create_worker_app() -> FastAPI:
    """In a worker process (uvicorn calls it): this worker's replica and its REST app."""
    settings = Settings()
    configure_logging(settings.log_format, level=getattr(logging, settings.log_level))
    metrics = Metrics()
    secret = settings.s3_secret_access_key
    store_access = StoreAccess(
        settings.endpoint_url,
        settings.s3_access_key_id,
        secret.get_secret_value() if secret is not None else None,
        settings.s3_region,
    )
    storage = open_storage(settings, store_access, metrics)
    replica = build_replica(settings, storage, store_access, metrics, make_launcher(settings))
    stop_trainers = os.environ.get(_STOP_TRAINERS_ENV) == "1"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _stop_with_parent()
        # Here, not in the factory: uvicorn calls that inside its running event loop,
        # where a gRPC server that fails to start could not close its own loop.
        await run_in_threadpool(replica.start, share_grpc_port=True)
        log.info("worker %d serving", os.getpid())
        try:
            yield
        finally:
            await run_in_threadpool(
                replica.stop,
                stop_trainers=stop_trainers,
                kill_grace_seconds=settings.kill_grace_seconds,
            )

    app = create_app(replica.context)
    app.router.lifespan_context = lifespan
    return app


def _stop_with_parent() -> None:
    """SIGTERM this worker once its parent is gone (killed with SIGKILL, say): uvicorn's
    workers do not die with it, and an orphan would go on serving the port and
    reconciling with no supervisor."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("the parent process %d is gone: worker %d stops", parent, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
