"""Reconciliation: make the secondary hold everything the primary holds.

The journal only carries changes made *through the mount*. Objects that were in the primary
before a secondary was added (or written by other tools) never reach the secondary that way,
and would vanish from the mount the moment the primary fails. A :class:`Syncer` pass closes that
gap:

1. **Walk.** Both backends are listed recursively (both list in UTF-8 byte order, so the two
   listings are merged as they stream, without holding either in memory) and every primary
   object is judged by :mod:`storagefs.sync.compare`; objects the listings cannot decide cost
   one ``stat`` of the secondary. What must be copied is ``behind`` (objects and bytes).
2. **Copy**, in key order, ``workers`` at a time, paced by ``bytes_per_second``: download from
   the primary into a private temporary file, upload to the secondary with the primary's
   metadata plus the mark of the version copied. After each batch the key reached is saved in
   ``state.json`` (the **cursor**): a pass interrupted by a restart resumes after it.

**Never racing the journal.** The journal's replayer is the one applier of changes made
through the mount. A key with pending journal entries is skipped (the journal will write it).
A key the journal touches while its copy is in flight may have been overwritten by an older
version: it is verified again once the journal is done with it, and copied again (or, if the
primary no longer has it, our copy deleted) when it differs.

Objects only the secondary has are counted (``extra_objects``), never deleted: they may be
writes the primary has not received yet, and deleting is not reconciliation's call.

Every backend call goes through the chain's remotes, i.e. the resilient wrappers (retries,
breakers). A remote that stops answering pauses the pass (state ``paused``); it is retried
after ``retry_delay`` seconds from its cursor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

import trio

from storagefs.backends.base import Backend, BackendError, BackendUnavailable, NotFound, ObjectInfo
from storagefs.chain.fallback import FallbackChain
from storagefs.config import Settings
from storagefs.journal.replay import RateLimiter
from storagefs.journal.store import Entry, Journal
from storagefs.sync.compare import (
    MARK,
    Verdict,
    compare_listed,
    compare_marked,
    etags_are_md5,
    version_of,
)

log = logging.getLogger("storagefs.sync")

# States of reconciliation, as /.health/status.json shows them under "secondary".
OFF = "off"  # no secondary, or disabled
WAITING = "waiting"  # the first pass has not started yet
SYNCING = "syncing"
PAUSED = "paused"  # a backend stopped answering; retried from the cursor
COMPLETE = "complete"  # the last pass found nothing left to copy
INCOMPLETE = "incomplete"  # the last pass ended with objects it could not copy

STAT_BATCH = 64  # secondary stats resolved together during the walk
RECHECK_ROUNDS = 3  # how often a key the journal raced is verified again within one pass
STATE_FILE = "state.json"


@dataclasses.dataclass
class Figures:
    """Progress of the current (or last) pass; :meth:`Syncer.snapshot` shows it."""

    state: str = WAITING
    walking: bool = False  # the listings are still being compared: behind_* may grow
    listed_objects: int = 0
    behind_objects: int = 0
    behind_bytes: int = 0
    copied_objects: int = 0
    copied_bytes: int = 0
    skipped_pending: int = 0
    extra_objects: int = 0
    failed_objects: int = 0
    failed_keys: list[str] = dataclasses.field(default_factory=list)
    resumed_after: str | None = None
    pass_started_at: float | None = None
    last_complete_at: float | None = None
    last_error: str | None = None
    passes: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class SyncSnapshot:
    """One reading of :class:`Figures` for the health report (the first ten failed keys)."""

    state: str
    walking: bool
    listed_objects: int
    behind_objects: int
    behind_bytes: int
    copied_objects: int
    copied_bytes: int
    skipped_pending: int
    extra_objects: int
    failed_objects: int
    failed_keys: tuple[str, ...]
    resumed_after: str | None
    pass_started_at: float | None
    last_complete_at: float | None
    last_error: str | None
    passes: int
    pid: int

    @property
    def incomplete(self) -> bool:
        """Known to lack objects: some found behind, or no pass has ever completed (a later
        pass that has found nothing yet does not make a complete secondary doubtful)."""
        return bool(self.behind_objects) or self.last_complete_at is None

    @property
    def counting(self) -> bool:
        """The figures may still grow: the listings are being compared, or a pass waits."""
        return self.walking or self.state in (WAITING, PAUSED)


class Progress(Protocol):
    """What a display is told (storagefs.download.progress implements it)."""

    def listed(self, objects: int) -> None: ...

    def planned(self, files: int, total_bytes: int, done_files: int, done_bytes: int) -> None: ...

    def advanced(self, size: int) -> None: ...

    def warn(self, message: str) -> None: ...


async def _listing(backend: Backend) -> AsyncIterator[ObjectInfo]:
    token: str | None = None
    while True:
        page = await backend.list("", delimiter=None, token=token)
        for info in page.objects:
            yield info
        token = page.token
        if token is None:
            return


async def merged(
    primary: Backend, secondary: Backend
) -> AsyncIterator[tuple[ObjectInfo | None, ObjectInfo | None]]:
    """(primary's, secondary's) object per key, in key order; None where one lacks it."""
    left, right = _listing(primary), _listing(secondary)
    a = await anext(left, None)
    b = await anext(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a.key.encode() < b.key.encode()):
            yield a, None
            a = await anext(left, None)
        elif a is None or b.key.encode() < a.key.encode():
            yield None, b
            b = await anext(right, None)
        else:
            yield a, b
            a, b = await anext(left, None), await anext(right, None)


class _State:
    """``state.json`` under the sync directory: the cursor of an unfinished pass, and when the
    last pass completed. Tied to the pair of backends: another pair starts afresh."""

    def __init__(self, directory: Path, pair: str) -> None:
        self.path = directory / STATE_FILE
        self.pair = pair
        self.cursor: str | None = None
        self.last_complete_at: float | None = None
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(saved, dict) and saved.get("pair") == pair:
            cursor, done = saved.get("cursor"), saved.get("last_complete_at")
            self.cursor = cursor if isinstance(cursor, str) else None
            self.last_complete_at = float(done) if isinstance(done, int | float) else None

    def save(self) -> None:
        doc = {"pair": self.pair, "cursor": self.cursor, "last_complete_at": self.last_complete_at}
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(
            "w", dir=self.path.parent, prefix=".state-", delete=False
        ) as tmp:
            json.dump(doc, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        Path(tmp.name).replace(self.path)


class Syncer:
    def __init__(
        self,
        primary: Backend,
        secondary: Backend,
        directory: Path,
        *,
        journal: Journal | None = None,
        primary_md5: bool = False,
        secondary_md5: bool = False,
        workers: int = 4,
        bytes_per_second: int = 0,
        interval: float = 3600.0,
        retry_delay: float = 30.0,
    ) -> None:
        self.primary = primary
        self.secondary = secondary
        self.directory = directory
        self.journal = journal
        self.primary_md5 = primary_md5
        self.secondary_md5 = secondary_md5
        self.workers = workers
        self.limiter = RateLimiter(bytes_per_second)
        self.interval = interval
        self.retry_delay = retry_delay
        self.figures = Figures()
        self.plan: list[ObjectInfo] = []  # what a dry run would have copied
        self._state = _State(directory, f"{primary.describe()} -> {secondary.describe()}")
        self.figures.last_complete_at = self._state.last_complete_at
        self._inflight: set[str] = set()
        self._touched: set[str] = set()
        self._recheck: set[str] = set()
        self._kick = trio.Event()
        if journal is not None:
            journal.listeners.append(self._on_append)

    # --- the daemon's loop -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Pass after pass: one at start, then every ``interval`` seconds or on :meth:`kick`;
        a paused pass is tried again after ``retry_delay``."""
        task_status.started()
        while True:
            try:
                await self.run_pass()
                wait = self.interval
            except Exception as exc:  # never let reconciliation take the mount down
                wait = self.retry_delay
                self.figures.state = PAUSED
                self.figures.walking = False
                self.figures.last_error = _short(exc)
                if isinstance(exc, BackendError):
                    log.warning("reconciliation paused, retrying in %.0f s: %s", wait, exc)
                else:
                    log.exception("reconciliation failed, retrying in %.0f s", wait)
            with trio.move_on_after(wait):
                await self._kick.wait()
            self._kick = trio.Event()

    def kick(self) -> None:
        """Start a pass now (SIGUSR1 to the daemon, see ``storagefs sync MOUNTPOINT``)."""
        self._kick.set()

    async def kick_on_signal(self) -> None:
        """SIGUSR1 starts a pass now: how ``storagefs sync MOUNTPOINT`` asks the daemon."""
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            async for _ in signals:
                log.info("SIGUSR1: reconciliation pass requested")
                self.kick()

    def snapshot(self) -> SyncSnapshot:
        """A frozen reading of the progress; health decides what it means."""
        f = dataclasses.asdict(self.figures)
        f["failed_keys"] = tuple(f["failed_keys"][:10])
        return SyncSnapshot(**f, pid=os.getpid())

    # --- one pass ---------------------------------------------------------------------------

    async def run_pass(self, *, dry_run: bool = False, progress: Progress | None = None) -> Figures:
        """Compare everything, then copy what the secondary lacks (not with ``dry_run``).
        BackendUnavailable when a remote stops answering (the cursor is kept)."""
        state = self._state
        f = self.figures = Figures(
            state=SYNCING,
            walking=True,
            resumed_after=state.cursor,
            pass_started_at=time.time(),
            last_complete_at=state.last_complete_at,
            passes=self.figures.passes + 1,
        )
        if state.cursor:
            log.info("reconciliation resumes after %r", state.cursor)
        work = await self._walk(state.cursor, progress)
        f.walking = False
        if dry_run:
            self.plan = work
            f.state = COMPLETE if not work else INCOMPLETE
            return f
        if progress is not None:
            progress.planned(len(work), f.behind_bytes, 0, 0)
        for start in range(0, len(work), self.workers):
            batch = work[start : start + self.workers]
            await _together([functools.partial(self._copy_one, i, progress) for i in batch])
            state.cursor = batch[-1].key
            await trio.to_thread.run_sync(state.save)
        await self._recheck_raced(progress)
        f.state = INCOMPLETE if f.failed_objects or f.behind_objects else COMPLETE
        state.cursor = None
        if f.state == COMPLETE:
            state.last_complete_at = f.last_complete_at = time.time()
        await trio.to_thread.run_sync(state.save)
        log.info(
            "reconciliation %s: %d object(s), %d bytes copied; %d skipped (journaled),"
            " %d failed, %d only on the secondary",
            f.state, f.copied_objects, f.copied_bytes, f.skipped_pending,
            f.failed_objects, f.extra_objects,
        )  # fmt: skip
        return f

    async def _walk(self, cursor: str | None, progress: Progress | None) -> list[ObjectInfo]:
        f = self.figures
        work: list[ObjectInfo] = []
        unsure: list[ObjectInfo] = []
        after = cursor.encode() if cursor is not None else None
        async for ours, theirs in merged(self.primary, self.secondary):
            if ours is None:
                f.extra_objects += 1
                continue
            f.listed_objects += 1
            if progress is not None and f.listed_objects % 1000 == 0:
                progress.listed(f.listed_objects)
            if after is not None and ours.key.encode() <= after:
                continue  # done by the interrupted pass
            if self._pending(ours.key):
                f.skipped_pending += 1
                continue
            verdict = compare_listed(
                ours, theirs, primary_md5=self.primary_md5, secondary_md5=self.secondary_md5
            )
            if verdict is Verdict.UNSURE:
                unsure.append(ours)
                if len(unsure) >= STAT_BATCH:
                    work.extend(await self._by_mark(unsure))
                    unsure = []
            elif verdict is not Verdict.SAME:
                self._behind(work, ours)
        work.extend(await self._by_mark(unsure))
        if progress is not None:
            progress.listed(f.listed_objects)
        work.sort(key=lambda i: i.key.encode())
        return work

    def _behind(self, work: list[ObjectInfo], info: ObjectInfo) -> None:
        work.append(info)
        self.figures.behind_objects += 1
        self.figures.behind_bytes += info.size

    async def _by_mark(self, batch: list[ObjectInfo]) -> list[ObjectInfo]:
        """Rule 4 for a batch: one stat of the secondary each, in parallel."""
        work: list[ObjectInfo] = []

        async def judge(info: ObjectInfo) -> None:
            try:
                meta = (await self.secondary.stat(info.key)).metadata
            except NotFound:
                meta = None
            if compare_marked(info, meta) is not Verdict.SAME:
                self._behind(work, info)

        await _together([functools.partial(judge, info) for info in batch])
        return work

    def _pending(self, key: str) -> bool:
        return self.journal is not None and self.journal.latest(key) is not None

    def _on_append(self, entry: Entry) -> None:
        for key in entry.keys():  # noqa: SIM118 (Entry.keys is a method, not a dict's)
            if key in self._inflight:
                self._touched.add(key)

    async def _copy_one(self, info: ObjectInfo, progress: Progress | None) -> bool:
        """Copy one object; False when it was not (skipped, gone, or failed)."""
        f = self.figures
        key = info.key
        if self._pending(key):  # journaled since the walk: the journal will write it
            f.skipped_pending += 1
            self._done(info)
            return False
        await self.limiter.take(info.size)
        self._inflight.add(key)
        try:
            size = await self._transfer(key)
        except NotFound:
            size = None  # deleted since the walk: nothing to copy
        except BackendUnavailable:
            raise
        except BackendError as exc:  # refused for this object alone (permission, bad name)
            log.warning("reconciliation could not copy %r: %s", key, exc)
            f.failed_objects += 1
            f.failed_keys.append(key)
            f.last_error = _short(exc)
            return False
        finally:
            self._inflight.discard(key)
            if key in self._touched:
                self._touched.discard(key)
                self._recheck.add(key)
        self._done(info)
        if size is not None:
            f.copied_objects += 1
            f.copied_bytes += size
            if progress is not None:
                progress.advanced(size)
        return size is not None

    def _done(self, info: ObjectInfo) -> None:
        self.figures.behind_objects -= 1
        self.figures.behind_bytes -= info.size

    async def _transfer(self, key: str) -> int:
        """Primary -> secondary through a private temporary file; the bytes copied."""
        if key.endswith("/"):  # a directory marker: no content, its metadata matters
            source = await self.primary.stat(key)
            meta = _marked(source)
            await self.secondary.write_bytes(key, b"", meta)
            return 0
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix="copy-", dir=self.directory)
        os.close(fd)
        try:
            source = await self.primary.download(key, tmp)
            await self.secondary.write(key, tmp, _marked(source))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return source.size

    async def _recheck_raced(self, progress: Progress | None) -> None:
        """Keys the journal changed while their copy was in flight: once the journal is done
        with them, the secondary must hold the primary's version (or nothing, if it is gone)."""
        for _ in range(RECHECK_ROUNDS):
            ready = {k for k in self._recheck if not self._pending(k)}
            if not ready:
                return
            self._recheck -= ready
            for key in sorted(ready):
                try:
                    ours = await self.primary.stat(key)
                except NotFound:
                    await self._drop_our_copy(key)
                    continue
                try:
                    meta = (await self.secondary.stat(key)).metadata
                except NotFound:
                    meta = None
                if meta is not None and MARK not in meta:
                    continue  # the journal's own write: it is the current one
                if compare_marked(ours, meta) is not Verdict.SAME:
                    self._behind([], ours)
                    await self._copy_one(ours, progress)

    async def _drop_our_copy(self, key: str) -> None:
        try:
            meta = (await self.secondary.stat(key)).metadata
        except NotFound:
            return
        if meta and MARK in meta:  # ours, resurrected after the journal deleted it
            await self.secondary.delete(key)


