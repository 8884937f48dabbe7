"""The `revalidator` command line: a thin layer that builds one config and calls the library.

Exit codes: 0 all gates pass, 1 a gate failed, 2 bad input (config, arguments, artifacts,
data), 3 an internal or infrastructure error (a job whose Ray worker held another runtime than
the installed one, error kind stale_runtime, is one: the input was fine). Every error is one line on stderr that names
what is wrong and where; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from scheduler.config import ConfigError, LoadedConfig
from scheduler.cli_records import (UsageError, _load, _print_json, cmd_compare, cmd_history, cmd_report,
                                   cmd_reproduce, cmd_status)
from scheduler.outcome import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_PASS

DEFAULT_CONFIG = "targets.yaml"
# How long `validate` keeps retrying ledger writes that fail (a lock held elsewhere) before it gives up.
VALIDATE_WRITE_PATIENCE_SECONDS = 120.0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args).config
    candidates = sum(len(m.candidates) for m in cfg.models.values())
    print(f"{args.config}: ok: {len(cfg.targets)} target(s), {len(cfg.models)} model(s) with {candidates} "
          f"candidate(s), {len(cfg.suites)} suite(s)")
    return EXIT_PASS


def cmd_fingerprint(args: argparse.Namespace) -> int:
    from runners.probes import probe_stack

    stack = probe_stack()
    if args.json:
        _print_json(stack)
    else:
        for key, value in stack["components"].items():
            print(f"{key:24} {value}")
        for name, outcome in stack["probes"].items():
            if outcome["status"] != "ok":
                print(f"{'probe ' + name:24} {outcome['status']}: {outcome['detail']}")
        print(f"{'fingerprint':24} {stack['hash']}  ({stack['probe_seconds'] * 1000:.0f} ms)")
    return EXIT_PASS


def _progress(done: int, total: int, record: Any) -> None:
    spec, result = record.spec, record.result
    print(f"[{done}/{total}] {spec.model}/{spec.candidate} on {spec.target}: {result.verdict}"
          f" ({result.finished_at - result.started_at:.1f}s)", file=sys.stderr, flush=True)


def _open_ledger(loaded: LoadedConfig) -> Any:
    from scheduler.ledger import Ledger  # SQLAlchemy with it: on the thread that opens the ledger

    return Ledger(loaded.config.ledger, loaded.base_dir)


def cmd_validate(args: argparse.Namespace) -> int:
    from scheduler.dispatch import RayDispatcher
    from scheduler.planning import SelectionError, plan
    from scheduler import report as render
    from scheduler.validate import run_validation

    served = getattr(args, "served_by", None)  # the kept driver, when it runs this command (kept_driver.py)
    loaded = served.config(args) if served else _load(args)
    if args.plot:
        _check_plot_dir(args.plot)
    try:
        jobs = plan(loaded, target=args.target, model=args.model, trigger="manual")
    except SelectionError as exc:
        raise UsageError(str(exc)) from exc
    if not jobs:
        raise UsageError(f"nothing to validate in {args.config} for the given --target/--model")
    dispatcher = served.dispatcher(loaded) if served else RayDispatcher.for_one_shot(loaded)
    show_progress = sys.stderr.isatty() and not args.json
    if show_progress:
        print(f"starting Ray and {len(jobs)} job(s)...", file=sys.stderr, flush=True)
    dispatcher.attach_shared()
    _log_to_file(loaded)
    opening = _InBackground(lambda: _open_ledger(loaded))  # while Ray starts and the workers warm up
    ledger = None
    try:
        dispatcher.start()
        dispatcher.warm(jobs)
        ledger = opening.result()
        if served is None:  # served, the client's signals reach dispatcher.stop through the driver
            for sig in (signal.SIGTERM, signal.SIGINT):  # after Ray's start, which installs a handler of its own
                signal.signal(sig, lambda number, _frame: dispatcher.stop(signal.Signals(number).name))
        result = run_validation(loaded, jobs, ledger, dispatcher, progress=_progress if show_progress else None,
                                give_up_writes_after=VALIDATE_WRITE_PATIENCE_SECONDS)
    finally:
        dispatcher.shutdown()
        opening.join()
        if opening.value is not None:
            opening.value.close()
    if dispatcher.stop_reason:
        cancelled = sum(1 for r in result.records if r.result.error and "validate stopped by" in r.result.error)
        print(f"error: validate stopped by {dispatcher.stop_reason}: {len(result.records) - cancelled} of "
              f"{len(jobs)} job(s) finished, {cancelled} recorded as cancelled in {ledger.where}", file=sys.stderr)
        return EXIT_INTERNAL
    doc = render.document(result)
    if args.json:
        _print_json(doc)
    else:
        print(render.human(result, verbose=not args.quiet))
    if args.plot:
        from scheduler.plots import write_drift_plots

        for path in write_drift_plots(doc["runs"], args.plot):
            print(f"drift plot: {path}", file=sys.stderr)
    return result.exit_code()


class _InBackground(threading.Thread):
    """One call on its own thread, so it overlaps Ray's start-up on the main thread (which must start
    Ray itself: the processes Ray launches die with the thread that launched them). `result()`
    returns what the call returned, or raises what it raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(name="validate-prepare", daemon=True)
        self.call = call
        self.value: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.call()
        except BaseException as exc:  # handed to the main thread by result()
            self.error = exc

    def result(self) -> Any:
        self.join()
        if self.error is not None:
            raise self.error
        return self.value


