"""/healthz while 200 concurrent clients scrape /metrics: the daemon's server against the stdlib's.

Both servers serve the same routes on 127.0.0.1: /metrics is the real Exporter over a ledger of
10 targets x 5 candidates (5,000 result series, as benchmarks/scrape.py builds it), /healthz the
daemon's answer. 200 client threads each scrape /metrics `--rounds` times while one more asks
/healthz every 50 ms. Side by side: the stdlib ThreadingHTTPServer (listen backlog 5, a thread
per connection; what the daemon used before) and scheduler.http.HttpServer.

Usage: python benchmarks/http_load.py [--clients 200] [--rounds 3]
Last line: {"metric": "healthz_p99_ms_under_200_scrapers", "value": ..., "target": 100, "ok": ...}
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import scrape  # noqa: E402
from scheduler.exporter import Exporter  # noqa: E402
from scheduler.http import HttpServer, _Handler, json_response  # noqa: E402


class StdlibServer(ThreadingHTTPServer):
    """The stdlib server with the daemon's handler and none of its limits."""

    daemon_threads = True

    def __init__(self, routes) -> None:
        self.routes, self.protected, self.token, self.allowed_hosts = routes, frozenset(), None, []
        self.host, self.timeout = "127.0.0.1", None
        super().__init__(("127.0.0.1", 0), _Handler)
        self.address = "%s:%d" % self.server_address[:2]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def request(address: str, path: str, timeout: float) -> float | None:
    """Seconds for one whole answer; None for a timeout or a refused or reset connection."""
    host, port = address.rsplit(":", 1)
    started = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        conn.request("GET", path)
        answer = conn.getresponse()
        answer.read()
        conn.close()
        return time.perf_counter() - started if answer.status == 200 else None
    except OSError:
        return None


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")


def load(address: str, clients: int, rounds: int, timeout: float) -> dict:
    scrapes: list[float | None] = []
    probes: list[float | None] = []
    done = threading.Event()

    def scraper() -> None:
        for _ in range(rounds):
            scrapes.append(request(address, "/metrics", timeout))

    def prober() -> None:
        while not done.is_set():
            probes.append(request(address, "/healthz", timeout))
            time.sleep(0.05)
    threads = [threading.Thread(target=scraper) for _ in range(clients)]
    probe = threading.Thread(target=prober)
    started = time.perf_counter()
    probe.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    probe.join()
    ok_scrapes, ok_probes = [s for s in scrapes if s is not None], [p for p in probes if p is not None]
    return {"seconds": round(time.perf_counter() - started, 1), "scrapes": len(scrapes),
            "scrape_failures": len(scrapes) - len(ok_scrapes), "scrape_p99_s": round(p99(ok_scrapes), 3),
            "healthz": len(probes), "healthz_failures": len(probes) - len(ok_probes),
            "healthz_p99_ms": round(1000 * p99(ok_probes), 1)}


def serve(kind: str) -> None:
    """Serve in this process (the server under test has its own interpreter and GIL) until stdin closes."""
    scrape.TARGETS, scrape.CANDIDATES = 10, 5
    with tempfile.TemporaryDirectory() as tmp:
        ledger, snapshot = scrape.build(Path(tmp))
        exporter = Exporter(ledger, lambda: snapshot)
        exporter.render()  # warm, as the daemon does at start
        routes = {("GET", "/metrics"): lambda q: (200, "text/plain", exporter.render()),
                  ("GET", "/healthz"): lambda q: json_response(200, {"status": "ok"})}
        server = StdlibServer(routes) if kind == "stdlib" else HttpServer("127.0.0.1:0", routes)
        if isinstance(server, HttpServer):
            server.start()
        print(server.address, flush=True)
        sys.stdin.read()
        server.stop()
        ledger.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--serve", choices=("stdlib", "revalidator"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    results = {}
    for name in ("stdlib", "revalidator"):
        proc = subprocess.Popen([sys.executable, __file__, "--serve", name], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        try:
            address = proc.stdout.readline().strip()
            results[name] = load(address, args.clients, args.rounds, args.timeout)
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)
        print(json.dumps({"server": name, "clients": args.clients, **results[name]}), flush=True)
    ours = results["revalidator"]
    print(json.dumps({"metric": "healthz_p99_ms_under_200_scrapers", "value": ours["healthz_p99_ms"], "target": 100,
                      "stdlib_healthz_p99_ms": results["stdlib"]["healthz_p99_ms"],
                      "ok": ours["healthz_p99_ms"] < 100 and ours["healthz_failures"] == 0
                      and ours["scrape_failures"] == 0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
