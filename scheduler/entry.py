"""The `revalidator` executable. `validate` is first offered to the kept driver of a kept local Ray
(scheduler/kept_client.py): it has the CLI, the config code and Ray imported, and its workers are
warm. Every other command, and a `validate` it does not take, runs here through scheduler.cli,
which is imported only then."""

from __future__ import annotations

import sys


def run() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["validate"] or argv[:2] == ["--debug", "validate"]:
        from scheduler import kept_client

        code = kept_client.served(argv)
        if code is not None:
            kept_client.leave(code)
    from scheduler import cli

    cli.run()


if __name__ == "__main__":
    run()
