"""The gRPC server: FineTuningService, health checking (grpc.health.v1) and reflection.

It runs in the API process beside REST, over the same `ServiceContext`, on an asyncio
loop of its own thread (REST's uvicorn owns the main thread):

    server, port = create_server("127.0.0.1:50051", context)
    ...
    server.stop(grace=10)   # in-flight calls get `grace` seconds; watches end UNAVAILABLE

Health: the overall service ("") and `tuneforge.v1.FineTuningService` are SERVING while
the object store answers (checked every few seconds, as REST's /readyz does on each
call), NOT_SERVING when it does not and from the start of a shutdown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from jobstore.storage import S3Location
from service.errors import GrpcStartError, TuneforgeError
from service.faces.context import ServiceContext
from service.faces.grpc.auth import AuthInterceptor
from service.faces.grpc.observation import ObservationInterceptor
from service.faces.grpc.servicer import FineTuningServicer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FineTuningService"].full_name
T = TypeVar("T")


def grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    def __init__(
        self,
        context: ServiceContext,
        address: str,
        *,
        health_check_seconds: float = 5.0,
        worker_threads: int = 16,
        share_port: bool = False,
    ) -> None:
        self.context = context
        self.share_port = share_port
        self.address = address
        self.health_check_seconds = health_check_seconds
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(worker_threads, thread_name_prefix="grpc-core")
        )
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc", daemon=True)
        self._server: grpc.aio.Server | None = None
        self._servicer: FineTuningServicer | None = None
        self._health: Any = None
        self._health_task: asyncio.Task[None] | None = None

    # -- from the caller's thread --------------------------------------------------

    def start(self) -> int:
        """Listen and serve; return the port (useful when the address asked for port 0)."""
        self._thread.start()
        try:
            self.port = self._on_loop(self._start(), timeout=30)
        except Exception:
            self._close_loop()
            raise
        return self.port

    def stop(self, grace: float = 10.0) -> None:
        """Refuse new calls, let in-flight ones finish within `grace` seconds, end watches."""
        if not self._thread.is_alive():
            return
        try:
            self._on_loop(self._stop(grace), timeout=grace + 10)
        finally:
            self._close_loop()

    def _on_loop(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    # -- on the server's loop ------------------------------------------------------

    async def _start(self) -> int:
        server = grpc.aio.server(
            interceptors=[
                # Outermost: request ids and metrics for every call, refused ones too.
                ObservationInterceptor(self.context.metrics),
                # API keys and per-tenant rate limits on FineTuningService (not health).
                AuthInterceptor(self.context, SERVICE_NAME),
            ],
            options=[
                # Two servers on one port must be an error, not a silent split; except
                # between the API workers of one server (service/server/workers.py), which
                # share the port on purpose, as they share the REST socket.
                ("grpc.so_reuseport", 1 if self.share_port else 0),
                ("grpc.max_receive_message_length", self.context.settings.max_request_bytes),
            ],
        )
        self._servicer = FineTuningServicer(self.context)
        pb_grpc.add_FineTuningServiceServicer_to_server(self._servicer, server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError as error:
            raise GrpcStartError(f"cannot listen on {self.address} for gRPC: {error}") from None
        if port == 0:
            raise GrpcStartError(f"cannot listen on {self.address} for gRPC")
        await server.start()
        self._server = server
        await self._set_health(serving=True)
        self._health_task = asyncio.create_task(self._track_store_health())
        log.info("gRPC API listening on %s (port %d)", self.address, port)
        return port

    async def _stop(self, grace: float) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._servicer is not None:
            self._servicer.shut_down()
        if self._server is not None:
            await self._server.stop(grace)
        log.info("gRPC API stopped")

    async def _set_health(self, *, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)

    def _store_answers(self) -> bool:
        store = self.context.store
        try:
            store.storage.head(S3Location(store.bucket, "_ready"))
        except TuneforgeError as error:
            log.warning("gRPC health: NOT_SERVING, the store does not answer: %s", error.message)
            return False
        return self.context.store_conformant

    async def _track_store_health(self) -> None:
        while True:
            await asyncio.sleep(self.health_check_seconds)
            await self._set_health(serving=await asyncio.to_thread(self._store_answers))


def create_server(
    address: str,
    context: ServiceContext,
    *,
    health_check_seconds: float = 5.0,
    share_port: bool = False,
) -> tuple[GrpcServer, int]:
    """Start serving on `address` (`host:port`); return the server and its port."""
    server = GrpcServer(
        context,
        address,
        health_check_seconds=health_check_seconds,
        share_port=share_port,
    )
    return server, server.start()
