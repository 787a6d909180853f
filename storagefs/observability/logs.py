"""Log set-up: readable lines by default, JSON lines with --log-format json.

Every line carries the id of the request it belongs to (``request_id``), set per FUSE request
with :func:`correlation`: one ``cp`` that fails shows up as a handful of lines (lookup, open,
retries, fallback) sharing one id, instead of lines interleaved with every other request. The
id is a ``contextvars`` variable, so it follows the request into its trio child tasks and into
``trio.to_thread`` workers, and never leaks into a concurrent request.

Every line also passes through :mod:`storagefs.observability.redact` before it is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storagefs.context import request_id
from storagefs.observability.redact import redact

# Loggers of libraries that are chatty at INFO, or that print request URLs (with SAS tokens)
# and headers at DEBUG: never below WARNING, whatever level the daemon runs at.
QUIET_LOGGERS = (
    "botocore",
    "boto3",
    "s3transfer",
    "urllib3",
    "requests",
    "azure",
    "msal",
    "newrelic",
)


class CorrelationFilter(logging.Filter):
    """Puts the current ``request_id`` on every record (unless the call gave one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


class RedactingFilter(logging.Filter):
    """Scrubs secrets from the message and the traceback text of records reaching a handler
    (records made before :func:`install_redaction`, or by a foreign record factory)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True  # let the handler report the broken format call as usual
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text)
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def _redacting_factory(inner: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """Scrub each record's message as it is made. Handler filters come too late for anything
    that reads records before the handlers (New Relic's log forwarding hooks callHandlers)."""

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = inner(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:
            return record  # a broken format call is reported by the handler, as usual
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    make.storagefs_redacting = True  # type: ignore[attr-defined]
    return make


def install_redaction() -> None:
    """Make every log record of the process scrubbed at creation (idempotent)."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "storagefs_redacting", False):
        logging.setLogRecordFactory(_redacting_factory(factory))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for attr in ("request_id", "journal_seq", "backend"):
            value = getattr(record, attr, None)
            if value is not None:
                doc[attr] = value
        if record.exc_text:
            doc["exception"] = record.exc_text
        elif record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid is None:
            return text
        first, newline, rest = text.partition("\n")
        return f"{first} [{rid}]{newline}{rest}"


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(CorrelationFilter())
    handler.addFilter(RedactingFilter())
    install_redaction()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for quiet in QUIET_LOGGERS:
        logging.getLogger(quiet).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def daemon_log_path(cache_dir: Path, mountpoint: Path) -> Path:
    """Where a background daemon's output goes: ``<cache dir>/logs/<mountpoint>.log``, so
    ``--cache-dir`` (or STORAGEFS_CACHE_DIR) moves the log with everything else. The
    directory is created private to the user (logs name files)."""
    logs = cache_dir.expanduser() / "logs"
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    return logs / (re.sub(r"[^A-Za-z0-9]+", "_", str(mountpoint)).strip("_") + ".log")
