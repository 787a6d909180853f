"""ResilientBackend: timeouts, retries and a circuit breaker around one backend.

The one place that decides when to try again. Backends only classify their SDK's errors
(:mod:`storagefs.backends.base`); this wrapper speaks the same :class:`Backend` protocol and adds:

* **Attempt timeout.** Each attempt runs in a trio cancel scope; no answer in time becomes an
  :class:`AttemptTimeout` (a :class:`TransientError`). Transfers get longer: the timeout grows by
  ``size / min_bandwidth`` (default 1 MiB/s), so a 10 GiB upload is not cut after 30 s yet a
  stalled one is still noticed. 1 MiB/s is a deliberately low floor: a real link that slow is
  already unusable, and cutting a healthy big transfer only to start it again is the worse
  mistake. ``download`` and ``copy`` do not know the size up front; they use the caller's
  ``size_hint``, else a size this wrapper saw recently (stat/list/write), else one ``stat``.
* **Retries.** tenacity, on :class:`TransientError` only, with capped exponential backoff and
  "equal jitter" (half the backoff fixed, half random) so clients that failed together do not
  retry together, yet every wait still grows. Waits use ``trio.sleep`` and the stop condition
  reads trio's clock, so ``MockClock`` makes tests instant.
* **Deadline.** The whole operation, retries and backoff included, runs under
  ``operation_deadline`` (plus the size allowance for transfers); a retry whose backoff would end
  past it is not attempted.
* **Breaker.** One pybreaker ``CircuitBreaker`` per backend. A *failed operation* (transient
  errors until attempts or deadline ran out) counts once; single failed attempts do not, since
  retries exist to absorb those and counting them would let one slow request open the breaker.
  An answer of any kind (NotFound, PermissionDenied, ...) is a success: the store answered.
  While open, calls fail fast with :class:`BreakerOpen` without touching the backend. After
  ``breaker_reset`` seconds exactly one call goes through as the probe, with a single attempt
  so the verdict comes quickly; others keep failing fast until it returns.

What a caller sees when a backend is down: :class:`BackendUnavailable`, always — either
:class:`BreakerOpen` (not asked) or :class:`RetriesExhausted` (asked, chained from the last
transient error). A bare TransientError never leaves this wrapper; one type means "fall back".

pybreaker's async support needs tornado, so its synchronous state machine is driven by hand:
admission is checked before the await, the outcome is fed to ``breaker.call`` after it. Its
reset timer reads the wall clock; :class:`_ClockedStorage` answers it from our clock instead.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pybreaker
import tenacity
import trio

from storagefs.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    ListPage,
    NotFound,
    ObjectInfo,
    StoreBase,
    TransientError,
    Upload,
    as_store,
    peek,
    start_upload,
)
from storagefs.config import Settings
from storagefs.resilience.stats import ANSWERED, FAILED, OTHER, RemoteState, short_message

T = TypeVar("T")

log = logging.getLogger("storagefs.resilience")
breaker_log = logging.getLogger("storagefs.breaker")

MiB = 1024 * 1024

# (backend name, old state, new state); states are "closed", "open", "half-open".
StateCallback = Callable[[str, str, str], None]

# How many object sizes to remember for sizing download/copy timeouts without a stat.
_SIZE_MEMORY = 4096


class BreakerOpen(BackendUnavailable):
    """Failed fast: the breaker is open (or its one probe is out). The store was not asked."""


class RetriesExhausted(BackendUnavailable):
    """Transient errors until the attempts or the deadline ran out; chained from the last."""


class AttemptTimeout(TransientError):
    """One attempt got no answer within its timeout."""


# Operations whose answer is small: one attempt waits ``first_byte_timeout`` for it. Reads and
# writes of at most SMALL_REQUEST bytes count too; bigger transfers get ``request_timeout`` plus
# their size allowance, so a transfer making progress is never cut by the short timeout.
METADATA_OPS = frozenset({"stat", "list", "peek", "delete", "health"})
SIZED_OPS = frozenset({"read", "write", "write_bytes"})
SMALL_REQUEST = 1 * MiB
# Operations that only read: with another source to ask they get a single attempt.
READ_OPS = frozenset({"stat", "list", "peek", "read", "download"})

_ELSEWHERE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "storagefs_answer_elsewhere", default=False
)


@contextlib.contextmanager
def answerable_elsewhere(elsewhere: bool = True) -> Iterator[None]:
    """Within this block, reads get one attempt: the caller (the chain) has another backend or
    a cached copy to ask, so retrying a backend that just failed only delays the answer. The
    breaker still counts the failure, and the chain remembers the backend as unwell."""
    token = _ELSEWHERE.set(elsewhere)
    try:
        yield
    finally:
        _ELSEWHERE.reset(token)


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    request_timeout: float = 30.0  # seconds for one attempt of a transfer, before its size
    first_byte_timeout: float = 2.0  # seconds for one attempt of a metadata op or small I/O
    hedge_min_delay: float = 0.1  # the chain asks the next backend after p99, at least this
    hedge_max_delay: float = 1.0  # ... and at most this (also before there are samples)
    retry_attempts: int = 4  # attempts in all, the first included
    retry_initial_backoff: float = 0.1
    retry_max_backoff: float = 2.0
    operation_deadline: float = 60.0  # seconds for one operation, retries included
    breaker_failures: int = 5  # failed operations in a row that open the breaker
    breaker_reset: float = 10.0  # seconds an open breaker waits before letting a probe through
    min_bandwidth: float = 1.0 * MiB  # bytes/s a transfer is allowed to be slow before timing out
    # Base attempt timeout per operation name ("stat", "write", ...) instead of request_timeout.
    op_timeouts: Mapping[str, float] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.retry_attempts < 1 or self.breaker_failures < 1:
            raise ValueError("retry_attempts and breaker_failures must be at least 1")
        positive = (
            self.request_timeout,
            self.first_byte_timeout,
            self.hedge_min_delay,
            self.hedge_max_delay,
            self.retry_initial_backoff,
            self.retry_max_backoff,
            self.operation_deadline,
            self.breaker_reset,
            self.min_bandwidth,
            *self.op_timeouts.values(),
        )
        if min(positive) <= 0:
            raise ValueError("timeouts, backoffs and bandwidth must be positive")
        if self.hedge_min_delay > self.hedge_max_delay:
            raise ValueError("hedge_min_delay must not exceed hedge_max_delay")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> RetryPolicy:
        """The policy for ``settings``; ``overrides`` set fields Settings has no variable for."""
        base = cls(
            request_timeout=settings.request_timeout,
            first_byte_timeout=settings.first_byte_timeout,
            hedge_min_delay=settings.hedge_min_delay,
            hedge_max_delay=settings.hedge_max_delay,
            retry_attempts=settings.retry_attempts,
            retry_initial_backoff=settings.retry_initial_backoff,
            retry_max_backoff=settings.retry_max_backoff,
            operation_deadline=settings.operation_deadline,
            breaker_failures=settings.breaker_failures,
            breaker_reset=settings.breaker_reset,
        )
        return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]

    def attempt_timeout(self, op: str, size: int = 0) -> float:
        """Seconds one attempt of ``op`` moving ``size`` bytes may take: the short answer
        timeout for metadata and small I/O, the long one for transfers, plus the size allowance."""
        short = op in METADATA_OPS or (op in SIZED_OPS and size <= SMALL_REQUEST)
        base = self.first_byte_timeout if short else self.request_timeout
        return self.op_timeouts.get(op, base) + size / self.min_bandwidth

    def deadline(self, op: str, size: int = 0) -> float:
        """Seconds the whole operation may take; always room for at least one full attempt."""
        return max(
            self.operation_deadline + size / self.min_bandwidth, self.attempt_timeout(op, size)
        )

    def backoff(self) -> tenacity.wait.wait_base:
        # Equal jitter: wait = b/2 + uniform(0, b/2), b = min(max, initial * 2**(n-1)).
        half_initial = self.retry_initial_backoff / 2
        half_max = self.retry_max_backoff / 2
        return tenacity.wait_exponential(
            multiplier=half_initial, max=half_max
        ) + tenacity.wait_random_exponential(multiplier=half_initial, max=half_max)


class _ClockedStorage(pybreaker.CircuitMemoryStorage):
    """pybreaker's in-memory state with its reset timer on our clock, not the wall clock.

    pybreaker tests ``datetime.now() < opened_at + reset_timeout``; answering ``opened_at`` as
    "now minus the time our clock says has passed" makes that test read our clock. That keeps
    pybreaker's own transitions and ours in agreement, and MockClock tests deterministic.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self._clock = clock
        self.opened_clock: float | None = None

    @property
    def opened_at(self) -> datetime | None:
        if self.opened_clock is None:
            return None
        return datetime.now(UTC) - timedelta(seconds=self.seconds_open())

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self.opened_clock = self._clock()

    def seconds_open(self) -> float:
        return 0.0 if self.opened_clock is None else self._clock() - self.opened_clock


