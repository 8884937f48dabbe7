"""Print uv options, one per line, that make `uv pip install` use the package sources pip is configured with
(pip's config files and PIP_* variables): its index, extra indexes, find-links folders, constraints and CA
bundle. uv reads none of pip's configuration, and without these it would resolve elsewhere than pip does.

Run with the virtual environment's python: `pip config list` is asked, not parsed from files here.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

# pip's option -> uv's (pip's cert goes to uv as SSL_CERT_FILE: `uv_args.py --cert`)
OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
           "find-links": "--find-links", "constraint": "--constraint"}


def pip_settings() -> dict[str, list[str]]:
    """pip's effective settings per option name, from every section (global, install, :env:)."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=True).stdout
    settings: dict[str, list[str]] = {}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        option = key.rsplit(".", 1)[-1]
        values = shlex.split(value)
        settings[option] = [v for chunk in values for v in chunk.split()]  # pip splits on whitespace too
    return settings


def main(argv: list[str]) -> None:
    settings = pip_settings()
    if argv == ["--cert"]:  # the CA bundle pip trusts, for uv's SSL_CERT_FILE
        print(settings.get("cert", [""])[0])
        return
    for option, flag in OPTIONS.items():
        for value in settings.get(option, []):
            print(flag)
            print(value)


if __name__ == "__main__":
    main(sys.argv[1:])
