"""The write policy: whether a change goes straight to the primary or through the journal,
how long a write waits for it, held names and the pending writes they leave.

With one remote in write-through mode, a change that the remote applies before the call
returns needs no journal: it is on the store before it is acknowledged. Only when the remote
does not answer (or anything for the same keys is still journaled, to keep their order) does
the change go through the journal. With a secondary, every change is journaled first, so the
secondary gets it even if the daemon dies right after. In ``write_mode="through"`` a journaled
write waits up to ``write_deadline`` (plus 1 s per MiB) for the primary to apply it, and not
at all while the primary is unwell; if the primary is not answering in time it succeeds on the
journal alone (the health report says degraded); a permanent refusal by the primary is raised.
In ``"back"`` mode a write returns once journaled. The cache gets a copy of every write (best
effort, through the cache filler).

:class:`Holds` owns which names are held (``STORAGEFS_HELD_NAMES``) and the per-key sets that
go with them (keys no store has held since they were made; held names too big to hold); the
replayer asks it (``settles=deferred``, ``on_applied=reached_store``). :class:`Writes` owns the
write path and ``journal_only_writes`` (only it writes that counter); it asks
:class:`~storagefs.chain.reachability.Reachability` for the primary and its verdict, and
changes :class:`Holds`' sets only through its methods. :class:`PrimaryUpload` is a streaming
upload :class:`Writes` hands out; it uses only :class:`Writes`' public methods.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import trio

from storagefs import sizes
from storagefs.backends.base import (
    Backend,
    BackendError,
    ObjectInfo,
    TransientError,
    Upload,
    as_store,
    seconds_to_ns,
    start_upload,
)
from storagefs.chain.cache import Cache
from storagefs.chain.filling import CacheFiller, best_effort
from storagefs.chain.options import ChainOptions
from storagefs.chain.reachability import NOT_ANSWERING, Reachability
from storagefs.journal.replay import Outcome, Replayer
from storagefs.journal.store import ContentGone, Entry, Journal, Op

T = TypeVar("T")

log = logging.getLogger("storagefs.chain")

SMALL_CACHE_COPY = sizes.SMALL_CACHE_COPY  # larger direct writes are not copied into the cache
_KEYS_REMEMBERED = 100_000  # bound of the per-key sets (unstored, too big to hold)


def _bounded_add(keys: set[str], key: str) -> None:
    """Add ``key``; past the bound the set starts over (each set only spares requests)."""
    if len(keys) >= _KEYS_REMEMBERED:
        keys.clear()
    keys.add(key)


class Holds:
    def __init__(self, options: ChainOptions) -> None:
        self._options = options
        # One regular expression for every glob of STORAGEFS_HELD_NAMES: asked on every write
        # and by the replayer for every entry it considers.
        globs = [g.strip() for g in options.held_names.split(",") if g.strip()]
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

    def held(self, key: str) -> bool:
        """A temporary name (``STORAGEFS_HELD_NAMES``, rsync's ``.NAME.XXXXXX`` by default)
        in write-through mode: its changes wait ``write_back_delay`` in the journal and are not
        waited for, so the utime, chmod and rename that follow within milliseconds fold into
        one upload under the final name — which the rename then waits for, as a close would.
        Its journal writes are not fsync'd on their own (``make_durable``): they survive
        the daemon being killed, and the rename's upload or a later durable commit makes
        them safe from a power cut, as a local disk's close() without fsync() is."""
        if self._held_names is None or self._options.write_mode != "through":
            return False
        if key in self._too_big_to_hold:
            return False
        return self._held_names.match(key.rstrip("/").rpartition("/")[2]) is not None

    def deferred(self, key: str) -> bool:
        """Changes of ``key`` wait in the journal and are not waited for: every key in
        write-back mode, held names in write-through mode."""
        return self._options.write_mode == "back" or self.held(key)

    def note_size(self, key: str, size: int) -> None:
        """A file of ``size`` bytes is written as ``key``: a held name too big for the journal
        to hold comfortably is not held from now on."""
        if size > self._options.journal_max_bytes // 4 and self.held(key):
            _bounded_add(self._too_big_to_hold, key)

    def note_created(self, key: str) -> None:
        if self.deferred(key):  # only these never go straight to a store
            _bounded_add(self._unstored, key)  # forgetting one costs a DELETE later

    def unstored(self, key: str) -> bool:
        """No store has held ``key`` since it was made (as far as this mount knows)."""
        return key in self._unstored

    def stored_or_gone(self, key: str) -> None:
        """``key`` may be on a store now, or is being deleted: nothing to forget any more."""
        self._unstored.discard(key)

    def reached_store(self, entry: Entry) -> None:
        """The replayer's ``on_applied``: a store holds ``entry.key`` now."""
        self._unstored.discard(entry.key)


class PrimaryUpload:
    """A streaming upload to the primary that tells the chain whether the primary answered.

    Each call gets the wait of a direct write of as many bytes (``write_wait``: the write
    deadline plus 1 s per MiB): a primary too slow for it fails the stream, and the writer
    falls back to writing the file (to the journal if need be), so a hung primary costs a
    close() about what it costs without streaming. The completion counts the whole object:
    the store assembles it then (s3rver took over 3 s for 1 GiB; AWS documents that S3 may
    take several minutes)."""

    def __init__(self, writes: Writes, key: str, inner: Upload) -> None:
        self._writes = writes
        self._key = key
        self._inner = inner
        self._failed: BackendError | None = None  # once one call failed, the rest fail fast
        self._sent = 0  # bytes in the parts put so far

    async def _call(self, call: Callable[[], Awaitable[T]], size: int) -> T:
        if self._failed is not None:
            await trio.lowlevel.checkpoint()
            raise TransientError(f"{self._key!r}: an earlier part failed: {self._failed}")
        deadline = self._writes.write_wait(size)
        try:
            with trio.fail_after(deadline):
                return await self._writes.ask_primary(call)
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
        await self._writes.discard_soon(self._key)
        return info

    async def abort(self) -> None:
        await self._inner.abort()


class Writes:
    def __init__(
        self,
        journal: Journal,
        cache: Cache,
        reach: Reachability,
        filler: CacheFiller,
        holds: Holds,
        replayer: Replayer,
        options: ChainOptions,
        stat: Callable[[str], Awaitable[ObjectInfo]],
    ) -> None:
        self.journal = journal
        self.cache = cache
        self._reach = reach
        self._filler = filler
        self._holds = holds
        self._replayer = replayer
        self._options = options
        self._stat = stat  # the chain's stat (the journal overlay, then the remotes)
        self.journal_only_writes = 0  # through-mode writes acknowledged without the primary

    @property
    def streams(self) -> bool:
        return as_store(self._reach.primary).streams

    async def ask_primary(self, call: Callable[[], Awaitable[T]]) -> T:
        return await self._reach.ask(self._reach.primary, call)

    async def discard_soon(self, key: str) -> None:
        """Drop the cache's copy of ``key`` (off the request path)."""
        await self._filler.soon(lambda: self.cache.discard(key))

    def note_created(self, key: str) -> None:
        self._holds.note_created(key)

    async def forget_unstored(self, key: str) -> bool:
        """Drop the pending PUTs of ``key`` if no store has held it since it was made (see
        :func:`storagefs.backends.base.forget_unstored`): rsync's temporary file, renamed,
        then costs no DELETE request."""
        entries = self.journal.entries_of(key)
        if (
            not self._holds.unstored(key)
            or any(e.op is not Op.PUT for e in entries)
            or self.journal.read_by_copy(key)
        ):
            await trio.lowlevel.checkpoint()
            return False
        if not await self._replayer.withdraw(entries):
            return False
        self._holds.stored_or_gone(key)
        await best_effort(self.cache.discard(key))
        return True

    async def make_durable(self) -> None:
        """An fsync(): what the journal holds for held names is fsync'd too."""
        await self.journal.make_durable()

    def _direct(self, key: str, *more: str) -> bool:
        keys = (key, *more)
        return (
            len(self._reach.remotes) == 1
            and not any(self._holds.deferred(k) for k in keys)
            and self._replayer.is_up(self._reach.primary.name)
            and not self._reach.state_of[self._reach.primary.name].unwell()
            and all(self.journal.latest(k) is None for k in keys)
        )

    def write_wait(self, size: int) -> float:
        """Seconds a write-through waits for the primary: ``write_deadline``, plus the time
        ``size`` bytes take at the slowest bandwidth a transfer is allowed (1 MiB/s), so a
        big upload that is making progress is waited for and a hung small one is not."""
        return self._options.write_deadline + size / self._options.min_bandwidth

    async def _try_direct(
        self, call: Callable[[Backend], Awaitable[T]], size: int = 0
    ) -> tuple[bool, T | None]:
        """(True, result) when the primary applied it in time; (False, None) to journal it."""
        with trio.move_on_after(self.write_wait(size)):
            try:
                result = await call(self._reach.primary)
            except NOT_ANSWERING as exc:
                self._reach.saw(self._reach.primary.name, exc)
                return False, None
            self._reach.saw(self._reach.primary.name, None)
            return True, result
        return False, None  # too slow: the journal takes it (an upload replayed is idempotent)

    async def write(self, key: str, source: str, metadata: Mapping[str, str]) -> ObjectInfo:
        size = Path(source).stat().st_size
        self._holds.note_size(key, size)
        if self._direct(key):
            done, info = await self._try_direct(lambda r: r.write(key, source, metadata), size)
            if done and info is not None:
                if info.size <= SMALL_CACHE_COPY:
                    with open(source, "rb") as f:  # small and local: cheaper than a thread hop
                        data = f.read()
                    written = info
                    await self._filler.soon(lambda: self.cache.store_bytes(key, data, written))
                else:  # the staging file keeps changing: drop the stale copy instead
                    await self.discard_soon(key)
                return info
        entry = await self.journal.append_put(
            key, source, metadata, durable=not self._holds.deferred(key)
        )
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
            upload = await start_upload(self._reach.primary, key, metadata)
        except NOT_ANSWERING as exc:
            self._reach.saw(self._reach.primary.name, exc)
            return None
        return None if upload is None else PrimaryUpload(self, key, upload)

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        if self._direct(key):
            done, info = await self._try_direct(
                lambda r: r.write_bytes(key, data, metadata), len(data)
            )
            if done and info is not None:
                written = info
                await self._filler.soon(lambda: self.cache.store_bytes(key, data, written))
                return written
        entry = await self.journal.append_put_bytes(
            key, data, metadata, durable=not self._holds.deferred(key)
        )
        await best_effort(self.cache.store_bytes(key, data, self._journal_info(entry)))
        info = await self._settle(entry)
        assert info is not None
        return info

    async def delete(self, key: str) -> None:
        if self._direct(key):
            done, _ = await self._try_direct(lambda r: r.delete(key))
            if done:
                await self.discard_soon(key)
                return
        self._holds.stored_or_gone(key)
        entry = await self.journal.append_delete(key, durable=not self._holds.deferred(key))
        await best_effort(self.cache.discard(key))
        await self._settle(entry)

    async def copy(
        self, src: str, dst: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        if self._direct(src, dst):
            done, info = await self._try_direct(lambda r: r.copy(src, dst, metadata))
            if done and info is not None:
                meta = info.metadata
                await self._filler.soon(lambda: self.cache.copy(src, dst, meta))
                return info
        pending = self.journal.latest(src)
        if pending is not None and pending.op is Op.PUT and src == dst and metadata is not None:
            # A chmod/chown/utime of a file whose upload is still journaled (a held temporary
            # name, write-back, an outage): the pending upload takes the new metadata.
            held = self._holds.held(src)
            amended = await self._replayer.amend(
                pending, metadata, durable=not self._holds.deferred(src)
            )
            if amended is not None:
                if not held:  # the clean copy takes the new metadata too
                    meta = dict(metadata)
                    await self._filler.soon(lambda: self.cache.copy(src, src, meta))
                return self._journal_info(amended)
        if pending is not None and pending.op is Op.PUT and self._direct(dst):
            # A held temporary file renamed to its final name: its content is here, so the
            # final name is uploaded straight from the journal, once, as a close would.
            info = await self._write_pending(pending, dst, metadata)
            if info is not None:
                return info
        source = await self._stat(src)  # NotFound for a missing source, as a store would say
        meta = dict(metadata) if metadata is not None else dict(source.metadata or {})
        entry = await self.journal.append_copy(
            src, dst, meta, size=source.size, durable=not self._holds.deferred(dst)
        )
        if entry.op is Op.PUT:
            await self._cache_journaled(entry)
        else:
            await best_effort(self.cache.copy(src, dst, meta))
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
                await self._filler.soon(lambda: self.cache.discard(dst))
            return info if done else None
        try:
            data = await self.journal.read_content(entry, 0, entry.size)
        except ContentGone:
            return None
        done, info = await self._try_direct(lambda r: r.write_bytes(dst, data, meta), len(data))
        if not done or info is None:
            return None
        written = info
        await self._filler.soon(lambda: self.cache.store_bytes(dst, data, written))
        return written

    def _journal_info(self, entry: Entry) -> ObjectInfo:
        meta = dict(entry.metadata) if entry.metadata is not None else {}
        return ObjectInfo(entry.key, entry.size, seconds_to_ns(entry.created), None, meta)

    async def _settle(self, entry: Entry) -> ObjectInfo | None:
        """Wait for the primary as the write mode says; what the caller gets back."""
        fallback = None if entry.op is Op.DELETE else self._journal_info(entry)
        if self._holds.deferred(entry.key):
            await trio.lowlevel.checkpoint()
            return fallback
        result = await self._replayer.wait(
            entry.seq, self._reach.primary.name, self.write_wait(entry.size)
        )
        if result.outcome is Outcome.APPLIED:
            return result.info if result.info is not None else fallback
        if result.outcome is Outcome.FAILED:
            # The replayer quarantined it for every remote; the cache must not serve it.
            await best_effort(self.cache.discard(entry.key))
            if isinstance(result.error, BackendError):
                raise result.error
            raise BackendError(f"{entry.op.value} {entry.key!r} failed: {result.error}")
        self.journal_only_writes += 1
        log.info(
            "%s %r acknowledged on the journal alone: primary %s %s",
            entry.op.value, entry.key, self._reach.primary.name,
            "is not answering" if result.outcome is Outcome.UNAVAILABLE else "is too slow",
        )  # fmt: skip
        return fallback

    async def _cache_journaled(self, entry: Entry) -> None:
        if self._holds.held(entry.key):
            # A temporary name: the journal serves it until it is renamed, a moment from now;
            # copying it into the cache would cost more than that upload. An older copy goes.
            await self._filler.soon(lambda: self.cache.discard(entry.key))
            return
        await self._cache_entry(entry)

    async def _cache_entry(self, entry: Entry) -> None:
        info = self._journal_info(entry)
        path = self.journal.content_path(entry)
        if path is not None:
            await best_effort(self.cache.store_file(entry.key, path, info))
            return
        try:
            data = await self.journal.read_content(entry, 0, entry.size)
        except ContentGone:
            return
        await best_effort(self.cache.store_bytes(entry.key, data, info))