def _log_to_file(loaded: LoadedConfig) -> None:
    """Log records (ours and Ray's) of a one-shot run go to .revalidator/validate.log beside the config."""
    import ray  # noqa: F401  (its import installs a stderr handler of its own: replaced below)

    from scheduler import logs

    folder = Path(loaded.base_dir) / ".revalidator"
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        pass
    logs.to_file(str(folder / "validate.log"))


def _check_plot_dir(directory: str) -> None:
    """Refuse an unusable --plot directory before any job runs."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--plot {directory}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--plot {directory}: cannot create the directory ({exc.strerror or exc})") from exc
    if not os.access(path, os.W_OK):
        raise UsageError(f"--plot {directory}: the directory is not writable")


def cmd_daemon(args: argparse.Namespace) -> int:
    from scheduler.daemon import run_daemon
    from scheduler.http import ListenError, parse_listen

    if args.listen is not None:
        try:
            parse_listen(args.listen)
        except ListenError as exc:
            raise UsageError(f"--listen: {exc}") from exc
    return run_daemon(args.config, listen=args.listen)


def cmd_plan_rows(args: argparse.Namespace) -> int:
    from scheduler import rows_plan

    loaded = _load(args, check_files=False)
    unknown = [s for s in args.suite or () if s not in loaded.config.suites]
    if unknown:
        raise UsageError(f"--suite {unknown[0]!r}: no such suite in {args.config}")
    if not 0 < args.discordance < 1:
        raise UsageError(f"--discordance {args.discordance:g}: a share of rows, between 0 and 1")
    if args.accuracy is not None and not 0 < args.accuracy < 1:
        raise UsageError(f"--accuracy {args.accuracy:g}: a share of rows, between 0 and 1")
    document = rows_plan.plan(loaded, args.discordance, args.accuracy, args.suite)
    if args.json:
        _print_json(document)
    else:
        print(rows_plan.human(document))
    return EXIT_PASS


def cmd_sweep(args: argparse.Namespace) -> int:
    """Ask the running daemon for a sweep; with none running, sweep once here."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from scheduler.access import TokenError, read_token

    loaded = _load(args)
    if args.target is not None and args.target not in loaded.config.targets:
        raise UsageError(f"--target {args.target!r}: no such target in {args.config}")
    query = urllib.parse.urlencode({k: v for k, v in (("target", args.target), ("force", "1" if args.force else None))
                                    if v})
    url = f"http://{loaded.config.daemon.listen}/sweep?{query}"
    try:
        token = read_token(loaded.config.daemon, loaded.base_dir)
    except TokenError as exc:
        raise UsageError(str(exc)) from exc
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST", headers=headers), timeout=5) as answer:
            print(f"sweep queued by the daemon at {loaded.config.daemon.listen}: {answer.read().decode().strip()}")
            return EXIT_PASS
    except urllib.error.HTTPError as exc:
        raise UsageError(f"the daemon refused the sweep: {exc.read().decode().strip()}") from exc
    except (urllib.error.URLError, OSError):
        print(f"no daemon at {loaded.config.daemon.listen}; sweeping once here", file=sys.stderr)
    return _sweep_once(loaded, args)


