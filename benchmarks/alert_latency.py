"""Time from a stack change to the alert at the receiver, as poll + job + the rest.

Real processes on 127.0.0.1: the daemon (demo models, a 1 s poll), Prometheus (1 s scrape and
evaluation) with the project's rules, Alertmanager (group_wait 0s) and a webhook receiver. The
upgrade: the firmware file probe changes and the candidate is replaced by a broken build.
  poll = the daemon logs the change - the change was made
  job  = the re-validation job's start to its result in the ledger
  rest = the result in the ledger - the alert at the receiver (scrape, rule evaluation, Alertmanager)

Usage: python benchmarks/alert_latency.py [--rounds N]   (needs prometheus and prometheus-alertmanager)
Last line: {"metric": "alert_rest_seconds", "value": <worst rest>, "target": 5.0, "ok": ...}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.observability import Stack, get_json, wait_for  # noqa: E402

LABELS = {"model": "digits-mlp", "candidate": "int8", "target": "edge-cpu"}


def one_round(stack: Stack, number: int) -> dict[str, float]:
    changed_at = stack.upgrade(firmware=f"2.{number}")  # a new stack each round: nothing to reuse
    delivery = wait_for(lambda: [d for d in stack.receiver.find("RevalidatorGateFailed", "firing", **LABELS)
                                 if d.received_at > changed_at], 120, "the alert")[0]
    log = [line for line in stack.daemon_log() if line["ts"] >= changed_at - 0.01]
    seen = min(line["ts"] for line in log if line["msg"] in ("stack changed", "artifacts or data changed"))
    failed = min((line for line in log if line["msg"] == "job finished" and line.get("verdict") == "fail"),
                 key=lambda line: line["ts"])
    started = max(line["ts"] for line in log if line["msg"] == "job started" and line["run_id"] == failed["run_id"])
    result = {"poll_s": seen - changed_at, "queue_s": started - seen, "job_s": failed["ts"] - started,
              "rest_s": delivery.received_at - failed["ts"], "total_s": delivery.received_at - changed_at}
    stack.roll_back()
    wait_for(lambda: [d for d in stack.receiver.find("RevalidatorGateFailed", "resolved", **LABELS)
                      if d.received_at > delivery.received_at], 120, "the alert to resolve")
    # The roll-back's own jobs finish before the next round changes anything: a job still starting its
    # worker would otherwise read the next round's broken candidate and be taken for that round's.
    wait_for(lambda: not any(get_json(f"http://127.0.0.1:{stack.daemon_port}/status")["jobs"].values()), 120,
             "the daemon to be idle")
    return {k: round(v, 3) for k, v in result.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from examples.build import build

    with tempfile.TemporaryDirectory() as tmp:
        work, demo = Path(tmp) / "stack", Path(tmp) / "demo"
        work.mkdir()
        build(demo)
        stack = Stack(work, demo, poll_seconds=1.0)
        stack.start()
        try:
            wait_for(lambda: (stack.gate() or {}).get("state") == "pass", 90, "the first validation")
            time.sleep(3)
            rounds = [one_round(stack, n) for n in range(args.rounds)]
        finally:
            stack.stop()
    for r in rounds:
        print(json.dumps(r))
    worst = max(r["rest_s"] for r in rounds)
    print(json.dumps({"metric": "alert_rest_seconds", "value": worst, "target": 5.0, "ok": worst < 5.0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
