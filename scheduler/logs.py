"""Structured logs: one JSON object per line (or plain text), with the fields a record carries."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        return f"{stamp} {record.levelname.lower():7} {record.getMessage()} {fields}".rstrip()


def configure(fmt: str = "json", level: int = logging.INFO) -> None:
    """Send revalidator's logs to stderr in `fmt`; quiet the chattier libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("revalidator")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def to_file(path: str) -> None:
    """For one-shot commands: revalidator's and Ray's log records go to `path`, so the terminal
    shows only the command's own output. Without a writable file they are dropped."""
    try:
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(TextFormatter())
    except OSError:
        handler = logging.NullHandler()
    # ray.init(configure_logging=False) clears the "ray" logger's handlers, which would leave its
    # records to Python's last-resort stderr handler: "ray._private" keeps ours.
    for name in ("revalidator", "ray", "ray._private"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    if logging.getLogger("revalidator").level == logging.NOTSET:  # the file holds each job's start and end too
        logging.getLogger("revalidator").setLevel(logging.INFO)
