"""Live request statistics of one backend, kept by :mod:`storagefs.resilience`.

Read by the ``/.health`` files and telemetry. Everything here runs on the trio thread, so plain
counters need no locks; the hot path (``started``/``finished``) is a few additions and a deque
append, and the percentile sorting happens only when somebody asks for a snapshot.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from storagefs.backends.base import Store

# Messages are cut so one odd SDK message cannot blow up a health file or a log line.
MAX_MESSAGE_CHARS = 300

# Outcomes of one operation, as the breaker sees them.
ANSWERED = "answered"  # the store answered: a result, or NotFound/PermissionDenied/...
FAILED = "failed"  # not answering: transient errors until retries ran out, deadline
OTHER = "other"  # an unclassified exception (a bug or a local problem), or cancelled


def short_message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text


@dataclasses.dataclass(frozen=True, slots=True)
class LastError:
    op: str
    type: str
    message: str
    at: float  # wall clock, seconds since the epoch: health files are read by people


@dataclasses.dataclass(frozen=True, slots=True)
class Latency:
    count: int  # samples in the window
    p50: float
    p95: float
    p99: float


def _rank(ordered: list[float], pct: float) -> float:
    # Nearest-rank percentile: always one of the observed values, no interpolation.
    index = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[index]


# Samples of one operation needed before its p99 sets the hedge delay (else the ceiling).
HEDGE_MIN_SAMPLES = 16
# New samples after which the cached p99 of an operation is computed again.
_P99_REFRESH = 32


class RemoteState:
    """Counters, recent-window figures and the reachability verdict of one remote.

    ``unwell()`` is what the chain orders its reads by: the breaker is not closed, or the
    remote failed (or lost a hedged read) within the last ``unwell_for`` seconds and has not
    answered promptly since. ``hedge_delay(op)`` is how long the chain waits for this remote
    before asking the next one: the p99 latency of ``op`` within [``hedge_floor``,
    ``hedge_ceiling``].

    ``clock`` measures latency (trio's clock in production, so MockClock tests are exact);
    ``wall_clock`` stamps errors for people reading the health files.
    """

    def __init__(
        self,
        backend: str,
        *,
        window: int = 1024,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
        unwell_for: float = 10.0,
        hedge_floor: float = 0.1,
        hedge_ceiling: float = 1.0,
    ) -> None:
        self.backend = backend
        self.window = window
        self._clock = clock
        self._wall_clock = wall_clock
        self.unwell_for = unwell_for
        self.hedge_floor = hedge_floor
        self.hedge_ceiling = hedge_ceiling

        self.reachable: bool | None = None  # None: not asked yet
        self.reachable_since: float | None = None  # wall clock of the last change
        self.unwell_until = -math.inf  # clock time
        self.unwell_reason: str | None = None
        self._p99: dict[str, tuple[int, float]] = {}  # op -> (samples seen, p99)
        self._seen: dict[str, int] = {}

        self.breaker_state = "closed"
        self.opened_at: float | None = None  # clock time the breaker last opened
        self.reset_timeout: float | None = None
        self.consecutive_failures = 0

        self.in_flight = 0
        self.successes = 0  # operations the store answered (NotFound included)
        self.failures = 0  # operations given up on as unavailable
        self.rejected = 0  # operations refused by an open breaker
        self.retries = 0  # extra attempts made after transient errors
        self.timeouts = 0  # attempts cut by the per-attempt timeout
        self.last_error: LastError | None = None

        self._outcomes: deque[bool] = deque(maxlen=window)
        self._ok_in_window = 0
        self._latencies: dict[str, deque[float]] = {}

    # --- the hot path ---------------------------------------------------------------------

    def started(self) -> float:
        """Count one operation in flight; returns its start time for :meth:`finished`."""
        self.in_flight += 1
        return self._clock()

    def finished(self, op: str, started_at: float, outcome: str) -> None:
        self.in_flight -= 1
        if outcome == OTHER:
            return
        ok = outcome == ANSWERED
        if ok:
            self.successes += 1
            self.consecutive_failures = 0
        else:
            self.failures += 1
            self.consecutive_failures += 1
        if len(self._outcomes) == self.window and self._outcomes[0]:
            self._ok_in_window -= 1
        self._outcomes.append(ok)
        self._ok_in_window += ok
        # Latency as the caller saw it, retries and backoff included: a backend that answers
        # only on the third try is slow, and the health files should say so.
        samples = self._latencies.get(op)
        if samples is None:
            samples = self._latencies[op] = deque(maxlen=self.window)
        samples.append(self._clock() - started_at)
        self._seen[op] = self._seen.get(op, 0) + 1

    # --- reachability ---------------------------------------------------------------------

    def _set_reachable(self, reachable: bool) -> None:
        if self.reachable is not reachable:
            self.reachable_since = self._wall_clock()
        self.reachable = reachable

    def answered(self, *, prompt: bool = True) -> None:
        """The store answered; a prompt answer also ends an unwell spell."""
        self._set_reachable(True)
        if prompt:
            self.unwell_until = -math.inf
            self.unwell_reason = None

    def failed(self, reason: str) -> None:
        """The store did not answer (retries or deadline ran out): unwell for a while."""
        self._set_reachable(False)
        self.demote(reason)

    def demote(self, reason: str) -> None:
        """Unwell for ``unwell_for`` seconds from now (e.g. it lost a hedged read)."""
        self.unwell_until = self._clock() + self.unwell_for
        self.unwell_reason = reason

    def unwell(self) -> bool:
        return self.breaker_state != "closed" or self._clock() < self.unwell_until

    def hedge_delay(self, op: str) -> float:
        """Seconds to wait for this remote's answer to ``op`` before asking the next one."""
        seen = self._seen.get(op, 0)
        cached = self._p99.get(op)
        if cached is None or (
            seen != cached[0]
            and (cached[0] < HEDGE_MIN_SAMPLES or seen - cached[0] >= _P99_REFRESH)
        ):
            figures = self.latency(op)
            p99 = (
                figures.p99
                if figures is not None and figures.count >= HEDGE_MIN_SAMPLES
                else self.hedge_ceiling
            )
            cached = self._p99[op] = (seen, p99)
        return min(self.hedge_ceiling, max(self.hedge_floor, cached[1]))

    def rejected_one(self) -> None:
        self.rejected += 1

    def record_error(self, op: str, exc: BaseException) -> None:
        self.last_error = LastError(
            op=op, type=type(exc).__name__, message=short_message(exc), at=self._wall_clock()
        )

    def breaker_changed(self, new_state: str) -> None:
        self.breaker_state = new_state
        if new_state == "open":
            self.opened_at = self._clock()

    # --- readers --------------------------------------------------------------------------

    def last_error_text(self) -> str | None:
        """The last error as "Type: message", or None."""
        err = self.last_error
        return f"{err.type}: {err.message}" if err is not None else None

    def success_rate(self) -> float | None:
        """Share of answered operations among the last ``window`` ones; None before any."""
        if not self._outcomes:
            return None
        return self._ok_in_window / len(self._outcomes)

    def latency(self, op: str) -> Latency | None:
        samples = self._latencies.get(op)
        if not samples:
            return None
        ordered = sorted(samples)
        return Latency(
            count=len(ordered),
            p50=_rank(ordered, 50),
            p95=_rank(ordered, 95),
            p99=_rank(ordered, 99),
        )

    def probe_in(self) -> float | None:
        """Seconds until an open breaker lets a probe through (0: the next call probes)."""
        if self.breaker_state != "open" or self.opened_at is None or self.reset_timeout is None:
            return None
        return max(0.0, self.reset_timeout - (self._clock() - self.opened_at))

    def snapshot(self) -> RemoteSnapshot:
        """Everything above, frozen (what other layers read: never this live object's fields)."""
        latency = {}
        for op in sorted(self._latencies):
            figures = self.latency(op)
            if figures is not None:
                latency[op] = figures
        unwell = self.unwell()
        return RemoteSnapshot(
            backend=self.backend,
            breaker=self.breaker_state,
            probe_in_s=self.probe_in(),
            consecutive_failures=self.consecutive_failures,
            in_flight=self.in_flight,
            successes=self.successes,
            failures=self.failures,
            rejected=self.rejected,
            retries=self.retries,
            timeouts=self.timeouts,
            success_rate=self.success_rate(),
            window=len(self._outcomes),
            latency_s=latency,
            last_error=self.last_error,
            reachable=self.reachable,
            reachable_since=self.reachable_since,
            unwell=unwell,
            unwell_reason=self.unwell_reason if unwell else None,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteSnapshot:
    """One reading of a :class:`RemoteState`."""

    backend: str
    breaker: str  # "closed", "open", "half-open"
    probe_in_s: float | None  # seconds until an open breaker lets a probe through
    consecutive_failures: int
    in_flight: int
    successes: int
    failures: int
    rejected: int
    retries: int
    timeouts: int
    success_rate: float | None
    window: int
    latency_s: Mapping[str, Latency]
    last_error: LastError | None
    reachable: bool | None  # None: not asked yet
    reachable_since: float | None  # wall clock
    unwell: bool  # reads ask it last
    unwell_reason: str | None

    def last_error_text(self) -> str | None:
        err = self.last_error
        return f"{err.type}: {err.message}" if err is not None else None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values: the ``stats`` of ``/.health/backends/<name>.json``."""
        return {
            "backend": self.backend,
            "breaker": self.breaker,
            "probe_in_s": self.probe_in_s,
            "consecutive_failures": self.consecutive_failures,
            "in_flight": self.in_flight,
            "successes": self.successes,
            "failures": self.failures,
            "rejected": self.rejected,
            "retries": self.retries,
            "timeouts": self.timeouts,
            "success_rate": self.success_rate,
            "unwell": self.unwell,
            "unwell_reason": self.unwell_reason,
            "window": self.window,
            "latency_s": {op: dataclasses.asdict(f) for op, f in self.latency_s.items()},
            "last_error": dataclasses.asdict(self.last_error) if self.last_error else None,
        }


@runtime_checkable
class Remote(Store, Protocol):
    """A store with a layer in front of it that keeps its :class:`RemoteState`
    (:class:`~storagefs.resilience.backend.ResilientBackend`, and the telemetry wrapper around
    one). The chain reads that state instead of keeping one of its own; a remote that is not
    a Remote (a bare backend: tests, tools) gets a state the chain feeds itself."""

    @property
    def state(self) -> RemoteState:
        """The one record of this remote's reachability: latencies, breaker, unwell."""
        ...
