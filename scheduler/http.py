"""The daemon's one HTTP server: /healthz, /readyz, /metrics, /gates, /status and the sweep trigger.

Bound to 127.0.0.1 by default. Routes are a plain table. One thread accepts connections and
waits (in a selector, holding no worker) for each to send its request line; a connection that
sends nothing within `timeout` seconds is closed there. `GET /healthz` and `GET /readyz` then
go to two probe threads of their own, so that liveness answers at once however many scrapes
are waiting; everything else goes to a fixed pool of workers behind a bounded queue (a waiting
connection costs a file descriptor, not a thread; over the bound the answer is 503).
A worker's socket times out too, so a client that stalls mid-request frees its thread. With
TLS, requests cannot be told apart before the handshake, so all of them share the pool.
"""

from __future__ import annotations

import json
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

from scheduler.access import bearer_matches, host_allowed

log = logging.getLogger("revalidator.http")

# A route answers (status, content type, body) for a request's query parameters.
Response = tuple[int, str, bytes]
Route = Callable[[dict[str, str]], Response]
BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
PROBE_PREFIXES = (b"GET /healthz", b"GET /readyz")
PROBE_THREADS = 2


class ListenError(ValueError):
    """A listen address that is not HOST:PORT with a port in 0..65535 (bad input, exit 2)."""