class _ResilientUpload:
    """An inner :class:`Upload` whose calls go through the owner's retries and breaker."""

    def __init__(self, owner: ResilientBackend, key: str, inner: Upload) -> None:
        self._owner = owner
        self._key = key
        self._inner = inner
        self._sent = 0  # bytes in the parts put so far

    async def put_part(self, number: int, data: bytes | bytearray) -> None:
        await self._owner._call(
            "upload_part", self._key, lambda: self._inner.put_part(number, data), size=len(data)
        )
        self._sent += len(data)

    async def complete(self) -> ObjectInfo:
        # The store assembles the object now, which takes longer the bigger it is (S3 keeps
        # the connection alive meanwhile): allowed time as for moving that many bytes.
        return await self._owner._call(
            "complete_upload", self._key, self._inner.complete, size=self._sent
        )

    async def abort(self) -> None:
        await self._owner._call("abort_upload", self._key, self._inner.abort, attempts=1)


class _Strike(Exception):
    """What the breaker is told when an operation failed (the real error stays ours)."""


def _strike() -> None:
    raise _Strike


def _answered() -> None:
    return None


class _BreakerWatch(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: ResilientBackend) -> None:
        self._owner = owner

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = old_state.name if old_state is not None else "closed"
        self._owner._breaker_changed(old, new_state.name)


