"""Fault 6: HTTP under load. The daemon's real HTTP server on 127.0.0.1, real sockets.

Timing is measured by benchmarks/scrape_burst.py; these tests assert what must hold on any
machine: stalled connections are closed, the threads stay as many as configured, probes answer
while every worker is busy, and a client that goes away costs one log line, not a traceback.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import urllib.request

import pytest

from scheduler.http import HttpServer, json_response
from tests.e2e.observability import wait_for


def serve(routes=None, **kwargs) -> HttpServer:
    routes = routes or {("GET", "/healthz"): lambda q: json_response(200, {"status": "ok"}),
                        ("GET", "/metrics"): lambda q: (200, "text/plain", b"x 1\n" * 50_000)}
    server = HttpServer("127.0.0.1:0", routes, **kwargs)
    server.start()
    return server


@pytest.fixture
def server():
    started: list[HttpServer] = []

    def make(**kwargs) -> HttpServer:
        started.append(serve(**kwargs))
        return started[-1]
    yield make
    for s in started:
        s.stop()


def get(server: HttpServer, path: str) -> int:
    with urllib.request.urlopen(f"http://{server.address}{path}", timeout=30) as answer:
        answer.read()
        return answer.status


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed this connection (reads end of file, or a reset)."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def test_stalled_connections_are_closed_and_hold_no_thread(server) -> None:
    http = server(workers=4, timeout=0.5)
    threads = threading.active_count()
    silent = [socket.create_connection(http.server_address) for _ in range(100)]
    # Half a request line and then nothing: these reach a worker, whose socket times out.
    partial = [socket.create_connection(http.server_address) for _ in range(8)]
    for sock in partial:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert threading.active_count() == threads  # a fixed pool: no thread per connection
    wait_for(lambda: all(closed_by_peer(s) for s in silent + partial), 60, "the stalled connections to be closed")
    assert threading.active_count() == threads
    assert http.dropped >= 100
    assert get(http, "/healthz") == 200 and get(http, "/metrics") == 200
    for sock in silent + partial:
        sock.close()


def test_healthz_answers_while_every_worker_is_held_by_a_stalled_request(server) -> None:
    http = server(workers=2, timeout=30)
    held = [socket.create_connection(http.server_address) for _ in range(6)]
    for sock in held:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # the pool's two workers wait for the rest
    wait_for(lambda: http._pool.qsize() >= 4, 30, "the stalled requests to fill the workers")
    assert get(http, "/healthz") == 200  # the probe lane is not behind them
    for sock in held:
        sock.close()


def test_a_full_queue_answers_503_instead_of_queueing_without_bound(server) -> None:
    release = threading.Event()

    def slow(query):
        release.wait(30)
        return json_response(200, {})
    http = server(routes={("GET", "/slow"): slow}, workers=1, timeout=30, queue_size=16)
    clients = [socket.create_connection(http.server_address) for _ in range(200)]
    for sock in clients:
        sock.sendall(b"GET /slow HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    # One served, sixteen waiting: every other connection is answered 503 at once.
    wait_for(lambda: http.dropped == 200 - 16 - 1, 30, "the queue to fill and the rest to be refused")
    release.set()
    answers = []
    for sock in clients:
        sock.settimeout(30)
        answers.append(sock.recv(64).split(b" ")[1])
        sock.close()
    assert answers.count(b"200") == 16 + 1 and answers.count(b"503") == 200 - 17


def test_a_client_that_goes_away_mid_answer_is_one_log_line(server, caplog) -> None:
    big = b"x 1\n" * 4_000_000  # 16 MB: more than the socket buffers take, so the writes meet the reset
    http = server(routes={("GET", "/metrics"): lambda q: (200, "text/plain", big),
                          ("GET", "/healthz"): lambda q: json_response(200, {})}, workers=2, timeout=5)
    caplog.set_level(logging.DEBUG, logger="revalidator.http")
    for _ in range(3):
        sock = socket.create_connection(http.server_address)
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(12).startswith(b"HTTP/1.0 200")  # the answer is being written
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        sock.close()
    wait_for(lambda: sum(r.message == "connection ended early" for r in caplog.records) == 3, 30,
             "the three broken answers to be logged")
    records = [r for r in caplog.records if r.name == "revalidator.http"]
    assert not [r for r in records if r.exc_info], "a traceback was logged for a client that went away"
    assert get(http, "/healthz") == 200
