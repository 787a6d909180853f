"""FallbackChain: one Store over [primary, secondary, ...], the journal and the local cache.

A thin facade: it builds the chain's rooms and keeps the public API the core, the daemon, the
download, the sync and the tests use. The work is in the rooms (each module's docstring says
what it owns and which members of the others it may not touch):

* :mod:`storagefs.chain.reachability` -- the remotes, their states, the read order, ``ask``;
* :mod:`storagefs.chain.racing` -- hedged reads across the remotes;
* :mod:`storagefs.chain.reads` -- the journal overlay, the remotes, the cache's stale copies;
* :mod:`storagefs.chain.writes` -- write-through vs journaling, held names, pending writes;
* :mod:`storagefs.chain.filling` -- cache upkeep off the request path, in order;
* :mod:`storagefs.chain.probing` -- asking unwell remotes about once a second;
* :mod:`storagefs.chain.options` -- what the chain reads of the settings.

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

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

from storagefs.backends.base import (
    Backend,
    BackendUnavailable,
    ListPage,
    ObjectInfo,
    StoreBase,
    Upload,
)
from storagefs.chain.cache import Cache, CacheStats
from storagefs.chain.filling import CacheFiller
from storagefs.chain.options import ChainOptions
from storagefs.chain.probing import Prober
from storagefs.chain.reachability import NOT_ANSWERING, Reachability
from storagefs.chain.reads import Reads
from storagefs.chain.writes import Holds, Writes
from storagefs.config import Settings
from storagefs.journal.replay import Replayer, TargetSnapshot
from storagefs.journal.store import Journal, JournalStats
from storagefs.resilience.stats import RemoteSnapshot, RemoteState

log = logging.getLogger("storagefs.chain")


class FallbackChain(StoreBase):
    """The chain's public face. Its rooms (``reach``, ``reads``, ``writes``, ``holds``,
    ``filler``, ``prober``, ``replayer``) are built here and talk to each other through
    their public members only; this class adds the lifecycle and the health status."""

    name = "chain"

    def __init__(
        self,
        remotes: Sequence[Backend],
        journal: Journal,
        cache: Cache,
        options: ChainOptions,
    ) -> None:
        if not remotes:
            raise ValueError("the chain needs at least one remote backend")
        names = [r.name for r in remotes]
        if len(set(names)) != len(names):
            raise ValueError(f"remote backend names must be unique, got {names}")
        if set(journal.targets) != set(names):
            raise ValueError(f"journal targets {journal.targets} differ from remotes {names}")
        self.options = options
        self.journal = journal
        self.cache = cache
        self.reach = Reachability(remotes, options)
        self.remotes = self.reach.remotes
        self.primary = self.reach.primary
        self.state_of: Mapping[str, RemoteState] = self.reach.state_of
        self.holds = Holds(options)
        self.filler = CacheFiller()
        self.replayer = Replayer(
            journal,
            self.remotes,
            workers=options.replay_workers,
            bytes_per_second=options.replay_bytes_per_second,
            initial_backoff=options.retry_initial_backoff,
            max_backoff=options.breaker_reset,
            on_result=self.reach.replayed,
            on_applied=self.holds.reached_store,
            refusal_abandons=options.write_mode == "through",
            settle=options.write_back_delay,
            settles=self.holds.deferred,
            states=self.reach.state_of,
        )
        self.reach.follow(self.replayer)
        self.reads = Reads(journal, cache, self.reach, self.filler)
        self.writes = Writes(
            journal, cache, self.reach, self.filler, self.holds, self.replayer, options,
            stat=self.reads.stat,
        )  # fmt: skip
        self.prober = Prober(self.reach)
        self._commits = trio.CancelScope()  # the group commit task, cancelled by stop()

    @classmethod
    def from_settings(
        cls, remotes: Sequence[Backend], settings: Settings, directory: Path | None = None
    ) -> FallbackChain:
        """A chain with its journal in ``directory/journal`` and cache in ``directory/cache``
        (``directory`` defaults to ``settings.cache_dir``)."""
        base = directory if directory is not None else settings.cache_dir
        journal = Journal(base / "journal", [r.name for r in remotes], settings.journal_max_bytes)
        cache = Cache(base / "cache", settings.cache_max_bytes)
        return cls(remotes, journal, cache, ChainOptions.from_settings(settings))

    # --- counters for the health files and tests -----

    @property
    def stale_reads(self) -> int:
        return self.reads.stale_reads

    @property
    def last_stale_read(self) -> float | None:  # wall clock
        return self.reads.last_stale_read

    @property
    def journal_only_writes(self) -> int:
        """Through-mode writes acknowledged without the primary."""
        return self.writes.journal_only_writes

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
            except NOT_ANSWERING as exc:
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
        receive = self.filler.open_queue()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.filler.fill, receive)
                nursery.start_soon(self.prober.run)
                nursery.start_soon(self._group_commits)
                await nursery.start(self.replayer.run)
                task_status.started()
        finally:
            # Also when cancelled: work after this (the unmount's last uploads) does its cache
            # upkeep inline instead of sending to a filler that is gone.
            self.filler.detach()

    async def _group_commits(self) -> None:
        """The journal's group commit (write-back's closes, held names) until :meth:`stop`;
        the journal's close fsyncs what is left."""
        with self._commits:
            await self.journal.commit_every(self.options.commit_interval)

    def stop(self) -> None:
        self._commits.cancel()
        self.replayer.stop()
        self.filler.close_queue()  # the filler finishes what is queued, then ends
        self.prober.stop()

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
            except NOT_ANSWERING as exc:
                self.reach.saw(remote.name, exc)
                last = exc
            else:
                self.reach.saw(remote.name, None)
                return
        raise BackendUnavailable("no remote backend answers") from last

    # --- reads (storagefs.chain.reads) -----

    async def stat(self, key: str) -> ObjectInfo:
        return await self.reads.stat(key)

    async def peek(self, key: str, length: int) -> tuple[ObjectInfo, bytes]:
        return await self.reads.peek(key, length)

    async def read(self, key: str, offset: int, length: int) -> bytes:
        return await self.reads.read(key, offset, length)

    async def download(self, key: str, dest: str) -> ObjectInfo:
        return await self.reads.download(key, dest)

    async def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        limit: int = 1000,
    ) -> ListPage:
        return await self.reads.list(prefix, delimiter=delimiter, token=token, limit=limit)

    # --- writes (storagefs.chain.writes) -----

    def held(self, key: str) -> bool:
        return self.holds.held(key)

    def deferred(self, key: str) -> bool:
        return self.holds.deferred(key)

    @property
    def streams(self) -> bool:
        return self.writes.streams

    def note_created(self, key: str) -> None:
        self.writes.note_created(key)

    async def forget_unstored(self, key: str) -> bool:
        return await self.writes.forget_unstored(key)

    async def make_durable(self) -> None:
        await self.writes.make_durable()

    async def write(self, key: str, source: str, metadata: Mapping[str, str]) -> ObjectInfo:
        return await self.writes.write(key, source, metadata)

    async def start_upload(self, key: str, metadata: Mapping[str, str]) -> Upload | None:
        return await self.writes.start_upload(key, metadata)

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        return await self.writes.write_bytes(key, data, metadata)

    async def delete(self, key: str) -> None:
        await self.writes.delete(key)

    async def copy(
        self, src: str, dst: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        return await self.writes.copy(src, dst, metadata)

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
            write_mode=self.options.write_mode,
            remotes=tuple(remotes),
            journal=journal,
            cache=self.cache.stats(),
            stale_reads=self.reads.stale_reads,
            last_stale_read=self.reads.last_stale_read,
            journal_only_writes=self.writes.journal_only_writes,
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
