"""The replayer: the one task that applies journal entries to the remotes.

Every mutation reaches the remotes through here — including the write-through path, which only
waits (:meth:`Replayer.wait`) for the replayer to report that the primary applied its entry — so
there is exactly one applier and the journal's order is never raced.

Scheduling, per target: entries go in seq order per key (an entry starts only when no earlier
pending entry on that target touches any of its keys); entries on different keys run in
parallel, up to ``workers`` per target, so a slow secondary never holds up the primary. Targets
are dispatched primary first. A target that is not answering (BackendUnavailable,
TransientError, or a store-level NotFound/ConfigurationError) is *down*: one entry at a time
probes it after an exponential backoff capped at ``max_backoff`` (set it to the breaker's reset
time, so the breaker's half-open probe is what decides the target is back). Primary first: while
the primary answers, another target gets an entry only once the primary has applied it or
refused it; with ``refusal_abandons`` (write-through, where the writer hears of the refusal) a
permanent refusal by the primary quarantines the entry for every target. A permanent refusal
(PermissionDenied, InvalidRequest, Conflict, a COPY whose source is gone) or content that fails
its checksum quarantines the entry for that target: recorded, logged, counted, never retried.

The replay bandwidth cap is shared by all targets (it protects the local uplink) and paces the
*starts* of uploads: on average no more than ``bytes_per_second``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trio

from storagefs.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    Conflict,
    InvalidRequest,
    NotFound,
    ObjectInfo,
    PermissionDenied,
    TransientError,
)
from storagefs.context import request_id
from storagefs.journal.store import ContentCorrupt, Entry, Journal, Op
from storagefs.resilience.stats import RemoteState

log = logging.getLogger("storagefs.replay")

_PERMANENT = (PermissionDenied, InvalidRequest, Conflict)
_RECENT_RESULTS = 4096  # outcomes kept for waiters that arrive after the fact


class Outcome(enum.Enum):
    APPLIED = "applied"
    UNAVAILABLE = "unavailable"  # the target is not answering; the entry stays pending
    FAILED = "failed"  # permanently refused; the entry is quarantined for that target
    TIMEOUT = "timeout"  # still pending when the waiter gave up


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    info: ObjectInfo | None = None  # what the target answered (PUT and COPY)
    error: BaseException | None = None


@dataclasses.dataclass(slots=True)
class TargetState:
    up: bool = True
    backoff: float = 0.0
    retry_at: float = 0.0
    in_flight: set[int] = dataclasses.field(default_factory=set)
    last_error: str | None = None
    applied: int = 0
    failures: int = 0  # attempts that found the target not answering
    quarantined: int = 0


class RateLimiter:
    """Paces byte transfers to ``bytes_per_second`` on average (0: no limit), by trio's clock."""

    def __init__(self, bytes_per_second: int) -> None:
        self.bytes_per_second = bytes_per_second
        self._next = -float("inf")

    async def take(self, size: int) -> None:
        if self.bytes_per_second <= 0 or size <= 0:
            await trio.lowlevel.checkpoint()
            return
        start = max(trio.current_time(), self._next)
        self._next = start + size / self.bytes_per_second
        await trio.sleep_until(start)


class _Waiter:
    __slots__ = ("event", "result")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.result: Result | None = None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