@dataclasses.dataclass(slots=True)
class _Tries:
    count: int = 0
    last: BaseException | None = None


class _StopAtClock(tenacity.stop.stop_base):
    """Stop when the next backoff would end at or past ``end`` (tenacity's own delay stop
    reads time.monotonic, which MockClock does not move)."""

    def __init__(self, clock: Callable[[], float], end: float) -> None:
        self._clock = clock
        self._end = end

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._clock() + retry_state.upcoming_sleep >= self._end


class _StopWhen(tenacity.stop.stop_base):
    def __init__(self, condition: Callable[[], bool]) -> None:
        self._condition = condition

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._condition()


class ResilientBackend(StoreBase):
    """``inner`` behind timeouts, retries and a circuit breaker; itself a
    :class:`~storagefs.resilience.stats.Remote`: a store whose :attr:`state` it keeps.

    ``clock`` must tick with trio's clock (the default is ``trio.current_time``): cancel scopes
    and sleeps use trio's clock, and the breaker timer and latencies use this one.
    """

    def __init__(
        self,
        inner: Backend,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] = trio.current_time,
        on_state_change: Iterable[StateCallback] = (),
        stats_window: int = 1024,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.policy = policy
        self._clock = clock
        self._callbacks = list(on_state_change)
        self.state = RemoteState(
            inner.name,
            window=stats_window,
            clock=clock,
            unwell_for=policy.breaker_reset,
            hedge_floor=policy.hedge_min_delay,
            hedge_ceiling=policy.hedge_max_delay,
        )
        self.state.reset_timeout = policy.breaker_reset
        self._storage = _ClockedStorage(clock)
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=policy.breaker_failures,
            reset_timeout=policy.breaker_reset,
            name=inner.name,
            state_storage=self._storage,
            listeners=[_BreakerWatch(self)],
            throw_new_error_on_trip=False,
        )
        self._probe_out = False
        self._last_failure = "none"
        self._sizes: collections.OrderedDict[str, int] = collections.OrderedDict()

    # --- state for health, telemetry and tests ---------------------------------------------

    @property
    def stats(self) -> RemoteState:
        """The same object as :attr:`state` (its counters are what health files call stats)."""
        return self.state

    @property
    def breaker_state(self) -> str:
        return str(self.breaker.current_state)

    def add_state_listener(self, callback: StateCallback) -> None:
        """``callback(backend_name, old, new)`` on every breaker transition; must not block."""
        self._callbacks.append(callback)

    def _breaker_changed(self, old: str, new: str) -> None:
        self.stats.breaker_changed(new)
        if new == pybreaker.STATE_OPEN:
            breaker_log.warning(
                "breaker %s %s -> %s after %d failures (last: %s)",
                self.name,
                old,
                new,
                self.breaker.fail_counter,
                self._last_failure,
            )
        elif new == pybreaker.STATE_HALF_OPEN:
            breaker_log.info(
                "breaker %s %s -> %s: %.3g s passed, letting one probe through",
                self.name,
                old,
                new,
                self._storage.seconds_open(),
            )
        else:
            breaker_log.info("breaker %s %s -> %s: the store answered", self.name, old, new)
        for callback in self._callbacks:
            try:
                callback(self.name, old, new)
            except Exception:
                # A broken subscriber must not break the data path that happened to trip it.
                breaker_log.exception("breaker %s: state-change callback failed", self.name)

    # --- the Backend protocol -------------------------------------------------------------

    def describe(self) -> str:
        return self.inner.describe()

    async def open(self) -> None:
        # One attempt, no retries: the backend bounds it, and a mount must say within seconds
        # whether it can start (a down remote is the chain's to handle, not to wait out).
        await self.inner.open()

    async def close(self) -> None:
        # Closing releases local resources; neither retried nor subject to the breaker.
        await self.inner.close()

    async def stat(self, key: str) -> ObjectInfo:
        info = await self._call("stat", key, lambda: self.inner.stat(key))
        self._remember(info)
        return info

    async def peek(self, key: str, length: int) -> tuple[ObjectInfo, bytes]:
        info, data = await self._call("peek", key, lambda: peek(self.inner, key, length))
        self._remember(info)
        return info, data

    async def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        limit: int = 1000,
    ) -> ListPage:
        page = await self._call(
            "list",
            prefix,
            lambda: self.inner.list(prefix, delimiter=delimiter, token=token, limit=limit),
        )
        for info in page.objects:
            self._remember(info)
        return page

    async def read(self, key: str, offset: int, length: int) -> bytes:
        # A chunk-sized read of a small object moves only what the object holds: timed as such.
        known = self._sizes.get(key)
        size = length if known is None else max(0, min(length, known - offset))
        return await self._call(
            "read", key, lambda: self.inner.read(key, offset, length), size=size
        )

    async def download(self, key: str, dest: str, *, size_hint: int | None = None) -> ObjectInfo:
        size = await self._size_of(key, size_hint)
        info = await self._call("download", key, lambda: self.inner.download(key, dest), size=size)
        self._remember(info)
        return info

    async def write(self, key: str, source: str, metadata: Mapping[str, str]) -> ObjectInfo:
        size = Path(source).stat().st_size
        info = await self._call(
            "write", key, lambda: self.inner.write(key, source, metadata), size=size
        )
        self._remember(info)
        return info

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        info = await self._call(
            "write_bytes", key, lambda: self.inner.write_bytes(key, data, metadata), size=len(data)
        )
        self._remember(info)
        return info

    async def delete(self, key: str) -> None:
        await self._call("delete", key, lambda: self.inner.delete(key))
        self._sizes.pop(key, None)

    async def copy(
        self,
        src: str,
        dst: str,
        metadata: Mapping[str, str] | None = None,
        *,
        size_hint: int | None = None,
    ) -> ObjectInfo:
        size = await self._size_of(src, size_hint)
        info = await self._call("copy", src, lambda: self.inner.copy(src, dst, metadata), size=size)
        self._remember(info)
        return info

    async def start_upload(self, key: str, metadata: Mapping[str, str]) -> Upload | None:
        """The inner backend's streaming upload, each of its calls retried like any other
        operation (a part is retried alone); None when the backend has none."""
        if not self.streams:
            return None
        upload = await self._call(
            "start_upload", key, lambda: start_upload(self.inner, key, metadata)
        )
        return None if upload is None else _ResilientUpload(self, key, upload)

    async def health(self) -> None:
        # One attempt: the health refresher asks again soon anyway, and its answer should be
        # about now. Through the breaker, so a health check can be the half-open probe.
        await self._call("health", "", self.inner.health, attempts=1)

    @property
    def streams(self) -> bool:
        return as_store(self.inner).streams

    # --- sizes for transfer timeouts ------------------------------------------------------

    def _remember(self, info: ObjectInfo) -> None:
        self._sizes[info.key] = info.size
        self._sizes.move_to_end(info.key)
        if len(self._sizes) > _SIZE_MEMORY:
            self._sizes.popitem(last=False)

    async def _size_of(self, key: str, hint: int | None) -> int:
        if hint is not None:
            return hint
        known = self._sizes.get(key)
        if known is not None:
            return known
        # A stale or missing size only misjudges a timeout, but a big object timed out as a
        # small one would be retried forever; one HEAD is cheap next to a whole transfer.
        return (await self.stat(key)).size

    # --- the machinery --------------------------------------------------------------------

    async def _call(
        self,
        op: str,
        key: str,
        call: Callable[[], Awaitable[T]],
        *,
        size: int = 0,
        attempts: int | None = None,
    ) -> T:
        probe = self._admit(op, key)
        started = self.stats.started()
        outcome = OTHER
        # A read the caller can get elsewhere is not retried here: see answerable_elsewhere.
        single = probe or (op in READ_OPS and _ELSEWHERE.get())
        try:
            result = await self._attempts(
                op,
                key,
                call,
                attempt_timeout=self.policy.attempt_timeout(op, size),
                deadline=self.policy.deadline(op, size),
                attempts=1 if single else (attempts or self.policy.retry_attempts),
            )
        except (TransientError, BackendUnavailable) as exc:
            outcome = FAILED
            root = exc.__cause__ if isinstance(exc.__cause__, BaseException) else exc
            self._last_failure = f"{type(root).__name__}: {short_message(root)}"
            self.stats.record_error(op, exc)
            self.state.failed(self._last_failure)
            raise
        except BackendError as exc:
            outcome = ANSWERED
            if not isinstance(exc, NotFound):  # NotFound is routine, not worth a health line
                self.stats.record_error(op, exc)
            raise
        except Exception as exc:
            # Unclassified: a bug or a local problem, not the store's verdict. Left out of the
            # breaker's count, but shown, since it is exactly what someone debugging needs.
            self.stats.record_error(op, exc)
            raise
        else:
            outcome = ANSWERED
            return result
        finally:
            if outcome == ANSWERED:
                # Prompt: within the hedge ceiling, or a transfer (which is slow by size). A
                # slow answer leaves an unwell remote unwell: the chain keeps asking it last.
                took = self._clock() - started
                prompt = took <= self.policy.hedge_max_delay or size > SMALL_REQUEST
                self.state.answered(prompt=prompt)
            # Also on cancellation: the caller gave up, which says nothing about the store, so
            # the breaker is not told; a cancelled probe just lets the next call probe.
            if probe:
                self._probe_out = False
            self.stats.finished(op, started, outcome)
            if outcome == ANSWERED:
                self._tell_breaker(_answered)
            elif outcome == FAILED:
                self._tell_breaker(_strike)

    def _admit(self, op: str, key: str) -> bool:
        """Raise BreakerOpen, or let the call through; True when it is the half-open probe."""
        state = self.breaker.current_state
        if state == pybreaker.STATE_CLOSED:
            return False
        if state == pybreaker.STATE_OPEN:
            waited = self._storage.seconds_open()
            # The slack absorbs float rounding (t0 + 10 - t0 can be 9.999999999999998), which
            # would otherwise turn "probe after 10 s" into "after 10 s and one more tick".
            if waited + 1e-6 < self.policy.breaker_reset:
                self.stats.rejected_one()
                raise BreakerOpen(
                    f"{self.name} {op} {key!r}: breaker open, next probe in "
                    f"{self.policy.breaker_reset - waited:.3g} s"
                )
            self.breaker.half_open()
        if self._probe_out:
            self.stats.rejected_one()
            raise BreakerOpen(f"{self.name} {op} {key!r}: breaker half-open, a probe is out")
        self._probe_out = True
        return True

    def _tell_breaker(self, outcome: Callable[[], None]) -> None:
        try:
            self.breaker.call(outcome)
        except (_Strike, pybreaker.CircuitBreakerError):
            # _Strike is our own failure report coming back; CircuitBreakerError means another
            # operation opened the breaker while this one ran, so this outcome is moot.
            pass

    def _breaker_is_open(self) -> bool:
        return self.breaker.current_state == pybreaker.STATE_OPEN

    async def _attempts(
        self,
        op: str,
        key: str,
        call: Callable[[], Awaitable[T]],
        *,
        attempt_timeout: float,
        deadline: float,
        attempts: int,
    ) -> T:
        tries = _Tries()
        start = self._clock()

        async def attempt() -> T:
            tries.count += 1
            try:
                with trio.move_on_after(attempt_timeout):
                    return await call()
                self.stats.timeouts += 1
                message = f"{self.name} {op} {key!r}: no answer within {attempt_timeout:.3g} s"
                # Unwell already, while the retries go on: readers and writers need not wait
                # for their verdict to stop asking it first (a prompt answer undoes this).
                self.state.demote(message)
                raise AttemptTimeout(message)
            except TransientError as exc:
                tries.last = exc
                self.stats.record_error(op, exc)
                raise

        def before_retry(state: tenacity.RetryCallState) -> None:
            self.stats.retries += 1
            exc = state.outcome.exception() if state.outcome else None
            log.info(
                "retry %d/%d of %s %s %r after %s: %s, sleeping %.2f s",
                state.attempt_number,
                attempts - 1,
                self.name,
                op,
                key,
                type(exc).__name__,
                short_message(exc) if exc else "",
                state.upcoming_sleep,
            )

        retrying: tenacity.AsyncRetrying | None = None
        if attempts > 1:
            retrying = tenacity.AsyncRetrying(
                sleep=trio.sleep,
                stop=(
                    tenacity.stop_after_attempt(attempts)
                    | _StopAtClock(self._clock, start + deadline)
                    # Another operation opened the breaker: further attempts only add load.
                    | _StopWhen(self._breaker_is_open)
                ),
                wait=self.policy.backoff(),
                retry=tenacity.retry_if_exception_type(TransientError),
                before_sleep=before_retry,
                reraise=True,
            )
        with trio.move_on_after(deadline):
            try:
                # The first attempt runs outside tenacity (its bookkeeping costs a cached
                # lookup's worth of time on every call); a failure of it is handed to tenacity
                # as its own first attempt, so the backoff and the count are the same.
                try:
                    return await attempt()
                except TransientError as exc:
                    if retrying is None:
                        raise
                    handed = [exc]
                async for attempt_manager in retrying:
                    with attempt_manager:
                        if handed:
                            raise handed.pop()
                        return await attempt()
            except TransientError as exc:
                raise RetriesExhausted(
                    f"{self.name} {op} {key!r}: gave up after {tries.count} attempt(s) in "
                    f"{self._clock() - start:.3g} s: {type(exc).__name__}: {short_message(exc)}"
                ) from exc
        raise RetriesExhausted(
            f"{self.name} {op} {key!r}: no answer within the {deadline:.3g} s deadline "
            f"({tries.count} attempt(s))"
        ) from tries.last