def _sweep_once(loaded: LoadedConfig, args: argparse.Namespace) -> int:
    """The daemon's sweep, once, in this process: probe and record every target, plan, validate."""
    from scheduler import report as render
    from scheduler.dispatch import RayDispatcher
    from scheduler.events import Manual
    from scheduler.ledger import Ledger
    from scheduler.planning import Planner
    from scheduler.sweep import plan_event, probe_targets
    from scheduler.validate import run_validation

    ledger = Ledger(loaded.config.ledger, loaded.base_dir)
    dispatcher = RayDispatcher.for_one_shot(loaded)
    try:
        dispatcher.start()
        probe_targets(dispatcher, ledger, loaded.config.targets, 60)
        plan = plan_event(Planner(loaded), ledger, Manual(target=args.target, force=args.force))
        dispatcher.warm(plan.jobs)
        result = run_validation(loaded, plan.jobs, ledger, dispatcher)
    finally:
        dispatcher.shutdown()
        ledger.close()
    print(render.human(result, verbose=False))
    if plan.skipped_known:
        print(f"{plan.skipped_known} job(s) already validated on the current stack (use --force to re-run)")
    return result.exit_code()


def cmd_local_ray(args: argparse.Namespace) -> int:
    """List (or stop) the local Rays kept between one-shot commands."""
    from scheduler import local_ray
    from scheduler.dispatch import InfrastructureError
    from scheduler.driver_keeper import kept_driver

    found = local_ray.instances()
    for directory, state in found:
        idle = time.time() - (local_ray.last_used(directory) or time.time())  # none yet: in use since it started
        driver = kept_driver(directory)
        print(f"{state['address']}  supervisor pid {state['supervisor_pid']}  idle {idle:.0f} s of "
              f"{state['keep_seconds']:g} s  {directory}" + (f"  kept driver pid {driver['pid']}" if driver else ""))
        if args.stop and not local_ray.stop(directory):
            raise InfrastructureError(f"the local Ray in {directory} did not stop within 60 s")
    if not found:
        print(f"no local Ray kept in {local_ray.base_directory()}")
    elif args.stop:
        print(f"stopped {len(found)}")
    return EXIT_PASS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="revalidator", description="Re-validate quantized models against their "
                                     "full-precision baselines on every hardware target.")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-c", "--config", default=os.environ.get("REVALIDATOR_CONFIG", DEFAULT_CONFIG),
                       help="config file (default: $REVALIDATOR_CONFIG or targets.yaml)")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="print the traceback of an internal error")
        p.set_defaults(func=func)
        return p

    add("check-config", cmd_check_config, "validate the config file and exit")
    add("fingerprint", cmd_fingerprint, "probe this machine's stack").add_argument("--json", action="store_true")
    p = add("validate", cmd_validate, "run every applicable (target, model, candidate, suite) now")
    p.add_argument("--target", help="only this target")
    p.add_argument("--model", help="only this model")
    p.add_argument("--json", action="store_true", help="print the versioned JSON document")
    p.add_argument("-q", "--quiet", action="store_true", help="only verdicts and failures, no per-slice table")
    p.add_argument("--plot", metavar="DIR", help="write each generative run's drift curves as SVG into DIR")
    add("status", cmd_status, "current gate per model, candidate and target").add_argument("--json", action="store_true")
    p = add("history", cmd_history, "recent runs from the ledger")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--model")
    p.add_argument("--target")
    p.add_argument("--json", action="store_true")
    p = add("daemon", cmd_daemon, "watch every target and re-validate what a stack change affects")
    p.add_argument("--listen", help="HOST:PORT for /healthz, /readyz, /sweep (default: daemon.listen)")
    p = add("sweep", cmd_sweep, "re-validate now: through the running daemon, or once here if none runs")
    p.add_argument("--target", help="only this target")
    p.add_argument("--force", action="store_true", help="re-run jobs already validated on the current stack")
    p = add("plan-rows", cmd_plan_rows, "rows each slice needs for the suites' tolerances and confidence")
    p.add_argument("--suite", action="append", help="only this suite (repeatable)")
    p.add_argument("--discordance", type=float, default=0.04,
                   help="share of rows a clean candidate answers differently from the baseline (default 0.04)")
    p.add_argument("--accuracy", type=float, help="the baseline's accuracy, for min_accuracy checks")
    p.add_argument("--json", action="store_true")
    p = add("reproduce", cmd_reproduce, "re-run a recorded run and compare its rows with the recorded ones")
    p.add_argument("run_id")
    p.add_argument("--target", help="run it on this target instead of the recorded one")
    p.add_argument("--json", action="store_true")
    p = add("compare", cmd_compare, "one candidate across targets, and each target across its last stack change")
    p.add_argument("--model")
    p.add_argument("--candidate")
    p.add_argument("--targets", help="comma-separated targets to compare (default: all)")
    p.add_argument("--json", action="store_true")
    p = add("report", cmd_report, "one run's checks and provenance from the ledger (JSON, or an HTML audit report)")
    p.add_argument("run_id")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML audit report to FILE")
    p = sub.add_parser("local-ray", help="list the local Rays one-shot commands keep (ray.keep_local_seconds)",
                       description="list the local Rays one-shot commands keep (ray.keep_local_seconds)")
    p.add_argument("--stop", action="store_true", help="stop them now")
    p.set_defaults(func=cmd_local_ray)
    return parser


