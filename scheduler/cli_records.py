"""The commands that read what the ledger recorded: status, history, report, reproduce and compare."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from scheduler.config import LoadedConfig, load_config
from scheduler.outcome import EXIT_GATE_FAILED, EXIT_PASS


class UsageError(Exception):
    """Bad arguments detected after parsing (exit 2)."""


def _load(args: argparse.Namespace, check_files: bool = True) -> LoadedConfig:
    return load_config(args.config, check_files=check_files)


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


def _ledger(args: argparse.Namespace):
    """The ledger, only to be read (status, history, report): a read-only file is enough."""
    from scheduler.ledger import Ledger

    loaded = _load(args, check_files=False)
    return Ledger.for_reading(loaded.config.ledger, loaded.base_dir)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"


def current_gates(loaded: LoadedConfig, ledger: Any) -> list:
    """The gates as the daemon's /gates decides them: against the job keys of the current stacks (the
    ledger's latest fingerprints), artifacts and checks, so that a change not yet re-validated is unknown."""
    from scheduler.gates import compute_gates, current_keys
    from scheduler.planning import Planner

    keys = current_keys(Planner(loaded).jobs("current", ledger.latest_fingerprints()))
    return compute_gates(ledger, loaded, keys)


def gates_exit_code(gates: list) -> int:
    """0 only when every gate serves its candidate; 1 when any serves the baseline (failed, unknown or
    pending, insufficient, error, or inconclusive under a blocking policy)."""
    return EXIT_PASS if gates and all(g.use == "candidate" for g in gates) else EXIT_GATE_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    loaded = _load(args, check_files=False)
    ledger = _ledger(args)
    try:
        gates = current_gates(loaded, ledger)
    finally:
        ledger.close()
    if args.json:
        _print_json({"version": 1, "gates": [g.to_dict() for g in gates]})
    else:
        print(f"{'model':20} {'candidate':22} {'target':14} {'gate':13} {'serves':9} {'last run (UTC)':20} reason")
        for g in gates:
            print(f"{g.model:20} {g.candidate:22} {g.target:14} {g.state:13} {g.use:9} {_when(g.last_run_at):20} "
                  f"{g.reason}")
    return gates_exit_code(gates)


def cmd_history(args: argparse.Namespace) -> int:
    rows = _ledger(args).history(limit=args.limit, model=args.model, target=args.target)
    if args.json:
        _print_json({"version": 1, "runs": rows})
        return EXIT_PASS
    for r in rows:
        print(f"{_when(r['created_at'])}  {r['run_id'][:8]}  {r['trigger']:8} {r['target']:14} {r['model']:16} "
              f"{r['candidate']:22} {r['status']:9} {r['verdict'] or '-'}")
    return EXIT_PASS


def cmd_report(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    matches = [r for r in ledger.history(limit=100_000) if r["run_id"].startswith(args.run_id)]
    if len(matches) != 1:
        raise UsageError(f"run id {args.run_id!r} matches {len(matches)} runs in the ledger")
    run = ledger.run(matches[0]["run_id"])
    if args.html:
        from scheduler import report_html

        bound = _load(args, check_files=False).config.metrics.max_cross_target_disagreement
        try:
            Path(args.html).write_text(report_html.render(run, report_html.context(ledger, run, bound)))
        except OSError as exc:
            raise UsageError(f"--html {args.html}: cannot write ({exc.strerror or exc})") from exc
        print(f"report: {args.html}", file=sys.stderr)
        return EXIT_PASS
    _print_json(run)
    return EXIT_PASS


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Re-run a recorded job; 0 when its rows are identical to the recorded ones (scheduler/reproduce.py)."""
    from scheduler.ledger import Ledger
    from scheduler.reproduce import ReproduceError, human, reproduce

    loaded = _load(args, check_files=False)
    ledger = Ledger(loaded.config.ledger, loaded.base_dir)
    try:
        code, doc = reproduce(loaded, ledger, args.run_id, args.target)
    except ReproduceError as exc:
        raise UsageError(str(exc)) from exc
    finally:
        ledger.close()
    _print_json(doc) if args.json else print(human(doc))
    return code


def cmd_compare(args: argparse.Namespace) -> int:
    """One candidate across targets, and each target across its last stack change (scheduler/compare.py)."""
    from scheduler import compare

    loaded = _load(args, check_files=False)
    targets = args.targets.split(",") if args.targets else None
    unknown = [t for t in targets or () if t not in loaded.config.targets]
    if unknown:
        raise UsageError(f"--targets: {unknown} not in {args.config}")
    doc = compare.compare(_ledger(args), loaded.config.metrics.max_cross_target_disagreement, args.model,
                          args.candidate, targets)
    _print_json(doc) if args.json else print(compare.human(doc))
    return compare.exit_code(doc)
