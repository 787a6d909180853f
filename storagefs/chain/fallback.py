"""FallbackChain: one Backend over [primary, secondary, ...], the journal and the local cache.

Reads: the journal overlay first (a pending PUT is served from the journal, a pending DELETE
is NotFound), then the remotes, well ones first (a remote that failed or lost a hedged read
recently is asked last, see :class:`RemoteState`); a remote that is not answering
(BackendUnavailable, TransientError) is skipped at once. Reads are *hedged*: when a remote has
not answered within its p99 latency (``hedge_min_delay`` .. ``hedge_max_delay``), the next one
is asked as well, and the first answer wins -- but a NotFound only once every remote before it
in the order has answered or failed, so a lagging secondary never hides a file the primary
has; the remote that lost is demoted. A read that another
remote or the cache could answer gets a single attempt per remote (no retries). When no remote
answers, the clean cached copy is served and counted as a stale read. Downloads (they write to
a file) fall back in order without hedging.

Writes: journaled (fsync'd) first, then applied to every remote by the replayer, which is the
only applier. In ``write_mode="through"`` a write waits up to ``write_deadline`` (plus 1 s per
MiB) for the primary to apply it, and not at all while the primary is unwell; if the primary
is not answering in time it succeeds on the journal alone (the health report says degraded);
a permanent refusal by the primary is raised. In ``"back"`` mode a write returns once
journaled. The cache gets a copy of every write (best effort).
"""

from __future__ import annotations

import builtins
import dataclasses
import fnmatch
import functools
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import trio

from storagefs import sizes
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
from storagefs.chain import listing
from storagefs.chain.cache import Cache, CacheStats
from storagefs.config import Settings
from storagefs.journal.replay import Outcome, Replayer, TargetSnapshot
from storagefs.journal.store import ContentGone, Entry, Journal, JournalStats, Op
from storagefs.resilience.backend import RetryPolicy, answerable_elsewhere
from storagefs.resilience.stats import RemoteSnapshot, RemoteState

T = TypeVar("T")

log = logging.getLogger("storagefs.chain")

_NOT_ANSWERING = (BackendUnavailable, TransientError)
CACHE = "cache"  # the name the local copies go by in listing tokens
CACHE_QUEUE = 256  # small direct writes waiting to be copied into the cache
SMALL_CACHE_COPY = sizes.SMALL_CACHE_COPY  # larger direct writes are not copied into the cache
# Cache upkeep with nothing queued behind it waits this long first: the call that caused it (a
# lookup, a close) is followed within a millisecond by the same program's next one (open, read,
# the next create), which a cache write would slow down by competing for the GIL and the CPU.
# The wait moves the write into the next request's wait for the network.
CACHE_QUIET = 0.005
PROBE_INTERVAL = 1.0  # seconds between health probes of an unwell remote
_KEYS_REMEMBERED = 100_000  # bound of the chain's per-key sets (unstored, too big to hold)


def _bounded_add(keys: set[str], key: str) -> None:
    """Add ``key``; past the bound the set starts over (each set only spares requests)."""
    if len(keys) >= _KEYS_REMEMBERED:
        keys.clear()
    keys.add(key)


class _AllDown(Exception):
    def __init__(self, last: BaseException | None) -> None:
        super().__init__("no remote answered")
        self.last = last


@dataclasses.dataclass(frozen=True, slots=True)
class _Reply(Generic[T]):
    """How one remote's part of a hedged read ended: a value, or an exception."""

    index: int
    value: T | None = None
    error: Exception | None = None


class _PrimaryUpload:
    """A streaming upload to the primary that tells the chain whether the primary answered.

    Each call gets the wait of a direct write of as many bytes (``_write_wait``: the write
    deadline plus 1 s per MiB): a primary too slow for it fails the stream, and the writer
    falls back to writing the file (to the journal if need be), so a hung primary costs a
    close() about what it costs without streaming. The completion counts the whole object:
    the store assembles it then (s3rver took over 3 s for 1 GiB; AWS documents that S3 may
    take several minutes)."""

    def __init__(self, chain: FallbackChain, key: str, inner: Upload) -> None:
        self._chain = chain
        self._key = key
        self._inner = inner
        self._failed: BackendError | None = None  # once one call failed, the rest fail fast
        self._sent = 0  # bytes in the parts put so far

    async def _call(self, call: Callable[[], Awaitable[T]], size: int) -> T:
        if self._failed is not None:
            await trio.lowlevel.checkpoint()
            raise TransientError(f"{self._key!r}: an earlier part failed: {self._failed}")
        deadline = self._chain._write_wait(size)
        try:
            with trio.fail_after(deadline):
                return await self._chain._ask(self._chain.primary, call)
        except trio.TooSlowError:
            self._failed = TransientError(f"{self._key!r}: no answer within {deadline:.3g} s")
        except BackendError as exc:
            self._failed = exc
        raise self._failed

    async def put_part(self, number: int, data: bytes | bytearray) -> None:
        await self._call(lambda: self._inner.put_part(number, data), len(data))
        self._sent += len(data)

    async def complete(self) -> ObjectInfo:
        info = await self._call(self._inner.complete, self._sent)
        # A cached copy of an older version must not be served during a later outage.
        await self._chain._cache_soon(lambda: self._chain.cache.discard(self._key))
        return info

    async def abort(self) -> None:
        await self._inner.abort()


