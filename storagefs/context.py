"""The request a piece of work belongs to: the bottom floor every layer may import.

``request_id`` is a ``contextvars`` variable set per FUSE request (and per replay, per
reconciliation pass) by :func:`correlation`, so it follows the request into trio child tasks
and ``trio.to_thread`` workers and never leaks into a concurrent one. The log set-up
(:mod:`storagefs.observability.logs`) puts it on every line; the journal's replayer reads it to
tag its work. It lives here, below both, so that neither imports the other.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
from collections.abc import Iterator

__all__ = ["correlation", "request_id"]

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "storagefs_request_id", default=None
)
_next_id = itertools.count(1)


@contextlib.contextmanager
def correlation(prefix: str = "req") -> Iterator[str]:
    """``with correlation("fuse") as rid:`` tags every log line inside with ``fuse-<n>``."""
    rid = f"{prefix}-{next(_next_id):x}"
    token = request_id.set(rid)
    try:
        yield rid
    finally:
        request_id.reset(token)
