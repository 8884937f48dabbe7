"""The daemon's one HTTP server: /healthz, /readyz, /metrics, /gates and the manual sweep trigger.

Bound to 127.0.0.1 by default. Routes are a plain table, so that other endpoints (metrics,
gates) are added beside these without touching the server.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

log = logging.getLogger("revalidator.http")

# A route answers (status, content type, body) for a request's query parameters.
Response = tuple[int, str, bytes]
Route = Callable[[dict[str, str]], Response]


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
    server: "HttpServer"

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        route = self.server.routes.get((method, url.path))
        if route is None:
            known = any(path == url.path for _, path in self.server.routes)
            status, ctype, body = json_response(405 if known else 404, {"error": f"{method} {url.path}"})
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


class HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listen: str, routes: dict[tuple[str, str], Route], tls: Any = None) -> None:
        host, port = parse_listen(listen)
        self.routes = routes
        super().__init__((host, port), _Handler)
        if tls is not None:
            self.socket = tls_context(tls).wrap_socket(self.socket, server_side=True)
        self._thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