class Replayer:
    def __init__(
        self,
        journal: Journal,
        remotes: Sequence[Backend],
        *,
        workers: int = 4,
        bytes_per_second: int = 0,
        initial_backoff: float = 0.1,
        max_backoff: float = 10.0,
        on_result: Callable[[str, BaseException | None], None] | None = None,
        on_applied: Callable[[Entry], None] | None = None,
        refusal_abandons: bool = False,
        settle: float = 0.0,
        settles: Callable[[str], bool] | None = None,
        states: Mapping[str, RemoteState] | None = None,
    ) -> None:
        self.journal = journal
        self.remotes = {r.name: r for r in remotes}
        self.order = [r.name for r in remotes]  # dispatch order: primary first
        self.workers = workers
        self.limiter = RateLimiter(bytes_per_second)
        self.initial_backoff = initial_backoff
        self.max_backoff = max(max_backoff, initial_backoff)
        self.on_result = on_result
        self.on_applied = on_applied  # an entry really reached a target (not superseded)
        self.refusal_abandons = refusal_abandons
        # Write-back: a new entry waits this long (wall clock) before it is applied, unless a
        # writer awaits it or a flush asked for everything older (``_settled_before``).
        # ``settles`` picks the keys that wait (None: all; write-through holds only temporary
        # names, see FallbackChain.held).
        self.settle = settle
        self.settles = settles
        self._settled_before = 0.0
        self._next_settled = float("inf")  # trio time at which a held entry becomes due
        # Each remote's one reachability record (kept by its ResilientBackend): a waiter is
        # not kept waiting for a target already known to be unwell.
        self.states = states or {}
        # Wraps each entry's replay (telemetry sets a background transaction here).
        self.around_apply: Callable[[], contextlib.AbstractContextManager[None]] = (
            contextlib.nullcontext
        )
        self.state = {name: TargetState() for name in self.order}
        self.running = False
        self._stopping = False
        self._scope: trio.CancelScope | None = None
        self._wake = trio.Event()
        self._waiters: dict[tuple[int, str], list[_Waiter]] = {}
        self._superseded: set[tuple[int, str]] = set()  # dropped, their acks on the way
        self._amending: set[int] = set()  # seqs whose metadata is being replaced
        self._nursery: trio.Nursery | None = None
        self._recent: collections.OrderedDict[tuple[int, str], Result] = collections.OrderedDict()

    # --- lifecycle -----

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the journal until :meth:`stop`. Entries interrupted by stop stay pending."""
        self.journal.listeners.append(self._on_append)
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                self._nursery = nursery
                if self._stopping:
                    nursery.cancel_scope.cancel()
                self.running = True
                task_status.started()
                while True:
                    self._wake = trio.Event()
                    self._dispatch(nursery)
                    if self.journal.take_barrier_request():
                        nursery.start_soon(self.journal.barrier)
                    with trio.move_on_at(min(self._next_retry(), self._next_settled)):
                        await self._wake.wait()
        finally:
            self.running = False
            self._scope = None
            self._nursery = None
            self.journal.listeners.remove(self._on_append)
            for key in list(self._waiters):
                self._resolve(key, Result(Outcome.UNAVAILABLE))

    def stop(self) -> None:
        self._stopping = True
        if self._scope is not None:
            self._scope.cancel()

    def kick(self, target: str | None = None) -> None:
        """Probe down targets (or ``target``) now instead of after their backoff."""
        for name in [target] if target is not None else self.order:
            state = self.state.get(name)
            if state is not None and not state.up:
                state.retry_at = 0.0
        if target is None:  # a flush: nothing journaled so far waits out the write-back delay
            self._settled_before = time.time()
        self._wake.set()

    def mark_down(self, target: str, error: BaseException) -> None:
        """Tell the replayer a target is not answering (e.g. it failed to open)."""
        state = self.state[target]
        if state.up:
            state.up = False
            state.backoff = self.initial_backoff
            state.retry_at = trio.current_time() + state.backoff
        state.last_error = _short(error)
        self._fail_waiters(target)

    def is_up(self, target: str) -> bool:
        return self.state[target].up

    # --- waiting for an outcome ------------------------------------------------------------------

    async def wait(self, seq: int, target: str, within: float) -> Result:
        """How applying entry ``seq`` to ``target`` went, waiting up to ``within`` seconds.

        Returns UNAVAILABLE at once when the target is known to be down (to the replayer, or
        unwell in its RemoteState: it failed or was too slow recently) or the replayer is not
        running, since no answer would come in time. The entry stays journaled either way.
        """
        key = (seq, target)
        known = self._recent.get(key)  # decided, perhaps not yet acknowledged in the journal
        if known is not None or not self.journal.is_pending(seq, target):
            await trio.lowlevel.checkpoint()
            return known or Result(Outcome.APPLIED)
        remote = self.states.get(target)
        unwell = remote is not None and remote.unwell()
        if not self.running or not self.state[target].up or unwell:
            await trio.lowlevel.checkpoint()
            return Result(Outcome.UNAVAILABLE)
        waiter = _Waiter()
        self._waiters.setdefault(key, []).append(waiter)
        try:
            with trio.move_on_after(within):
                await waiter.event.wait()
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[key]
        return waiter.result or Result(Outcome.TIMEOUT)

    def _record(self, key: tuple[int, str], result: Result) -> None:
        """Remember a final outcome for waiters that ask once the entry is no longer pending
        (recorded before the journal forgets the entry, so no one sees a gap)."""
        self._recent[key] = result
        while len(self._recent) > _RECENT_RESULTS:
            self._recent.popitem(last=False)

    def _resolve(self, key: tuple[int, str], result: Result) -> None:
        if result.outcome is not Outcome.UNAVAILABLE:
            self._record(key, result)
        for waiter in self._waiters.pop(key, ()):
            waiter.result = result
            waiter.event.set()

    def _fail_waiters(self, target: str) -> None:
        # Entries queued behind the failed one will not be tried before the backoff either.
        for key in [k for k in self._waiters if k[1] == target]:
            self._resolve(key, Result(Outcome.UNAVAILABLE))

    # --- scheduling -----

    def _on_append(self, entry: Entry) -> None:
        self._wake.set()
        if self._nursery is not None:
            self._supersede(entry, self._nursery)

    def _supersede(self, newer: Entry, nursery: trio.Nursery) -> None:
        """Drop (as applied) the pending entries of ``newer``'s key that it overwrites and no
        target has started: a file rewritten again and again during an outage then costs one
        entry, in memory and on disk, and one upload when the store returns. An entry in
        flight or awaited by a writer is left to finish; per-key order keeps it before
        ``newer``."""
        for older in self.journal.superseded_by(newer):
            for target in self.journal.pending_targets(older.seq):
                key = (older.seq, target)
                if older.seq in self.state[target].in_flight or key in self._waiters:
                    continue
                self._drop_as_applied(key)
                nursery.start_soon(self._forget_superseded, older.seq, target)

    async def amend(
        self, entry: Entry, metadata: Mapping[str, str], *, durable: bool = True
    ) -> Entry | None:
        """New metadata for pending PUT ``entry`` in place, if every target still has it to
        apply and none is applying it; None (nothing changed) otherwise. ``durable``: as
        :meth:`Journal.set_metadata`."""
        targets = self.journal.pending_targets(entry.seq)
        if (
            entry.op is not Op.PUT
            or targets != set(self.order)
            or any(entry.seq in self.state[t].in_flight for t in targets)
            or any((entry.seq, t) in self._superseded for t in targets)
        ):
            await trio.lowlevel.checkpoint()
            return None
        self._amending.add(entry.seq)  # not dispatched while its row changes
        try:
            return await self.journal.set_metadata(entry, metadata, durable=durable)
        finally:
            self._amending.discard(entry.seq)
            self._wake.set()

    async def withdraw(self, entries: Sequence[Entry]) -> bool:
        """Drop ``entries`` (as applied) when no target is applying any of them and no writer
        awaits one: changes of a key no store holds, whose file is gone again (a temporary
        name renamed or unlinked). False, dropping nothing, otherwise. They are out of the
        journal (and of its overlay) when this returns."""
        pairs = [(e.seq, t) for e in entries for t in self.journal.pending_targets(e.seq)]
        for seq, target in pairs:
            if seq in self.state[target].in_flight or (seq, target) in self._waiters:
                await trio.lowlevel.checkpoint()
                return False
        # Marked before the first await, so the dispatcher never starts one of them.
        mine = [p for p in pairs if p not in self._superseded]
        for pair in mine:
            self._drop_as_applied(pair)
        for seq, target in mine:
            await self._forget_superseded(seq, target)
        return True

    def _drop_as_applied(self, pair: tuple[int, str]) -> None:
        """Never dispatch entry ``pair`` (seq, target); a waiter is told it was applied. The
        caller then acknowledges it in the journal (:meth:`_forget_superseded`)."""
        self._superseded.add(pair)
        self._record(pair, Result(Outcome.APPLIED))

    async def _forget_superseded(self, seq: int, target: str) -> None:
        try:
            await self.journal.mark_applied(seq, target)
        finally:
            self._superseded.discard((seq, target))
            self._wake.set()

    def _next_retry(self) -> float:
        times = [s.retry_at for s in self.state.values() if not s.up and not s.in_flight]
        return min(times, default=float("inf"))

    def _held(self, entry: Entry, target: str) -> bool:
        """Still inside its write-back delay (then ``_next_settled`` says when it is due)."""
        if self.settle <= 0 or entry.created <= self._settled_before:
            return False
        if self.settles is not None and not self.settles(entry.key):
            return False
        due = entry.created + self.settle - time.time()
        if due <= 0 or (entry.seq, target) in self._waiters:
            return False
        self._next_settled = min(self._next_settled, trio.current_time() + due)
        return True

    def _dispatch(self, nursery: trio.Nursery) -> None:
        now = trio.current_time()
        self._next_settled = float("inf")
        primary = self.order[0]
        for target in self.order:
            state = self.state[target]
            if not state.up and now < state.retry_at:
                continue
            free = (self.workers if state.up else 1) - len(state.in_flight)
            if free <= 0:
                continue
            # Primary first: while the primary answers, the others get an entry only after
            # the primary has it (or refused it), so they never hold what the primary lacks.
            follow = target != primary and self.state[primary].up
            blocked: set[str] = set()
            for entry in self.journal.pending(target):
                keys = entry.keys()
                ready = (
                    entry.seq not in state.in_flight
                    and (entry.seq, target) not in self._superseded
                    and entry.seq not in self._amending
                    and blocked.isdisjoint(keys)
                    and not (follow and self.journal.is_pending(entry.seq, primary))
                )
                if ready and self._held(entry, target):
                    if self.settles is None:
                        # Every key waits (write-back) and entries come in the order they
                        # were made: all after this one are held too. Stopping here keeps a
                        # dispatch at the entries in flight plus one, where scanning the
                        # whole backlog on every append made a burst of closes quadratic.
                        break
                    ready = False
                blocked.update(keys)
                if ready:
                    state.in_flight.add(entry.seq)
                    nursery.start_soon(self._apply, target, entry, state.up)
                    free -= 1
                    if free == 0:
                        break

    # --- applying one entry ----------------------------------------------------------------------

    async def _apply(self, target: str, entry: Entry, started_up: bool) -> None:
        state = self.state[target]
        # Every log line of this entry's replay, retries in the backend included, carries
        # "journal-<seq>"; telemetry may time it as a background transaction.
        token = request_id.set(f"journal-{entry.seq}")
        try:
            with self.around_apply():
                await self._apply_once(target, entry, state, started_up)
        finally:
            request_id.reset(token)
            state.in_flight.discard(entry.seq)
            self._wake.set()

    async def _apply_once(
        self, target: str, entry: Entry, state: TargetState, started_up: bool
    ) -> None:
        backend = self.remotes[target]
        try:
            if entry.op is Op.PUT:
                await self.limiter.take(entry.size)
            info = await self._perform(backend, entry)
        except ContentCorrupt as exc:
            await self._give_up(target, entry, state, str(exc), exc)
        except _PERMANENT as exc:
            await self._give_up(target, entry, state, _short(exc), exc)
        except NotFound as exc:
            if entry.op is Op.COPY:
                await self._give_up(
                    target, entry, state, f"copy source {entry.src!r} is gone: {exc}", exc
                )
            else:  # the bucket/container itself is missing: keep the entry, retry later
                await self._not_answering(target, entry, state, started_up, exc)
        except (BackendUnavailable, TransientError, BackendError) as exc:
            await self._not_answering(target, entry, state, started_up, exc)
        except Exception as exc:
            log.exception("replaying entry %d to %s failed unexpectedly", entry.seq, target)
            await self._not_answering(target, entry, state, started_up, exc)
        else:
            state.applied += 1
            if not state.up:
                log.warning("%s answers again; replaying its pending journal entries", target)
            state.up = True
            state.backoff = 0.0
            state.last_error = None
            # The writer may go on before the ack is committed: its data is durable already,
            # and an ack lost to a crash only means applying the entry once more.
            self._resolve((entry.seq, target), Result(Outcome.APPLIED, info=info))
            if self.on_result is not None:
                self.on_result(target, None)
            if self.on_applied is not None:
                self.on_applied(entry)
            await self.journal.mark_applied(entry.seq, target)

    async def _perform(self, backend: Backend, entry: Entry) -> ObjectInfo | None:
        if entry.op is Op.PUT:
            assert entry.metadata is not None
            if entry.inline:
                data = await self.journal.verified_bytes(entry)
                return await backend.write_bytes(entry.key, data, entry.metadata)
            path = await self.journal.verify_file(entry)
            return await backend.write(entry.key, str(path), entry.metadata)
        if entry.op is Op.DELETE:
            try:
                await backend.delete(entry.key)
            except NotFound:
                pass  # already gone is what we wanted
            return None
        assert entry.src is not None
        return await backend.copy(entry.src, entry.key, entry.metadata)

    async def _give_up(
        self, target: str, entry: Entry, state: TargetState, reason: str, exc: BaseException
    ) -> None:
        state.quarantined += 1
        key = (entry.seq, target)
        result = Result(Outcome.FAILED, error=exc)
        self._record(key, result)  # before the entry stops being pending: see wait()
        if self.refusal_abandons and target == self.order[0]:
            # The writer is told it failed (write-through): nobody else may get it either.
            # The others go first: while the primary still has it pending, none of them
            # can have started it (primary first).
            for other in self.journal.pending_targets(entry.seq) - {target}:
                await self.journal.quarantine(
                    entry.seq, other, f"abandoned: the primary refused it ({reason})"
                )
        await self.journal.quarantine(entry.seq, target, reason)
        self._resolve(key, result)
        if self.on_result is not None and isinstance(exc, BackendError):
            # The store answered (with a refusal): it is reachable.
            self.on_result(target, None)

    async def _not_answering(
        self, target: str, entry: Entry, state: TargetState, started_up: bool, exc: BaseException
    ) -> None:
        state.failures += 1
        state.last_error = _short(exc)
        now = trio.current_time()
        if state.up:
            log.warning(
                "%s is not answering (%s): writes stay in the journal, retrying in %.2gs",
                target, state.last_error, self.initial_backoff,
            )  # fmt: skip
            state.up = False
            state.backoff = self.initial_backoff
            state.retry_at = now + state.backoff
        elif not started_up:  # a failed probe: wait longer before the next one
            state.backoff = min(self.max_backoff, max(state.backoff, self.initial_backoff) * 2)
            state.retry_at = now + state.backoff
        self._resolve((entry.seq, target), Result(Outcome.UNAVAILABLE, error=exc))
        self._fail_waiters(target)
        if self.on_result is not None:
            self.on_result(target, exc)
        await self.journal.record_failure(entry.seq, target, state.last_error)

    # --- reporting -----

    def stats(self) -> dict[str, TargetSnapshot]:
        now = trio.current_time()
        return {
            name: TargetSnapshot(
                up=s.up,
                in_flight=len(s.in_flight),
                applied=s.applied,
                failures=s.failures,
                quarantined=s.quarantined,
                last_error=s.last_error,
                retry_in=None if s.up else round(max(0.0, s.retry_at - now), 3),
            )
            for name, s in self.state.items()
        }


@dataclasses.dataclass(frozen=True, slots=True)
class TargetSnapshot:
    """One reading of the replayer's work for one target."""

    up: bool  # False: paused after a failure, probing after ``retry_in`` seconds
    in_flight: int
    applied: int
    failures: int
    quarantined: int
    last_error: str | None
    retry_in: float | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