def parse_listen(listen: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT"; checked here so that a typo is bad input, not a crash at bind time.
    An empty host (":9108") means loopback: every interface must be asked for ("0.0.0.0:9108")."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ListenError(f"listen address {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:9477")
    if not 0 <= int(port) <= 65535:
        raise ListenError(f"listen address {listen!r}: port {port} is outside 0..65535")
    return host or "127.0.0.1", int(port)


def json_response(status: int, document: object) -> Response:
    return status, "application/json", (json.dumps(document, default=str) + "\n").encode()


class _Handler(BaseHTTPRequestHandler):
    server: "HttpServer"  # type: ignore[assignment]

    def setup(self) -> None:
        self.timeout = self.server.timeout  # socket timeout for every read and write of this connection
        super().setup()

    def _dispatch(self, method: str) -> None:
        server = self.server
        url = urlparse(self.path)
        route = server.routes.get((method, url.path))
        if not host_allowed(self.headers.get("Host"), server.host, server.allowed_hosts):
            status, ctype, body = json_response(421, {"error": f"Host {self.headers.get('Host')!r} is not this "
                                                      "server: add it to daemon.allowed_hosts"})
        elif route is None:
            known = any(path == url.path for _, path in server.routes)
            status, ctype, body = json_response(405 if known else 404, {"error": f"{method} {url.path}"})
        elif (method, url.path) in server.protected and not (
                server.token and bearer_matches(self.headers.get("Authorization"), server.token)):
            status, ctype, body = json_response(401, {"error": f"{method} {url.path} needs Authorization: Bearer "
                                                      "<the daemon's sweep token>"})
        else:
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                status, ctype, body = route(query)
            except Exception:  # a failing endpoint answers 500, the server keeps serving
                log.exception("endpoint failed", extra={"fields": {"path": url.path}})
                status, ctype, body = json_response(500, {"error": "internal error"})
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="revalidator"')
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug(fmt % args)


def tls_context(tls: Any) -> ssl.SSLContext:
    """Server TLS from the config's daemon.tls; client certificates checked against client_cafile."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.certfile, tls.keyfile)
    if tls.client_cafile:
        context.load_verify_locations(cafile=tls.client_cafile)
        context.verify_mode = ssl.CERT_REQUIRED if tls.client_auth_required else ssl.CERT_OPTIONAL
    return context


class HttpServer:
    def __init__(self, listen: str, routes: dict[tuple[str, str], Route], tls: Any = None, *,
                 token: str | None = None, protected: frozenset[tuple[str, str]] = frozenset(),
                 allowed_hosts: list[str] | None = None, workers: int = 8, timeout: float = 10.0,
                 queue_size: int = 1024) -> None:
        self.host, port = parse_listen(listen)
        self.routes, self.token, self.protected = routes, token, protected
        self.allowed_hosts = list(allowed_hosts or ())
        self.timeout = timeout
        self.tls = tls_context(tls) if tls is not None else None
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.socket = socket.create_server((self.host, port), family=family, backlog=BACKLOG)
        self.server_address = self.socket.getsockname()
        self.dropped = 0  # connections closed for sending nothing in time, or refused with a full queue
        self._stop = threading.Event()
        self._pool: queue.Queue[tuple[socket.socket, Any] | None] = queue.Queue(maxsize=queue_size)
        self._probes: queue.Queue[tuple[socket.socket, Any] | None] = queue.Queue(maxsize=256)
        self._threads = [threading.Thread(target=self._accept_loop, name="http", daemon=True)]
        self._threads += [threading.Thread(target=self._work, args=(self._pool,), name=f"http-worker-{i}",
                                           daemon=True) for i in range(workers)]
        self._threads += [threading.Thread(target=self._work, args=(self._probes,), name=f"http-probe-{i}",
                                           daemon=True) for i in range(PROBE_THREADS)]

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads[1:]:
            try:
                (self._pool if "worker" in thread.name else self._probes).put(None, timeout=1)
            except queue.Full:  # a daemon thread; it ends with the process
                pass
        for thread in self._threads:
            thread.join(timeout=5)
        self.socket.close()

    # -- accepting ---------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        selector = selectors.DefaultSelector()
        self.socket.setblocking(False)
        selector.register(self.socket, selectors.EVENT_READ, None)
        waiting: dict[socket.socket, float] = {}  # accepted, no request line yet -> accepted at
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.25):
                    if key.data is None:
                        self._accept(selector, waiting)
                    else:
                        self._readable(selector, waiting, key.fileobj, key.data)  # type: ignore[arg-type]
                deadline = time.monotonic() - self.timeout
                for conn in [c for c, since in waiting.items() if since < deadline]:
                    self.dropped += 1
                    log.info("connection closed: no request within the timeout",
                             extra={"fields": {"timeout_seconds": self.timeout}})
                    self._forget(selector, waiting, conn)
        finally:
            for conn in list(waiting):
                self._forget(selector, waiting, conn)
            selector.close()

    def _accept(self, selector: selectors.BaseSelector, waiting: dict) -> None:
        while True:
            try:
                conn, peer = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: the listener itself stays up
                log.warning("accept failed", extra={"fields": {"error": str(exc)}})
                return
            if self.tls is not None:  # nothing to peek at before the handshake
                self._hand_over(self._pool, conn, peer)
                continue
            conn.setblocking(False)
            waiting[conn] = time.monotonic()
            selector.register(conn, selectors.EVENT_READ, peer)

    def _readable(self, selector: selectors.BaseSelector, waiting: dict, conn: socket.socket, peer: Any) -> None:
        try:
            head = conn.recv(16, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            head = b""
        if not head:  # the client went away before asking anything
            self._forget(selector, waiting, conn)
            return
        if len(head) < 16 and any(p.startswith(head) for p in PROBE_PREFIXES):
            return  # too little yet to tell a probe from a scrape
        selector.unregister(conn)
        del waiting[conn]
        conn.setblocking(True)
        probe = head.startswith(PROBE_PREFIXES)
        self._hand_over(self._probes if probe else self._pool, conn, peer)

    def _hand_over(self, lane: queue.Queue, conn: socket.socket, peer: Any) -> None:
        try:
            lane.put_nowait((conn, peer))
        except queue.Full:  # shed load rather than queue without bound
            self.dropped += 1
            try:
                conn.settimeout(1)
                conn.sendall(b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            _close(conn)

    @staticmethod
    def _forget(selector: selectors.BaseSelector, waiting: dict, conn: socket.socket) -> None:
        selector.unregister(conn)
        waiting.pop(conn, None)
        _close(conn)

    # -- serving -----------------------------------------------------------------------------------
    def _work(self, lane: queue.Queue) -> None:
        while (item := lane.get()) is not None:
            conn, peer = item
            try:
                conn.settimeout(self.timeout)
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                _Handler(conn, peer, self)  # type: ignore[arg-type]
            except (ConnectionError, TimeoutError, ssl.SSLError) as exc:  # the client's doing: one line
                log.info("connection ended early", extra={"fields": {"peer": str(peer[0]), "error": repr(exc)}})
            except Exception:  # a bug in a handler must not cost the server a worker
                log.exception("request failed", extra={"fields": {"peer": str(peer[0])}})
            finally:
                _close(conn)


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()
