"""Telemetry to New Relic: backend latency and errors, breaker changes, failovers, backlog.

Off unless ``NEW_RELIC_LICENSE_KEY`` or ``NEW_RELIC_CONFIG_FILE`` is set: then
:func:`telemetry_from_environment` returns a :class:`NewRelicTelemetry` that starts the agent;
otherwise a plain :class:`Telemetry`, whose methods return at once and which never imports the
agent. Names come from :mod:`storagefs.observability.metric_names` (documented in docs/METRICS.md).

Everything is recorded against the *application*, not the current transaction: New Relic keys
transactions by thread (or asyncio task), and trio runs every task on one thread, so "the
current transaction" would be whichever background task happened to open one. For the same
reason only one :meth:`Telemetry.background_task` at a time becomes a transaction; one that
overlaps it is recorded as a duration metric instead.

Hooks for code that must not know about New Relic:

* :class:`InstrumentedBackend` times every call of a backend (put it around a
  ResilientBackend to see latency as callers see it, retries included).
* :meth:`Telemetry.watch` subscribes to a ResilientBackend's breaker transitions.
* :class:`BacklogSampler` reports the journal backlog periodically (run()/stop()).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, TypeVar

import trio

from storagefs.backends.base import ListPage, NotFound, ObjectInfo, StoreBase, Upload, peek
from storagefs.observability import metric_names as m
from storagefs.observability.redact import redact
from storagefs.resilience.stats import Remote, RemoteState

T = TypeVar("T")

log = logging.getLogger("storagefs.telemetry")

DEFAULT_APP_NAME = "storagefs"
_NEW_RELIC_DEFAULT_APP_NAME = "Python Application"  # what the agent calls an unnamed app
FAILOVER_EVENT_INTERVAL = 10.0  # seconds: one event per (from, to, op) at most this often


class _StateSource(Protocol):
    def add_state_listener(self, callback: Callable[[str, str, str], None]) -> None: ...


class RedactedError(Exception):
    """Sent to New Relic instead of an exception whose message held a secret."""


def _segment(text: str) -> str:
    # A metric name segment: "/" would add a level to the name.
    return text.replace("/", "_") or "_"


class Telemetry:
    """No telemetry: every method does nothing. :class:`NewRelicTelemetry` does the work."""

    enabled = False

    def start(self, timeout: float = 5.0) -> bool:
        """Start reporting; True when it does. Blocks up to ``timeout`` seconds."""
        return False

    def shutdown(self, timeout: float = 5.0) -> None:
        """Send what is pending and stop (at unmount)."""

    def flush(self) -> None:
        """Send what is held back (failover counts) without stopping."""

    def record_backend_call(self, backend: str, op: str, seconds: float, ok: bool) -> None:
        """One backend operation: its latency, and whether it failed."""

    def breaker_changed(self, backend: str, old: str, new: str) -> None:
        """A circuit breaker transition (the signature of ResilientBackend's listeners)."""

    def failover(self, from_backend: str, to_backend: str, op: str) -> None:
        """``op`` was served by ``to_backend`` because ``from_backend`` did not answer."""

    def journal_backlog(self, pending_ops: int, pending_bytes: int) -> None:
        """A sample of the journal backlog."""

    def background_task(self, name: str) -> contextlib.AbstractContextManager[None]:
        """``with telemetry.background_task(TASK_JOURNAL_REPLAY): ...`` around a unit of
        background work (a replay pass, a bulk download)."""
        return contextlib.nullcontext()

    def notice_error(self, exc: BaseException) -> None:
        """An unexpected error worth a person's attention (not routine backend failures)."""

    def watch(self, backend: _StateSource) -> None:
        """Report the breaker transitions of ``backend`` (a ResilientBackend)."""
        if self.enabled:
            backend.add_state_listener(self.breaker_changed)

    def instrument(self, backend: Remote) -> Remote:
        """``backend`` with its calls timed, or ``backend`` itself when telemetry is off."""
        return InstrumentedBackend(backend, self) if self.enabled else backend


class NewRelicTelemetry(Telemetry):
    """Telemetry through the New Relic Python agent (imported only by :meth:`start`)."""

    def __init__(
        self,
        config_file: str | None = None,
        *,
        environment: str | None = None,
        app_name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config_file = config_file
        self.environment = environment
        self.app_name = app_name
        self._clock = clock
        self._app: Any = None  # newrelic.api.application.Application once started
        self._names: dict[tuple[str, str], tuple[str, str]] = {}
        self._failovers: dict[tuple[str, str, str], tuple[float, int]] = {}  # last sent, unsent

    @property
    def application(self) -> Any:
        return self._app

    def start(self, timeout: float = 5.0) -> bool:
        try:
            import newrelic.agent
            import newrelic.core.config

            newrelic.agent.initialize(self.config_file, self.environment)
            name = self.app_name or newrelic.core.config.global_settings().app_name
            if not name or name == _NEW_RELIC_DEFAULT_APP_NAME:
                name = DEFAULT_APP_NAME
            self._app = newrelic.agent.register_application(name=name, timeout=timeout)
        except Exception as exc:
            # Telemetry must never keep the mount from starting.
            log.warning(
                "New Relic not started: %s: %s", type(exc).__name__, redact(str(exc)) or "-"
            )
            self._app = None
            return False
        self.enabled = True
        log.info(
            "New Relic agent started for %r (%s)",
            self._app.name,
            "connected" if self._app.active else "connecting in the background",
        )
        return True

    def shutdown(self, timeout: float = 5.0) -> None:
        if self._app is None:
            return
        self.flush()
        import newrelic.agent

        newrelic.agent.shutdown_agent(timeout)
        self._app = None
        self.enabled = False

    def record_backend_call(self, backend: str, op: str, seconds: float, ok: bool) -> None:
        app = self._app
        if app is None:
            return
        names = self._names.get((backend, op))
        if names is None:
            fields = {"backend": _segment(backend), "op": _segment(op)}
            names = (m.NR_BACKEND_LATENCY.format(**fields), m.NR_BACKEND_ERRORS.format(**fields))
            self._names[(backend, op)] = names
        app.record_custom_metric(names[0], seconds)
        if not ok:
            app.record_custom_metric(names[1], 1)

    def breaker_changed(self, backend: str, old: str, new: str) -> None:
        if self._app is not None:
            self._app.record_custom_event(
                m.EVENT_BREAKER_CHANGE, {"backend": backend, "old_state": old, "new_state": new}
            )

    def failover(self, from_backend: str, to_backend: str, op: str) -> None:
        if self._app is None:
            return
        # During an outage every read fails over: one event per key and interval, with a count.
        key = (from_backend, to_backend, op)
        now = self._clock()
        last, unsent = self._failovers.get(key, (None, 0))
        if last is not None and now - last < FAILOVER_EVENT_INTERVAL:
            self._failovers[key] = (last, unsent + 1)
            return
        self._failovers[key] = (now, 0)
        self._failover_event(from_backend, to_backend, op, unsent + 1)

    def flush(self) -> None:
        """Send the failovers held back by the per-interval limit."""
        for key, (last, unsent) in list(self._failovers.items()):
            if unsent and self._app is not None:
                self._failovers[key] = (last, 0)
                self._failover_event(*key, unsent)

    def _failover_event(self, source: str, target: str, op: str, count: int) -> None:
        self._app.record_custom_event(
            m.EVENT_FAILOVER,
            {"from_backend": source, "to_backend": target, "op": op, "count": count},
        )

    def journal_backlog(self, pending_ops: int, pending_bytes: int) -> None:
        app = self._app
        if app is None:
            return
        app.record_custom_metric(m.NR_JOURNAL_PENDING_OPS, pending_ops)
        app.record_custom_metric(m.NR_JOURNAL_PENDING_BYTES, pending_bytes)
        app.record_custom_event(
            m.EVENT_JOURNAL_BACKLOG, {"pending_ops": pending_ops, "pending_bytes": pending_bytes}
        )

    @contextlib.contextmanager
    def background_task(self, name: str) -> Iterator[None]:
        app = self._app
        if app is None:
            yield
            return
        import newrelic.agent

        if newrelic.agent.current_transaction() is not None:
            started = time.perf_counter()
            try:
                yield
            finally:
                app.record_custom_metric(
                    m.NR_TASK_OVERLAPPED.format(task=_segment(name)), time.perf_counter() - started
                )
            return
        transaction = newrelic.agent.BackgroundTask(app, name=name, group=m.NR_TRANSACTION_GROUP)
        transaction.__enter__()
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, trio.Cancelled | KeyboardInterrupt | GeneratorExit):
                transaction.__exit__(None, None, None)  # stopped, not failed
            else:
                shown = self._shareable(exc)
                transaction.__exit__(type(shown), shown, exc.__traceback__)
            raise
        else:
            transaction.__exit__(None, None, None)

    def notice_error(self, exc: BaseException) -> None:
        if self._app is None:
            return
        if exc.__traceback__ is None:
            # The agent drops errors without a traceback; give it one from here.
            try:
                raise exc
            except BaseException:
                pass
        shown = self._shareable(exc)
        self._app.notice_error((type(shown), shown, exc.__traceback__))

    @staticmethod
    def _shareable(exc: BaseException) -> BaseException:
        text = str(exc)
        clean = redact(text)
        if clean == text:
            return exc
        return RedactedError(f"{type(exc).__name__}: {clean}")


def telemetry_from_environment(environ: Mapping[str, str] | None = None) -> Telemetry:
    """New Relic when ``NEW_RELIC_LICENSE_KEY`` or ``NEW_RELIC_CONFIG_FILE`` is set, else the
    no-op. Not started yet: call :meth:`Telemetry.start` when the daemon starts."""
    env = os.environ if environ is None else environ
    config_file = env.get("NEW_RELIC_CONFIG_FILE") or None
    if config_file or env.get("NEW_RELIC_LICENSE_KEY"):
        return NewRelicTelemetry(config_file, environment=env.get("NEW_RELIC_ENVIRONMENT") or None)
    return Telemetry()


class InstrumentedBackend(StoreBase):
    """``inner`` with every call timed and reported to ``telemetry``; itself a
    :class:`~storagefs.resilience.stats.Remote` with the inner one's state and streaming
    uploads (those are not timed here: each part is a call of the inner one).

    A result or NotFound counts as success (the store answered); any other exception as a
    failure. Cancelled calls are not reported: the caller gave up, the store did not fail.
    Other attributes (``stats``, ``breaker_state``, ``add_state_listener`` of a
    ResilientBackend) are the inner backend's.
    """

    def __init__(
        self,
        inner: Remote,
        telemetry: Telemetry,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.telemetry = telemetry
        self._clock = clock

    def __getattr__(self, attr: str) -> Any:
        if attr == "inner":  # not set yet (copy, unpickling): no endless recursion
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def describe(self) -> str:
        return self.inner.describe()

    @property
    def state(self) -> RemoteState:
        return self.inner.state

    @property
    def streams(self) -> bool:
        return self.inner.streams

    async def start_upload(self, key: str, metadata: Mapping[str, str]) -> Upload | None:
        return await self.inner.start_upload(key, metadata)

    async def _timed(self, op: str, call: Callable[[], Any]) -> Any:
        started = self._clock()
        try:
            result = await call()
        except NotFound:
            self._report(op, started, ok=True)
            raise
        except Exception:
            self._report(op, started, ok=False)
            raise
        # trio.Cancelled is not an Exception: a cancelled call is not reported at all.
        self._report(op, started, ok=True)
        return result

    def _report(self, op: str, started: float, *, ok: bool) -> None:
        self.telemetry.record_backend_call(self.name, op, self._clock() - started, ok)

    async def open(self) -> None:
        await self._timed("open", self.inner.open)

    async def close(self) -> None:
        await self.inner.close()

    async def stat(self, key: str) -> ObjectInfo:
        info: ObjectInfo = await self._timed("stat", lambda: self.inner.stat(key))
        return info

    async def peek(self, key: str, length: int) -> tuple[ObjectInfo, bytes]:
        found: tuple[ObjectInfo, bytes] = await self._timed(
            "peek", lambda: peek(self.inner, key, length)
        )
        return found

    async def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        limit: int = 1000,
    ) -> ListPage:
        page: ListPage = await self._timed(
            "list",
            lambda: self.inner.list(prefix, delimiter=delimiter, token=token, limit=limit),
        )
        return page

    async def read(self, key: str, offset: int, length: int) -> bytes:
        data: bytes = await self._timed("read", lambda: self.inner.read(key, offset, length))
        return data

    async def download(self, key: str, dest: str, **options: Any) -> ObjectInfo:
        # options: a ResilientBackend's size_hint, passed through untouched.
        info: ObjectInfo = await self._timed(
            "download",
            lambda: self.inner.download(key, dest, **options),
        )
        return info

    async def write(self, key: str, source: str, metadata: Mapping[str, str]) -> ObjectInfo:
        info: ObjectInfo = await self._timed(
            "write", lambda: self.inner.write(key, source, metadata)
        )
        return info

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        info: ObjectInfo = await self._timed(
            "write_bytes", lambda: self.inner.write_bytes(key, data, metadata)
        )
        return info

    async def delete(self, key: str) -> None:
        await self._timed("delete", lambda: self.inner.delete(key))

    async def copy(
        self, src: str, dst: str, metadata: Mapping[str, str] | None = None, **options: Any
    ) -> ObjectInfo:
        info: ObjectInfo = await self._timed(
            "copy",
            lambda: self.inner.copy(src, dst, metadata, **options),
        )
        return info

    async def health(self) -> None:
        await self._timed("health", self.inner.health)


class BacklogSampler:
    """Every ``interval`` seconds, ``source()`` -> (pending ops, pending bytes) to telemetry.

    ``source`` reads in-memory figures (e.g. ``chain.journal.stats()``); it must not block.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        source: Callable[[], tuple[int, int]],
        interval: float = 60.0,
    ) -> None:
        self.telemetry = telemetry
        self.source = source
        self.interval = interval
        self._cancel = trio.CancelScope()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if not self.telemetry.enabled:
            return
        with self._cancel:
            while True:
                try:
                    ops, size = self.source()
                    self.telemetry.journal_backlog(ops, size)
                except Exception:
                    log.exception("journal backlog sample failed")
                await trio.sleep(self.interval)

    def stop(self) -> None:
        self._cancel.cancel()
