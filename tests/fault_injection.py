"""FaultyBackend: a Backend wrapper whose failures tests program through its own methods.

In the spirit of mountpoint-s3's ``failure_client.rs``: faults are injected through the same
interface the code under test calls, never by monkeypatching. Operation names are the Backend
method names: ``open close stat list read download write write_bytes delete copy health``.

Every call is counted first (``calls[op]``, and ``history`` with its trio time), then the
faults apply in this order: latency, hang, one-off failures (``fail_call``/``fail_next``),
``down``, ``flap``. A call no fault stops goes to the inner backend unchanged.

Errors are given as an exception class (instantiated with a message naming op and key) or an
instance (copied for every raise, so tracebacks never pile up on one shared object).
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Iterable, Mapping

import trio

from storagefs.backends.base import Backend, ListPage, ObjectInfo, TransientError

OPS = frozenset(
    {
        "open",
        "close",
        "stat",
        "list",
        "read",
        "download",
        "write",
        "write_bytes",
        "delete",
        "copy",
        "health",
    }
)

ErrorSpec = type[Exception] | Exception


def _ops(ops: str | Iterable[str] | None) -> frozenset[str]:
    if ops is None:
        return OPS
    chosen = frozenset([ops] if isinstance(ops, str) else ops)
    unknown = chosen - OPS
    if unknown:
        raise ValueError(f"unknown operations: {sorted(unknown)}")
    return chosen


def _make(error: ErrorSpec, op: str, key: str) -> Exception:
    if isinstance(error, Exception):
        return copy.copy(error)
    return error(f"injected fault: {op} {key!r}")


class FaultyBackend:
    def __init__(self, inner: Backend, name: str | None = None) -> None:
        self.inner = inner
        self.name = name or inner.name
        self.calls: collections.Counter[str] = collections.Counter()
        self.history: list[tuple[str, str, float]] = []  # (op, key, trio time) of every call
        self._at_call: dict[tuple[str, int], ErrorSpec] = {}  # (op, call number) -> error
        self._down: dict[str, ErrorSpec] = {}
        self._flapping: dict[str, ErrorSpec] = {}
        self._latency: dict[str, float] = {}
        self._hanging: set[str] = set()
        self._release = trio.Event()
        self.hung = 0  # calls waiting in a hang right now

    # --- programming faults ---------------------------------------------------------------

    def fail_call(self, op: str, k: int, error: ErrorSpec = TransientError) -> None:
        """Fail the ``k``-th call of ``op`` from now on (k=1: the very next one)."""
        if k < 1:
            raise ValueError("k counts from 1")
        _ops(op)
        self._at_call[(op, self.calls[op] + k)] = error

    def fail_next(self, op: str, n: int, error: ErrorSpec = TransientError) -> None:
        """Fail the next ``n`` calls of ``op``, then let calls through again."""
        for k in range(1, n + 1):
            self.fail_call(op, k, error)

    def set_down(
        self, error: ErrorSpec = TransientError, ops: str | Iterable[str] | None = None
    ) -> None:
        """Fail every call of ``ops`` (all operations by default) until :meth:`set_up`."""
        for op in _ops(ops):
            self._down[op] = error

    def set_up(self, ops: str | Iterable[str] | None = None) -> None:
        for op in _ops(ops):
            self._down.pop(op, None)

    def flap(
        self, error: ErrorSpec = TransientError, ops: str | Iterable[str] | None = None
    ) -> None:
        """Fail every other call of ``ops``: odd-numbered calls fail, even ones pass."""
        for op in _ops(ops):
            self._flapping[op] = error

    def add_latency(self, seconds: float, ops: str | Iterable[str] | None = None) -> None:
        """Sleep ``seconds`` (trio time) before each call of ``ops``; 0 removes it."""
        for op in _ops(ops):
            if seconds > 0:
                self._latency[op] = seconds
            else:
                self._latency.pop(op, None)

    def hang(self, ops: str | Iterable[str] | None = None) -> None:
        """Calls of ``ops`` wait until cancelled, or until :meth:`release`."""
        self._hanging |= _ops(ops)

    def release(self) -> None:
        """End all hangs: waiting calls continue to the inner backend, new ones pass."""
        self._hanging.clear()
        self._release.set()
        self._release = trio.Event()

    def reset(self) -> None:
        """Remove every fault (call counts are kept)."""
        self._at_call.clear()
        self._down.clear()
        self._flapping.clear()
        self._latency.clear()
        self.release()

    # --- the gate every call passes -------------------------------------------------------

    async def _gate(self, op: str, key: str) -> None:
        self.calls[op] += 1
        number = self.calls[op]
        self.history.append((op, key, trio.current_time()))
        delay = self._latency.get(op)
        if delay:
            await trio.sleep(delay)
        if op in self._hanging:
            self.hung += 1
            try:
                await self._release.wait()
            finally:
                self.hung -= 1
        error = self._at_call.pop((op, number), None)
        if error is None:
            error = self._down.get(op)
        if error is None and op in self._flapping and number % 2 == 1:
            error = self._flapping[op]
        if error is not None:
            await trio.lowlevel.checkpoint()
            raise _make(error, op, key)

    # --- the Backend protocol -------------------------------------------------------------

    def describe(self) -> str:
        return f"faulty({self.inner.describe()})"

    async def open(self) -> None:
        await self._gate("open", "")
        await self.inner.open()

    async def close(self) -> None:
        await self._gate("close", "")
        await self.inner.close()

    async def stat(self, key: str) -> ObjectInfo:
        await self._gate("stat", key)
        return await self.inner.stat(key)

    async def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        limit: int = 1000,
    ) -> ListPage:
        await self._gate("list", prefix)
        return await self.inner.list(prefix, delimiter=delimiter, token=token, limit=limit)

    async def read(self, key: str, offset: int, length: int) -> bytes:
        await self._gate("read", key)
        return await self.inner.read(key, offset, length)

    async def download(self, key: str, dest: str) -> ObjectInfo:
        await self._gate("download", key)
        return await self.inner.download(key, dest)

    async def write(self, key: str, source: str, metadata: Mapping[str, str]) -> ObjectInfo:
        await self._gate("write", key)
        return await self.inner.write(key, source, metadata)

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        await self._gate("write_bytes", key)
        return await self.inner.write_bytes(key, data, metadata)

    async def delete(self, key: str) -> None:
        await self._gate("delete", key)
        await self.inner.delete(key)

    async def copy(
        self, src: str, dst: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        await self._gate("copy", src)
        return await self.inner.copy(src, dst, metadata)

    async def health(self) -> None:
        await self._gate("health", "")
        await self.inner.health()