class FallbackChain(StoreBase):
    name = "chain"

    def __init__(
        self,
        remotes: Sequence[Backend],
        journal: Journal,
        cache: Cache,
        settings: Settings,
    ) -> None:
        if not remotes:
            raise ValueError("the chain needs at least one remote backend")
        names = [r.name for r in remotes]
        if len(set(names)) != len(names):
            raise ValueError(f"remote backend names must be unique, got {names}")
        if set(journal.targets) != set(names):
            raise ValueError(f"journal targets {journal.targets} differ from remotes {names}")
        self.remotes = list(remotes)
        self.primary = self.remotes[0]
        self.journal = journal
        self.cache = cache
        self.settings = settings
        # Reachability lives in one place: the RemoteState each remote's ResilientBackend
        # keeps (read order, hedging, /.health all read it). A bare backend (tests, tools)
        # gets one that the chain feeds itself from what its calls see.
        policy = RetryPolicy.from_settings(settings)
        self.state_of: dict[str, RemoteState] = {}
        self._chain_fed: set[str] = set()
        for remote in self.remotes:
            state = getattr(remote, "state", None)
            if not isinstance(state, RemoteState):
                state = RemoteState(
                    remote.name,
                    clock=trio.current_time,
                    unwell_for=policy.breaker_reset,
                    hedge_floor=policy.hedge_min_delay,
                    hedge_ceiling=policy.hedge_max_delay,
                )
                self._chain_fed.add(remote.name)
            self.state_of[remote.name] = state
        self._write_floor = policy.min_bandwidth
        # One regular expression for every glob of STORAGEFS_HELD_NAMES: asked on every write
        # and by the replayer for every entry it considers.
        globs = [g.strip() for g in settings.held_names.split(",") if g.strip()]
        self._held_names = (
            re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None
        )
        # Keys made new through the mount that no store has held since: their pending changes
        # can simply be dropped when the file goes (see forget_unstored). Only keys whose
        # changes always go through the journal (held names, write-back) are tracked.
        self._unstored: set[str] = set()
        # Held names whose file is too big for the journal to hold comfortably: they go the
        # way of any other file (straight to the primary, streamed).
        self._too_big_to_hold: set[str] = set()
        self.replayer = Replayer(
            journal,
            self.remotes,
            workers=settings.replay_workers,
            bytes_per_second=settings.replay_bytes_per_second,
            initial_backoff=settings.retry_initial_backoff,
            max_backoff=settings.breaker_reset,
            on_result=self._replayed,
            on_applied=self._reached_store,
            refusal_abandons=settings.write_mode == "through",
            settle=settings.write_back_delay,
            settles=self.deferred,
            states=self.state_of,
        )
        self._cache_queue: trio.MemorySendChannel[Callable[[], Awaitable[None]]] | None = None
        self._cache_cancel: trio.CancelScope | None = None
        self._probe_cancel = trio.CancelScope()
        self._unwell_seen = trio.Event()  # set when a remote may have become unwell
        self.stale_reads = 0
        self.last_stale_read: float | None = None  # wall clock
        self.journal_only_writes = 0  # through-mode writes acknowledged without the primary

    @classmethod
    def from_settings(
        cls, remotes: Sequence[Backend], settings: Settings, directory: Path | None = None
    ) -> FallbackChain:
        """A chain with its journal in ``directory/journal`` and cache in ``directory/cache``
        (``directory`` defaults to ``settings.cache_dir``)."""
        base = directory if directory is not None else settings.cache_dir
        journal = Journal(base / "journal", [r.name for r in remotes], settings.journal_max_bytes)
        return cls(remotes, journal, Cache(base / "cache", settings.cache_max_bytes), settings)

    # --- lifecycle -----

    def describe(self) -> str:
        return "chain(" + ", ".join(r.describe() for r in self.remotes) + ")"

    async def open(self) -> None:
        """Recover the journal, open the cache, then each remote. A remote that does not
        answer is logged and marked down, not fatal; configuration errors are raised."""
        await self.journal.open()
        await self.cache.open()
        for remote in self.remotes:
            try:
                await remote.open()
            except _NOT_ANSWERING as exc:
                log.warning(
                    "%s (%s) is not answering at start: %s; continuing without it",
                    remote.name, remote.describe(), exc,
                )  # fmt: skip
                state = self.state_of[remote.name]  # open() is not an operation it counts
                state.record_error("open", exc)
                state.failed(f"{type(exc).__name__}: {exc}")
                self.replayer.mark_down(remote.name, exc)
            else:
                self.state_of[remote.name].answered()

    async def close(self) -> None:
        for remote in self.remotes:
            try:
                await remote.close()
            except Exception as exc:
                log.warning("closing %s: %s", remote.name, exc)
        await self.cache.close()
        await self.journal.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background work until :meth:`stop`: the replayer, and the cache filler that
        keeps cache stores of small direct writes off the write path (the cache evicts on
        insert)."""
        send, receive = trio.open_memory_channel[Callable[[], Awaitable[None]]](CACHE_QUEUE)
        try:
            async with trio.open_nursery() as nursery:
                self._cache_cancel = nursery.cancel_scope
                self._cache_queue = send
                nursery.start_soon(self._fill_cache, receive)
                nursery.start_soon(self._probe_unwell)
                await nursery.start(self.replayer.run)
                task_status.started()
        finally:
            # Also when cancelled: work after this (the unmount's last uploads) does its cache
            # upkeep inline instead of sending to a filler that is gone.
            self._cache_queue = None

    def stop(self) -> None:
        self.replayer.stop()
        if self._cache_queue is not None:
            self._cache_queue.close()  # the filler finishes what is queued, then ends
        self._probe_cancel.cancel()

    async def _probe_unwell(self) -> None:
        """Ask each unwell remote's health about once a second, so that a remote that is well
        again gets its place back without a user's read paying for the test (and a hung one
        stays demoted for as long as it hangs). Through the breaker: an open one is not asked
        until its reset time, when the probe is its half-open trial."""
        probing: set[str] = set()

        async def probe(remote: Backend) -> None:
            try:
                await self._ask(remote, remote.health)
            except Exception as exc:  # the verdict is in the remote's state already
                log.debug("probe of %s: %s", remote.name, exc)
            finally:
                probing.discard(remote.name)

        with self._probe_cancel:
            async with trio.open_nursery() as nursery:
                while True:
                    if not any(state.unwell() for state in self.state_of.values()):
                        # Nothing to probe: sleep until a failure is seen, not on a timer.
                        self._unwell_seen = trio.Event()
                        await self._unwell_seen.wait()
                    await trio.sleep(PROBE_INTERVAL)
                    for remote in self.remotes:
                        if remote.name not in probing and self.state_of[remote.name].unwell():
                            probing.add(remote.name)
                            nursery.start_soon(probe, remote)

    async def _fill_cache(
        self, receive: trio.MemoryReceiveChannel[Callable[[], Awaitable[None]]]
    ) -> None:
        # One consumer, in order: the cache sees a key's changes in the order they were made.
        async with receive:
            async for work in receive:
                if not receive.statistics().current_buffer_used:  # no backlog: let it settle
                    await trio.sleep(CACHE_QUIET)
                await self._cache_best_effort(work())

    async def _cache_soon(self, work: Callable[[], Awaitable[None]]) -> None:
        """Cache upkeep off the request path when the chain is running (in order)."""
        if self._cache_queue is not None:
            try:
                self._cache_queue.send_nowait(work)
                await trio.lowlevel.checkpoint()
                return
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # full (back-pressure), stopping or stopped: do it now
        await self._cache_best_effort(work())

    async def flush(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until every remote has every journaled entry; False if ``timeout`` ran out."""
        self.replayer.kick()
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            while not self.journal.drained():
                await self.journal.wait_changed()
        return self.journal.drained()

    async def health(self) -> None:
        last: BaseException | None = None
        for remote in self.remotes:
            try:
                await remote.health()
            except _NOT_ANSWERING as exc:
                self._saw(remote.name, exc)
                last = exc
            else:
                self._saw(remote.name, None)
                return
        raise BackendUnavailable("no remote backend answers") from last

    # --- reachability -----

    def _saw(self, name: str, error: BaseException | None) -> None:
        """What a call to remote ``name`` showed (None: it answered)."""
        self._note(name, "call", error)
        if error is None and not self.replayer.is_up(name):
            self.replayer.kick(name)  # it answers us again: let the replayer probe it now

    def _replayed(self, name: str, error: BaseException | None) -> None:
        self._note(name, "replay", error)

    def _note(self, name: str, op: str, error: BaseException | None) -> None:
        """A ResilientBackend has recorded the outcome in its state already; a bare backend's
        state is fed here. A failure wakes the prober either way."""
        if error is not None:
            self._unwell_seen.set()
        if name in self._chain_fed:
            state = self.state_of[name]
            if error is None:
                state.answered()
            else:
                state.record_error(op, error)
                state.failed(f"{type(error).__name__}: {error}")

    def _read_order(self) -> builtins.list[Backend]:
        """The remotes in chain order, except that unwell ones (breaker not closed, or failed
        or lost a hedged read recently and not answered promptly since) are asked last. A
        hung primary then costs one hedge delay, once, not one per call."""
        well: builtins.list[Backend] = []
        unwell: builtins.list[Backend] = []
        for remote in self.remotes:
            (unwell if self.state_of[remote.name].unwell() else well).append(remote)
        return well + unwell

    async def _first_answer(
        self, op: str, call: Callable[[Backend], Awaitable[T]], *, cached: bool = False
    ) -> T:
        async def ask(remote: Backend) -> T:
            return await self._ask(remote, functools.partial(call, remote))

        return (await self._race(op, self._read_order(), ask, cached=cached))[1]

    async def _race(
        self,
        op: str,
        order: Sequence[Backend],
        ask: Callable[[Backend], Awaitable[T]],
        *,
        cached: bool = False,
        hedge: bool = True,
    ) -> tuple[Backend, T]:
        """The first answer to ``ask`` from the remotes in ``order``, and who gave it.

        The next remote is asked as soon as the previous one is not answering, or (``hedge``)
        once it has not answered within its hedge delay; the first answer wins (a negative one
        too) and the others are cancelled. A remote that was asked before the winner and had
        not answered is demoted: reads ask it last until it answers promptly again. Every
        remote but the last (or, with ``cached``, every one) gets a single attempt: there is
        somewhere else to go. _AllDown when no remote answers.
        """
        if len(order) == 1:  # nobody to hedge with: no nursery, no channel, no timer
            try:
                with answerable_elsewhere(cached):
                    return order[0], await ask(order[0])
            except _NOT_ANSWERING as exc:
                raise _AllDown(exc) from None
        send, receive = trio.open_memory_channel[_Reply[T]](len(order))
        started: builtins.list[float] = []
        finished: set[int] = set()
        last: BaseException | None = None
        winner: _Reply[T] | None = None
        held: _Reply[T] | None = None  # a "not found" waiting for earlier remotes

        def earlier_done(index: int) -> bool:
            return all(i in finished for i in range(index))

        async def one(index: int) -> None:
            remote = order[index]
            try:
                with answerable_elsewhere(cached or index < len(order) - 1):
                    reply: _Reply[T] = _Reply(index, value=await ask(remote))
            except Exception as exc:
                reply = _Reply(index, error=exc)
            send.send_nowait(reply)

        async with trio.open_nursery() as nursery:

            def launch() -> None:
                started.append(trio.current_time())
                nursery.start_soon(one, len(started) - 1)

            launch()
            while winner is None:
                hedge_at = math.inf
                if hedge and len(started) < len(order):
                    previous = self.state_of[order[len(started) - 1].name]
                    hedge_at = started[-1] + previous.hedge_delay(op)
                reply = None
                with trio.move_on_at(hedge_at):
                    reply = await receive.receive()
                if reply is None:  # the last one asked is slow: ask the next one as well
                    launch()
                    continue
                finished.add(reply.index)
                if isinstance(reply.error, NotFound) and not earlier_done(reply.index):
                    # "Not found" from a later remote while an earlier one may still answer:
                    # the earlier one decides (a lagging secondary must not hide a file the
                    # primary has). Held until the earlier ones answered or failed.
                    if held is None or reply.index < held.index:
                        held = reply
                    continue
                if isinstance(reply.error, _NOT_ANSWERING):
                    last = reply.error
                    if held is not None and earlier_done(held.index):
                        winner = held
                    elif len(started) < len(order):
                        launch()
                        continue
                    elif len(finished) == len(started):
                        break
                    else:
                        continue
                else:
                    winner = reply
                nursery.cancel_scope.cancel()
        if winner is None:
            raise _AllDown(last)
        now = trio.current_time()
        for index in range(winner.index):
            if index not in finished:
                loser = order[index]
                self._unwell_seen.set()
                self.state_of[loser.name].demote(
                    f"no answer to {op} within {now - started[index]:.2g} s;"
                    f" {order[winner.index].name} answered first"
                )
                log.info(
                    "%s did not answer a %s within %.2g s: %s answered; asking %s last",
                    loser.name, op, now - started[index], order[winner.index].name, loser.name,
                )  # fmt: skip
        if winner.error is not None:
            raise winner.error
        return order[winner.index], winner.value  # type: ignore[return-value]

    async def _ask(self, remote: Backend, call: Callable[[], Awaitable[T]]) -> T:
        """One remote's answer, noting whether it answered (a negative answer is one too, and
        authoritative); a remote not answering raises for the caller to fall back."""
        try:
            result = await call()
        except _NOT_ANSWERING as exc:
            self._saw(remote.name, exc)
            raise
        except BackendError:
            self._saw(remote.name, None)
            raise
        self._saw(remote.name, None)
        return result

    def _stale(self, key: str) -> None:
        self.stale_reads += 1
        self.last_stale_read = time.time()
        log.debug("no remote answers: serving the cached copy of %r", key)

    @staticmethod
    def _unavailable(key: str, down: _AllDown) -> BackendUnavailable:
        exc = BackendUnavailable(f"no backend answered for {key!r} and no cached copy exists")
        exc.__cause__ = down.last
        return exc

    # --- reads -----

    async def _through(
        self,
        op: str,
        key: str,
        entry: Entry | None,
        remote_op: Callable[[Backend, str], Awaitable[T]],
        local_op: Callable[[Entry], Awaitable[T]],
        *,
        hedge: bool = True,
    ) -> T:
        """The first answer for ``key`` from the remotes (see :meth:`_race`), each asked
        where the journal says (:meth:`Journal.resolve`); _AllDown when none answers."""
        order = self._read_order()
        where = self.journal.resolve(key, entry, order[0].name)
        if where is None:
            await trio.lowlevel.checkpoint()
            raise NotFound(key)
        if isinstance(where, Entry):
            return await local_op(where)

        async def ask(remote: Backend) -> T:
            where = self.journal.resolve(key, entry, remote.name)
            if where is None:
                await trio.lowlevel.checkpoint()
                raise NotFound(key)
            if isinstance(where, Entry):
                return await local_op(where)
            return await self._ask(remote, functools.partial(remote_op, remote, where))

        cached = self.cache.enabled and self.cache.info(key) is not None
        return (await self._race(op, order, ask, cached=cached, hedge=hedge))[1]

    @staticmethod
    def _pending_info(key: str, entry: Entry, metadata: Mapping[str, str] | None) -> ObjectInfo:
        return ObjectInfo(key, entry.size, entry.created, None, dict(metadata or {}))

    async def stat(self, key: str) -> ObjectInfo:
        entry = self.journal.latest(key)
        if entry is not None and entry.op is not Op.COPY:
            await trio.lowlevel.checkpoint()
            if entry.op is Op.DELETE:
                raise NotFound(key)
            return self._pending_info(key, entry, entry.metadata)
        if entry is not None and entry.metadata is not None:
            await trio.lowlevel.checkpoint()
            return self._pending_info(key, entry, entry.metadata)

        async def local(put: Entry) -> ObjectInfo:
            await trio.lowlevel.checkpoint()
            return self._pending_info(key, put, put.metadata)

        try:
            info = await self._through("stat", key, entry, lambda r, k: r.stat(k), local)
        except _AllDown as down:
            cached = self.cache.info(key)
            if cached is None:
                raise self._unavailable(key, down) from None
            self._stale(key)
            return cached
        if entry is not None:  # a pending COPY keeping its source's metadata
            return self._pending_info(key, entry, info.metadata)
        return info

    async def peek(self, key: str, length: int) -> tuple[ObjectInfo, bytes]:
        """stat + the first ``length`` bytes, in one request to a remote when nothing of the
        key is journaled (the overlay and the cache answer through stat and read)."""
        if self.journal.latest(key) is None:
            try:
                info, data = await self._first_answer(
                    "peek", lambda r: peek(r, key, length), cached=self.cache.info(key) is not None
                )
            except _AllDown:
                pass
            else:
                if len(data) >= info.size:  # the whole object: keep a clean copy, as read does
                    found = info
                    await self._cache_soon(lambda: self.cache.store_bytes(key, data, found))
                return info, data
        info = await self.stat(key)
        data = await self.read(key, 0, min(length, info.size)) if info.size else b""
        return info, data

    async def read(self, key: str, offset: int, length: int) -> bytes:
        async def local(put: Entry) -> bytes:
            return await self.journal.read_content(put, offset, length)

        for _ in range(3):  # a pending entry may finish while we read it: then ask again
            entry = self.journal.latest(key)
            try:
                data = await self._through(
                    "read", key, entry, lambda r, k: r.read(k, offset, length), local
                )
            except ContentGone:
                continue
            except _AllDown as down:
                cached = await self.cache.read(key, offset, length)
                if cached is None:
                    raise self._unavailable(key, down) from None
                self._stale(key)
                return cached
            if entry is None and offset == 0 and len(data) < length:
                # The whole object came back in one read (small files, the usual `cat`): keep
                # a clean copy so it stays readable when no remote answers.
                info = ObjectInfo(key, len(data), time.time())
                await self._cache_soon(functools.partial(self.cache.store_bytes, key, data, info))
            return data
        raise BackendUnavailable(f"{key!r} keeps changing under the read")

    async def download(self, key: str, dest: str) -> ObjectInfo:
        async def local(put: Entry) -> ObjectInfo:
            await self.journal.copy_content(put, dest)
            return self._pending_info(key, put, put.metadata)

        for _ in range(3):
            entry = self.journal.latest(key)
            try:
                info = await self._through(
                    "download", key, entry, lambda r, k: r.download(k, dest), local, hedge=False
                )
            except ContentGone:
                continue
            except _AllDown as down:
                cached = await self.cache.download(key, dest)
                if cached is None:
                    raise self._unavailable(key, down) from None
                self._stale(key)
                return cached
            if entry is None:
                await self._cache_best_effort(self.cache.store_copy(key, dest, info))
                return info
            if entry.op is Op.COPY:  # the content of a pending copy, under its new name
                meta = entry.metadata if entry.metadata is not None else info.metadata
                return ObjectInfo(key, info.size, info.mtime, info.etag, meta)
            return info
        raise BackendUnavailable(f"{key!r} keeps changing under the download")

    async def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        limit: int = 1000,
    ) -> ListPage:
        """One page of the merged view: the remote's page with the pending names of its name
        range merged in (so a page may hold a few more than ``limit`` names), in byte order
        within the page. A token stays valid across a failover (see chain_listing)."""
        state = listing.decode_token(token) if token is not None else None
        order = self._read_order()
        names = [r.name for r in order]
        if state is not None and state.backend in names:
            start = names.index(state.backend)
            order = [order[start], *order[:start], *order[start + 1 :]]
        low = state.last if state is not None else None

        async def ask(remote: Backend) -> ListPage:
            inner = state.inner if state is not None and state.backend == remote.name else None
            return await self._ask(
                remote,
                lambda: self._list_from(remote, prefix, delimiter, inner, low, limit),
            )

        down = _AllDown(None)
        if state is None or state.backend != CACHE:
            try:
                remote, page = await self._race("list", order, ask)
            except _AllDown as exc:
                down = exc
            else:
                return await self._finish_page(remote, page, prefix, delimiter, low)
        if not self.cache.enabled:
            raise self._unavailable(prefix, down)
        self._stale(prefix)
        page = listing.after(self.cache.listing(prefix, delimiter), low)
        return await self._finish_page(None, page, prefix, delimiter, low)

    async def _list_from(
        self,
        remote: Backend,
        prefix: str,
        delimiter: str | None,
        inner: str | None,
        low: str | None,
        limit: int,
    ) -> ListPage:
        if inner is not None or low is None:
            return await remote.list(prefix, delimiter=delimiter, token=inner, limit=limit)
        # Continuing another backend's listing: start over here, skipping what was returned.
        token: str | None = None
        while True:
            page = listing.after(
                await remote.list(prefix, delimiter=delimiter, token=token, limit=limit), low
            )
            if page.objects or page.prefixes or page.token is None:
                return page
            token = page.token

    async def _finish_page(
        self,
        remote: Backend | None,
        page: ListPage,
        prefix: str,
        delimiter: str | None,
        low: str | None,
    ) -> ListPage:
        high = listing.last_name(page) if page.token is not None else None
        if page.token is not None and high is None:
            high = low or ""
        pending = self.journal.latest_under(prefix)
        merged, suspects = listing.merge(page, pending, prefix, delimiter, low, high)
        if suspects and remote is not None:
            merged = listing.without(merged, await self._emptied(remote, suspects, pending))
        token = None
        if page.token is not None:
            backend = remote.name if remote is not None else CACHE
            token = listing.encode_token(listing.ChainToken(backend, page.token, high))
        return ListPage(merged.objects, merged.prefixes, token)

    async def _emptied(
        self, remote: Backend, prefixes: Sequence[str], pending: Mapping[str, Entry]
    ) -> builtins.list[str]:
        """Those ``prefixes`` under which every key on ``remote`` is deleted by the journal."""
        gone: builtins.list[str] = []
        for prefix in prefixes:
            token: str | None = None
            try:
                while True:
                    page = await remote.list(prefix, delimiter=None, token=token, limit=1000)
                    if listing.survivors((o.key for o in page.objects), pending):
                        break
                    if page.token is None:
                        gone.append(prefix)
                        break
                    token = page.token
            except _NOT_ANSWERING as exc:
                self._saw(remote.name, exc)  # keep the prefix: we cannot tell
        return gone

    # --- writes -----

    # --- writes -----
    #
    # With one remote in write-through mode, a change that the remote applies before the call
    # returns needs no journal: it is on the store before it is acknowledged. Only when the
    # remote does not answer (or anything for the same keys is still journaled, to keep their
    # order) does the change go through the journal. With a secondary, every change is
    # journaled first, so the secondary gets it even if the daemon dies right after.

    def held(self, key: str) -> bool:
        """A temporary name (``STORAGEFS_HELD_NAMES``, rsync's ``.NAME.XXXXXX`` by default)
        in write-through mode: its changes wait ``write_back_delay`` in the journal and are not
        waited for, so the utime, chmod and rename that follow within milliseconds fold into
        one upload under the final name — which the rename then waits for, as a close would.
        Its journal writes are not fsync'd on their own (:meth:`make_durable`): they survive
        the daemon being killed, and the rename's upload or a later durable commit makes
        them safe from a power cut, as a local disk's close() without fsync() is."""
        if self._held_names is None or self.settings.write_mode != "through":
            return False
        if key in self._too_big_to_hold:
            return False
        return self._held_names.match(key.rstrip("/").rpartition("/")[2]) is not None

    def deferred(self, key: str) -> bool:
        """Changes of ``key`` wait in the journal and are not waited for: every key in
        write-back mode, held names in write-through mode."""
        return self.settings.write_mode == "back" or self.held(key)

    def note_created(self, key: str) -> None:
        if self.deferred(key):  # only these never go straight to a store
            _bounded_add(self._unstored, key)  # forgetting one costs a DELETE later

    def _reached_store(self, entry: Entry) -> None:
        self._unstored.discard(entry.key)

    async def forget_unstored(self, key: str) -> bool:
        """Drop the pending PUTs of ``key`` if no store has held it since it was made (see
        :func:`storagefs.backends.base.forget_unstored`): rsync's temporary file, renamed,
        then costs no DELETE request."""
        entries = self.journal.entries_of(key)
        if (
            key not in self._unstored
            or any(e.op is not Op.PUT for e in entries)
            or self.journal.read_by_copy(key)
        ):
            await trio.lowlevel.checkpoint()
            return False
        if not await self.replayer.withdraw(entries):
            return False
        self._unstored.discard(key)
        await self._cache_best_effort(self.cache.discard(key))
        return True

    async def make_durable(self) -> None:
        """An fsync(): what the journal holds for held names is fsync'd too."""
        await self.journal.make_durable()

    def _direct(self, key: str, *more: str) -> bool:
        keys = (key, *more)
        return (
            len(self.remotes) == 1
            and not any(self.deferred(k) for k in keys)
            and self.replayer.is_up(self.primary.name)
            and not self.state_of[self.primary.name].unwell()
            and all(self.journal.latest(k) is None for k in keys)
        )

    def _write_wait(self, size: int) -> float:
        """Seconds a write-through waits for the primary: ``write_deadline``, plus the time
        ``size`` bytes take at the slowest bandwidth a transfer is allowed (1 MiB/s), so a
        big upload that is making progress is waited for and a hung small one is not."""
        return self.settings.write_deadline + size / self._write_floor

    async def _try_direct(
        self, call: Callable[[Backend], Awaitable[T]], size: int = 0
    ) -> tuple[bool, T | None]:
        """(True, result) when the primary applied it in time; (False, None) to journal it."""
        with trio.move_on_after(self._write_wait(size)):
            try:
                result = await call(self.primary)
            except _NOT_ANSWERING as exc:
                self._saw(self.primary.name, exc)
                return False, None
            self._saw(self.primary.name, None)
            return True, result
        return False, None  # too slow: the journal takes it (an upload replayed is idempotent)

    async def write(self, key: str, source: str, metadata: Mapping[str, str]) -> ObjectInfo:
        size = Path(source).stat().st_size
        if size > self.settings.journal_max_bytes // 4 and self.held(key):
            _bounded_add(self._too_big_to_hold, key)
        if self._direct(key):
            done, info = await self._try_direct(lambda r: r.write(key, source, metadata), size)
            if done and info is not None:
                if info.size <= SMALL_CACHE_COPY:
                    with open(source, "rb") as f:  # small and local: cheaper than a thread hop
                        data = f.read()
                    written = info
                    await self._cache_soon(lambda: self.cache.store_bytes(key, data, written))
                else:  # the staging file keeps changing: drop the stale copy instead
                    await self._cache_soon(lambda: self.cache.discard(key))
                return info
        held = self.held(key)
        entry = await self.journal.append_put(key, source, metadata, durable=not held)
        await self._cache_journaled(entry)
        info = await self._settle(entry)
        assert info is not None
        return info

    async def start_upload(self, key: str, metadata: Mapping[str, str]) -> Upload | None:
        """A streaming upload straight to the primary, when a write of ``key`` would go
        straight to it (one remote, write-through, nothing journaled for the key); None
        otherwise: then the finished file is written, through the journal. A streamed object
        is on the primary once complete() returns, which is what acknowledges the close; if
        any step fails, the caller writes the file instead (to the journal if need be)."""
        if not self._direct(key):
            await trio.lowlevel.checkpoint()
            return None
        try:
            upload = await start_upload(self.primary, key, metadata)
        except _NOT_ANSWERING as exc:
            self._saw(self.primary.name, exc)
            return None
        return None if upload is None else _PrimaryUpload(self, key, upload)

    @property
    def streams(self) -> bool:
        return as_store(self.primary).streams

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        if self._direct(key):
            done, info = await self._try_direct(
                lambda r: r.write_bytes(key, data, metadata), len(data)
            )
            if done and info is not None:
                written = info
                await self._cache_soon(lambda: self.cache.store_bytes(key, data, written))
                return written
        entry = await self.journal.append_put_bytes(key, data, metadata, durable=not self.held(key))
        await self._cache_best_effort(self.cache.store_bytes(key, data, self._journal_info(entry)))
        info = await self._settle(entry)
        assert info is not None
        return info

    async def delete(self, key: str) -> None:
        if self._direct(key):
            done, _ = await self._try_direct(lambda r: r.delete(key))
            if done:
                await self._cache_soon(lambda: self.cache.discard(key))
                return
        self._unstored.discard(key)
        entry = await self.journal.append_delete(key)
        await self._cache_best_effort(self.cache.discard(key))
        await self._settle(entry)

    async def copy(
        self, src: str, dst: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        if self._direct(src, dst):
            done, info = await self._try_direct(lambda r: r.copy(src, dst, metadata))
            if done and info is not None:
                meta = info.metadata
                await self._cache_soon(lambda: self.cache.copy(src, dst, meta))
                return info
        pending = self.journal.latest(src)
        if pending is not None and pending.op is Op.PUT and src == dst and metadata is not None:
            # A chmod/chown/utime of a file whose upload is still journaled (a held temporary
            # name, write-back, an outage): the pending upload takes the new metadata.
            held = self.held(src)
            amended = await self.replayer.amend(pending, metadata, durable=not held)
            if amended is not None:
                if not held:  # the clean copy takes the new metadata too
                    meta = dict(metadata)
                    await self._cache_soon(lambda: self.cache.copy(src, src, meta))
                return self._journal_info(amended)
        if pending is not None and pending.op is Op.PUT and self._direct(dst):
            # A held temporary file renamed to its final name: its content is here, so the
            # final name is uploaded straight from the journal, once, as a close would.
            info = await self._write_pending(pending, dst, metadata)
            if info is not None:
                return info
        source = await self.stat(src)  # NotFound for a missing source, as a store would say
        meta = dict(metadata) if metadata is not None else dict(source.metadata or {})
        entry = await self.journal.append_copy(src, dst, meta, size=source.size)
        if entry.op is Op.PUT:
            await self._cache_journaled(entry)
        else:
            await self._cache_best_effort(self.cache.copy(src, dst, meta))
        info = await self._settle(entry)
        assert info is not None
        return info

    async def _write_pending(
        self, entry: Entry, dst: str, metadata: Mapping[str, str] | None
    ) -> ObjectInfo | None:
        """Write ``entry``'s journaled content to the primary as ``dst``; None when the
        primary does not take it in time (the caller journals the copy instead)."""
        meta = dict(metadata) if metadata is not None else dict(entry.metadata or {})
        path = self.journal.content_path(entry)
        if path is not None:
            source = str(path)
            done, info = await self._try_direct(lambda r: r.write(dst, source, meta), entry.size)
            if done and info is not None:
                await self._cache_soon(lambda: self.cache.discard(dst))
            return info if done else None
        try:
            data = await self.journal.read_content(entry, 0, entry.size)
        except ContentGone:
            return None
        done, info = await self._try_direct(lambda r: r.write_bytes(dst, data, meta), len(data))
        if not done or info is None:
            return None
        written = info
        await self._cache_soon(lambda: self.cache.store_bytes(dst, data, written))
        return written

    def _journal_info(self, entry: Entry) -> ObjectInfo:
        meta = dict(entry.metadata) if entry.metadata is not None else {}
        return ObjectInfo(entry.key, entry.size, entry.created, None, meta)

    async def _settle(self, entry: Entry) -> ObjectInfo | None:
        """Wait for the primary as the write mode says; what the caller gets back."""
        fallback = None if entry.op is Op.DELETE else self._journal_info(entry)
        if self.deferred(entry.key):
            await trio.lowlevel.checkpoint()
            return fallback
        result = await self.replayer.wait(
            entry.seq, self.primary.name, self._write_wait(entry.size)
        )
        if result.outcome is Outcome.APPLIED:
            return result.info if result.info is not None else fallback
        if result.outcome is Outcome.FAILED:
            # The replayer quarantined it for every remote; the cache must not serve it.
            await self._cache_best_effort(self.cache.discard(entry.key))
            if isinstance(result.error, BackendError):
                raise result.error
            raise BackendError(f"{entry.op.value} {entry.key!r} failed: {result.error}")
        self.journal_only_writes += 1
        log.info(
            "%s %r acknowledged on the journal alone: primary %s %s",
            entry.op.value, entry.key, self.primary.name,
            "is not answering" if result.outcome is Outcome.UNAVAILABLE else "is too slow",
        )  # fmt: skip
        return fallback

    async def _cache_journaled(self, entry: Entry) -> None:
        if self.held(entry.key):
            # A temporary name: the journal serves it until it is renamed, a moment from now;
            # copying it into the cache would cost more than that upload. An older copy goes.
            await self._cache_soon(lambda: self.cache.discard(entry.key))
            return
        await self._cache_entry(entry)

    async def _cache_entry(self, entry: Entry) -> None:
        info = self._journal_info(entry)
        path = self.journal.content_path(entry)
        if path is not None:
            await self._cache_best_effort(self.cache.store_file(entry.key, path, info))
            return
        try:
            data = await self.journal.read_content(entry, 0, entry.size)
        except ContentGone:
            return
        await self._cache_best_effort(self.cache.store_bytes(entry.key, data, info))

    async def _cache_best_effort(self, work: Awaitable[None]) -> None:
        try:
            await work
        except OSError as exc:  # the cache is an optimisation: never fail an operation on it
            log.warning("local cache: %s", exc)

    # --- health -----

    def status(self) -> ChainStatus:
        """Facts for the health files. Whether they make the mount ok, degraded or down is
        decided in one place: :mod:`storagefs.health`."""
        journal = self.journal.stats()
        replay = self.replayer.stats()
        remotes = []
        for index, remote in enumerate(self.remotes):
            queue = journal.targets.get(remote.name)
            role = "primary" if index == 0 else "secondary" if index == 1 else f"remote{index}"
            remotes.append(
                RemoteView(
                    name=remote.name,
                    role=role,
                    backend=remote.describe(),
                    state=self.state_of[remote.name].snapshot(),
                    replay=replay[remote.name],
                    pending_ops=queue.pending_ops if queue else 0,
                    pending_bytes=queue.pending_bytes if queue else 0,
                    oldest_pending_age=queue.oldest_age if queue else None,
                )
            )
        return ChainStatus(
            name=self.name,
            write_mode=self.settings.write_mode,
            remotes=tuple(remotes),
            journal=journal,
            cache=self.cache.stats(),
            stale_reads=self.stale_reads,
            last_stale_read=self.last_stale_read,
            journal_only_writes=self.journal_only_writes,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteView:
    """One remote as the chain sees it: its state, its replay, what the journal owes it."""

    name: str
    role: str  # "primary", "secondary", "remote<N>"
    backend: str  # describe()
    state: RemoteSnapshot
    replay: TargetSnapshot
    pending_ops: int
    pending_bytes: int
    oldest_pending_age: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class ChainStatus:
    """One reading of the chain for the health report."""

    name: str
    write_mode: str
    remotes: tuple[RemoteView, ...]
    journal: JournalStats
    cache: CacheStats
    stale_reads: int
    last_stale_read: float | None  # wall clock
    journal_only_writes: int
