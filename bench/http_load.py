"""A cheap load generator: several client processes, each a bare asyncio HTTP/1.1 client.

httpx's AsyncClient costs a few ms of CPU per request, so on a small machine the client
saturated before the server did (/healthz topped out near 200/s). Here each process runs
its own event loop and keep-alive connections and speaks just enough HTTP/1.1 for this
service's answers (Content-Length bodies), so that what the bench measures is the server.
Results (latencies per operation, errors, the process's own CPU seconds) go back to the
parent over a pipe and are merged.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

Body = Callable[[], dict[str, Any]]


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    client_cpu_seconds: float = 0.0
    elapsed: float = 0.0

    def merge(self, other: Results) -> None:
        for name, values in other.latencies.items():
            self.latencies[name].extend(values)
        for name, count in other.errors.items():
            self.errors[name] += count
        self.client_cpu_seconds += other.client_cpu_seconds
        self.elapsed = max(self.elapsed, other.elapsed)

    @property
    def served(self) -> int:
        return sum(len(values) for values in self.latencies.values())


@dataclass(frozen=True)
class Operation:
    """One kind of request: a GET of `path` (a path per call when `paths` is given), or a
    POST of a fresh `body()` when `body` is set."""

    name: str
    path: str
    paths: tuple[str, ...] = ()
    body: Body | None = None


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = None
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length is None:
            raise ValueError("an answer without Content-Length (chunked?)")
        payload = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _one(
    connection: _Connection, operation: Operation, chooser: random.Random, results: Results
) -> None:
    path = chooser.choice(operation.paths) if operation.paths else operation.path
    body = json.dumps(operation.body()).encode() if operation.body is not None else None
    started = time.perf_counter()
    try:
        status, payload = await connection.request(
            "POST" if body is not None else "GET", path, body
        )
    except (OSError, ValueError, asyncio.IncompleteReadError) as error:
        connection.close()
        results.errors[operation.name] += 1
        print(f"  {operation.name}: {type(error).__name__}: {error}", file=sys.stderr)
        return
    results.latencies[operation.name].append(time.perf_counter() - started)
    if status >= 300:
        results.errors[operation.name] += 1
        print(f"  {operation.name}: HTTP {status}: {payload[:200]!r}", file=sys.stderr)


async def _drive(
    host: str,
    port: int,
    operations: list[tuple[Operation, float]],
    clients: int,
    start_at: float,
    seconds: float,
    once: bool,
    seed: int,
) -> Results:
    results = Results()
    connections = [_Connection(host, port) for _ in range(clients)]
    names = [operation for operation, _ in operations]
    weights = [weight for _, weight in operations]
    # Connect before the clock starts: the phase measures requests, not handshakes.
    for connection in connections:
        connection.reader, connection.writer = await asyncio.open_connection(host, port)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu_started, started = time.process_time(), time.perf_counter()
    deadline = started + seconds

    async def one_client(index: int) -> None:
        chooser = random.Random(seed * 1000 + index)
        connection = connections[index]
        while True:
            await _one(connection, chooser.choices(names, weights)[0], chooser, results)
            if once or time.perf_counter() >= deadline:
                return

    await asyncio.gather(*(one_client(index) for index in range(clients)))
    results.elapsed = time.perf_counter() - started
    results.client_cpu_seconds = time.process_time() - cpu_started
    for connection in connections:
        connection.close()
    return results


def _worker(pipe: Connection, arguments: tuple[Any, ...]) -> None:
    results = asyncio.run(_drive(*arguments))
    # defaultdicts of lists pickle as they are; the parent merges them.
    pipe.send(results)
    pipe.close()


def run_load(
    url: str,
    operations: list[tuple[Operation, float]],
    *,
    clients: int,
    seconds: float,
    processes: int,
    once: bool = False,
) -> Results:
    """`clients` connections spread over `processes` client processes, each choosing
    operations by weight, for `seconds` (or, with `once`, one request per connection,
    all sent together: a burst). Returns the merged results."""
    host, _, port = url.removeprefix("http://").partition(":")
    processes = max(1, min(processes, clients))
    context = multiprocessing.get_context("fork")  # the operations' bodies are closures
    start_at = time.time() + 1.0  # every process connected and waiting by then
    workers = []
    for index in range(processes):
        share = clients // processes + (1 if index < clients % processes else 0)
        receiver, sender = context.Pipe(duplex=False)
        arguments = (host, int(port), operations, share, start_at, seconds, once, index)
        process = context.Process(target=_worker, args=(sender, arguments), daemon=True)
        process.start()
        sender.close()
        workers.append((process, receiver))
    merged = Results()
    for process, receiver in workers:
        merged.merge(receiver.recv())
        process.join()
    return merged