def daemon_syncer(chain: FallbackChain, settings: Settings, cache: Path) -> Syncer | None:
    """The mount's reconciliation of its primary into its secondary, if it has one."""
    if len(chain.remotes) < 2 or not settings.sync_enabled:
        return None
    return Syncer(
        chain.remotes[0],
        chain.remotes[1],
        cache / "sync",
        journal=chain.journal,
        primary_md5=etags_are_md5(settings.resolved_primary()),
        secondary_md5=etags_are_md5(settings.secondary or ""),
        workers=settings.sync_workers,
        bytes_per_second=settings.sync_bytes_per_second,
        interval=settings.sync_interval,
        # Long enough for an open breaker to have probed again (resilience.py).
        retry_delay=max(3 * settings.breaker_reset, 1.0),
    )


async def _together(calls: list[Callable[[], Awaitable[object]]]) -> None:
    """Run ``calls`` concurrently; a remote that stops answering is raised as itself (not in
    an exception group), once the others have finished."""
    down: list[BackendUnavailable] = []

    async def guarded(call: Callable[[], Awaitable[object]]) -> None:
        try:
            await call()
        except BackendUnavailable as exc:
            down.append(exc)

    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(guarded, call)
    if down:
        raise down[0]


def _marked(source: ObjectInfo) -> dict[str, str]:
    meta: Mapping[str, str] = source.metadata or {}
    return {**meta, MARK: version_of(source)}


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