def main(argv: list[str] | None = None, served_by: Any = None) -> int:
    """Run one command; `served_by` is the kept driver running it for a client (scheduler/kept_driver.py)."""
    args = build_parser().parse_args(argv)
    args.served_by = served_by
    from scheduler.dispatch import InfrastructureError
    from scheduler.http import ListenError
    from scheduler.ledger_errors import LedgerError

    def fail(code: int, message: str) -> int:
        if args.debug and code == EXIT_INTERNAL:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        return code

    try:
        return args.func(args)
    except ConfigError as exc:
        print("\n".join(f"error: {e}" for e in exc.errors), file=sys.stderr)
        return EXIT_BAD_INPUT
    except (UsageError, ListenError) as exc:
        return fail(EXIT_BAD_INPUT, str(exc))
    except (InfrastructureError, LedgerError) as exc:
        return fail(EXIT_INTERNAL, str(exc))
    except KeyboardInterrupt:
        return fail(EXIT_INTERNAL, "interrupted")
    except Exception as exc:  # a bug: one line, the traceback with --debug
        if _is_database_error(exc):  # a ledger read that failed outside the ledger's own handling
            return fail(EXIT_INTERNAL, f"ledger: {str(getattr(exc, 'orig', exc)).splitlines()[0]}")
        hint = "" if args.debug else " (run with --debug for the traceback)"
        return fail(EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc}{hint}")


def _is_database_error(exc: Exception) -> bool:
    sa = sys.modules.get("sqlalchemy")  # only a command that imported it can have raised one of its errors
    return sa is not None and isinstance(exc, sa.exc.SQLAlchemyError)


def run() -> None:
    """The `revalidator` executable: `main`, then out without the interpreter's teardown (about
    0.4 s after a Ray command: its threads and modules), once output is flushed and logs closed.
    Every command closes its ledger and its Ray connection itself."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
