"""A loopback TCP proxy that can simulate an outage of the service behind it.

`TcpProxy(target_port).start()` listens on a free loopback port and forwards every
connection to `127.0.0.1:target_port`, one thread pair per connection. `outage()`
closes every open connection and refuses new ones (accepted, then closed at once: the
client sees a reset or an empty reply) until `restore()`. `bytes_to_clients` counts what
the service behind it sent (what a client downloaded). Only loopback addresses are ever
used.
"""

from __future__ import annotations

import socket
import threading

from service.server.embedded_s3 import free_port


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._down = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.bytes_to_clients = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(256)
        self._listener = listener
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self._closing.set()
        if self._listener is not None:
            self._listener.close()
        self._close_all()

    def outage(self) -> None:
        """From now on, drop every open connection and refuse new ones."""
        self._down.set()
        self._close_all()

    def restore(self) -> None:
        self._down.clear()

    def _close_all(self) -> None:
        with self._lock:
            connections, self._open = self._open, set()
        for connection in connections:
            _close(connection)

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            if self._down.is_set():
                _close(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pipe, args=(source, sink, source is upstream), daemon=True
                ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
                if downstream:
                    with self._lock:
                        self.bytes_to_clients += len(chunk)
        except OSError:
            pass  # the other side or an outage closed it; both ends are closed below
        finally:
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            _close(source)
            _close(sink)


def _close(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more
    connection.close()
