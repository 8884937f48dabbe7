"""Who may call the daemon's HTTP endpoints: the sweep token and the Host header check.

Read-only endpoints answer anyone who can reach the port (loopback by default). `POST /sweep`
starts work, so it needs `Authorization: Bearer <token>`. The token is $REVALIDATOR_SWEEP_TOKEN,
else the first line of `daemon.sweep_token_file`; when neither exists the daemon writes a fresh
random one to that file, readable by its owner only, so that `revalidator sweep` run by the same
user finds it. Every request's Host header must name this server (an IP literal, localhost, the
listen host or one of `daemon.allowed_hosts`): a page that rebinds its own domain name to
127.0.0.1 sends that name as Host and is refused.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path

TOKEN_VARIABLE = "REVALIDATOR_SWEEP_TOKEN"


class TokenError(ValueError):
    """The sweep token file exists but cannot be used (bad input, exit 2)."""


def token_path(daemon_settings, base_dir: str | Path) -> Path:
    path = Path(daemon_settings.sweep_token_file).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def read_token(daemon_settings, base_dir: str | Path) -> str | None:
    """The configured token, or None when there is none yet (no variable, no file)."""
    if os.environ.get(TOKEN_VARIABLE, "").strip():
        return os.environ[TOKEN_VARIABLE].strip()
    path = token_path(daemon_settings, base_dir)
    try:
        token = path.read_text().strip().splitlines()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokenError(f"sweep token file {path}: cannot be read ({exc.strerror or exc})") from exc
    if not token or len(token[0].strip()) < 16:
        raise TokenError(f"sweep token file {path}: expected a token of at least 16 characters on its first line")
    return token[0].strip()


def ensure_token(daemon_settings, base_dir: str | Path) -> str:
    """The configured token, or a new one written to the token file (mode 0600)."""
    token = read_token(daemon_settings, base_dir)
    if token is not None:
        return token
    path = token_path(daemon_settings, base_dir)
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process wrote it first: use theirs
        return read_token(daemon_settings, base_dir) or token
    except OSError as exc:
        raise TokenError(f"sweep token file {path}: cannot be created ({exc.strerror or exc}); set "
                         f"{TOKEN_VARIABLE} or daemon.sweep_token_file") from exc
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def bearer_matches(header: str | None, token: str) -> bool:
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def host_allowed(host_header: str | None, listen_host: str, allowed: list[str]) -> bool:
    """Whether a Host header names this server rather than a name rebound to its address."""
    if not host_header:
        return False  # HTTP/1.1 requires it; every real client sends it
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:9108
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    try:
        ipaddress.ip_address(host)
        return True  # an IP literal cannot be rebound; probes and scrapes in a cluster use the pod IP
    except ValueError:
        pass
    return host in {"localhost", listen_host.lower(), *(h.lower() for h in allowed)}
