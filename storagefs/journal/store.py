"""The durable write journal: every mutation the mount acknowledged, until every remote has it.

Layout under ``directory``::

    journal.db     SQLite index (WAL); one row per entry, one row per (entry, target) to do
    content/       content of PUTs larger than ``inline_max`` (smaller ones live in the row)
    quarantine/    entries that could not be trusted or applied: a JSON each, plus content

**Durability.** An append returns only after its content file is fsync'd (file, then the
directory) and its index row is committed with ``synchronous=FULL`` (the WAL is fsync'd). Small
contents are stored inline in the row, so a small write costs one fsync, not three.

An append or amendment made with ``durable=False`` (write-back mode, and the chain's held
temporary names) is committed with ``synchronous=NORMAL`` and its content file is written but
not fsync'd: it survives the daemon being killed (the kernel has it), and is fsync'd by the next
durable commit, :meth:`Journal.make_durable` (an ``fsync()`` of the file), the group commit
(:meth:`Journal.commit_every`, ``STORAGEFS_COMMIT_INTERVAL``) or a barrier. WAL frames become
durable in order, so a durable commit covers every commit before it: it fsyncs the content
files of those commits first, so no durable row points at a file a power cut emptied.

Acknowledgements that a target applied an entry are committed with ``synchronous=NORMAL``: no
fsync of their own. WAL commits become durable in order, so a power cut can only forget the
newest acks, and re-applying an op a target already has is harmless (PUT and DELETE are
idempotent, a COPY is replayed before anything later on its keys). Content files of finished
entries are unlinked only after a later fsync (the next append, :meth:`Journal.close`, or a
barrier when many are waiting), so a row that a power cut brings back never points at a file
that is gone. What opening does after a crash is in :mod:`storagefs.journal.recovery`.

**Concurrency.** Everything that waits on the disk (an fsync, a content file, a checkpoint) runs
in ``trio.to_thread.run_sync``; commits without an fsync (acks, held names) run on the trio
thread, cheaper than a thread hop (:meth:`Journal._run_commit`). All SQLite work is
serialized by one ``trio.Lock``: the single connection is used by one worker thread at a time,
and appends commit (and get their seq) in the order they take the lock. Copying content into
the journal happens before taking the lock, so large appends overlap. An in-memory mirror of
the pending entries (never their content) answers the overlay and replayer queries without
SQLite; it is changed only on the trio thread, right after the commit it reflects.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from storagefs import sizes
from storagefs.backends.base import NoSpace, NotFound
from storagefs.journal.recovery import (
    Layout,
    Op,
    TargetProgress,
    fsync_dir,
    meta_json,
    recover,
    sha256_file,
    write_quarantine_json,
)

T = TypeVar("T")

__all__ = ["ContentCorrupt", "ContentGone", "Entry", "Journal", "Op", "TargetProgress"]

log = logging.getLogger("storagefs.journal")

INLINE_MAX = sizes.JOURNAL_INLINE_MAX
_CHUNK = 1024 * 1024
_WAL_AUTOCHECKPOINT = 1000  # pages: SQLite's default, restored after a commit without it
# Commits without fsync made on the trio thread in a row before one runs in a worker thread,
# where it may checkpoint the WAL (see Journal._run_commit): a few hundred KiB of WAL at most.
_INLINE_COMMITS = 200
_GARBAGE_BARRIER = 256  # finished content files waiting before a fsync barrier frees them
# Inline contents of pending entries also kept in memory up to this many bytes, so replaying
# and serving small writes costs no SQLite round trip.
_INLINE_MEMORY = 64 * 1024 * 1024


class ContentGone(Exception):
    """The entry was applied everywhere (or quarantined) meanwhile: ask the remotes instead."""


class ContentCorrupt(Exception):
    """A content's bytes no longer match the checksum taken when it was journaled."""


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Entry:
    """One journaled mutation. ``key`` is the key it changes (a COPY's destination)."""

    seq: int
    op: Op
    key: str
    src: str | None  # COPY source
    metadata: Mapping[str, str] | None  # PUT: the object's; COPY: replacement, None keeps src's
    size: int  # PUT: content bytes; COPY: the source's size when journaled (for the overlay)
    sha256: str | None  # PUT only
    created: float  # wall clock, seconds (what it shows as a time: seconds_to_ns)
    content: str | None  # file name under content/; None when inline (or not a PUT)

    def keys(self) -> tuple[str, ...]:
        """Every key this entry touches: replay keeps their order per target."""
        return (self.key,) if self.src is None or self.src == self.key else (self.key, self.src)

    @property
    def inline(self) -> bool:
        return self.op is Op.PUT and self.content is None


@dataclasses.dataclass(slots=True)
class _Ack:
    seq: int
    target: str
    done: bool = False


@dataclasses.dataclass(slots=True)
class _Staged:
    size: int
    sha256: str
    inline: bytes | None = None
    content: str | None = None  # file name under content/
    consumed: Path | None = None  # an owned source to remove once committed
    moved_from: Path | None = None  # an owned source renamed into content/
    synced: bool = True  # False: a content file not fsync'd yet (a durable=False append)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _disk_full_is_no_space() -> Iterator[None]:
    """The local disk filling up refuses the write with NoSpace (ENOSPC), like the limit."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise NoSpace(f"no space left for the journal: {exc.strerror}") from exc
    except sqlite3.OperationalError as exc:
        if "full" not in str(exc):
            raise
        raise NoSpace(f"no space left for the journal index: {exc}") from exc


@dataclasses.dataclass(frozen=True, slots=True)
class TargetBacklog:
    """What the journal still owes one target."""

    pending_ops: int
    pending_bytes: int
    oldest_age: float | None  # seconds
    configured: bool  # False: a target of an earlier configuration, still owed entries


@dataclasses.dataclass(frozen=True, slots=True)
class JournalStats:
    """One reading of the journal's figures (for health, telemetry, df)."""

    pending_entries: int
    pending_bytes: int
    max_bytes: int
    oldest_age: float | None  # seconds
    quarantined: int
    recovered_orphans: int
    targets: Mapping[str, TargetBacklog]


class Journal:
    """Durable record of backend mutations, drained by
    :class:`storagefs.journal.replay.Replayer`."""

    def __init__(
        self,
        directory: Path,
        targets: Sequence[str],
        max_bytes: int,
        *,
        inline_max: int = INLINE_MAX,
    ) -> None:
        if not targets:
            raise ValueError("a journal needs at least one target")
        if len(set(targets)) != len(targets):
            raise ValueError(f"target names must be unique: {list(targets)}")
        self.directory = directory
        self.targets = tuple(targets)
        self.max_bytes = max_bytes
        self.inline_max = inline_max
        self.content_dir = directory / "content"
        self.quarantine_dir = directory / "quarantine"
        self._conn: sqlite3.Connection | None = None
        self._lock = trio.Lock()
        # The mirror of pending work (see the module docstring).
        self._entries: dict[int, Entry] = {}  # seq order
        self._progress: dict[int, dict[str, TargetProgress]] = {}
        self._queues: dict[str, dict[int, None]] = {t: {} for t in self.targets}
        self._by_key: dict[str, list[int]] = {}  # key -> seqs of entries whose .key it is
        self._copy_sources: dict[str, int] = {}  # key -> pending COPY entries reading it
        self._bytes = 0  # content bytes of pending entries
        self._reserved = 0  # bytes of appends being copied in
        self._garbage: list[str] = []  # content files to unlink after the next fsync
        self._acks: list[_Ack] = []  # waiting for the lock, committed as one batch
        self._inline_memory: dict[int, bytes] = {}
        self._inline_memory_bytes = 0
        self._changed = trio.Event()
        self._barrier_wanted = False
        self._unsynced = False  # a commit made with durable=False awaits an fsync of the WAL
        self._unsynced_files: list[str] = []  # content files of those commits, not fsync'd
        self._unsynced_since = trio.Event()  # set by such a commit: the group commit's cue
        self._inline_commits = 0  # commits on the trio thread since one in a worker thread
        self.quarantined = 0
        self.recovered_orphans = 0  # unacknowledged content files removed at open
        self.listeners: list[Callable[[Entry], None]] = []  # called after each append

    # --- open / close ------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or recover the journal (see :mod:`storagefs.journal.recovery`). Never fails
        on bad entries: they go to quarantine."""
        if self._conn is not None:
            return
        async with self._lock:
            found = await trio.to_thread.run_sync(recover, Layout(self.directory))
        self._conn = found.conn
        self.quarantined = found.quarantined
        self.recovered_orphans = found.orphans
        progress = found.progress
        for row in found.rows:
            entry = Entry(
                row.seq, row.op, row.key, row.src, row.metadata, row.size, row.sha256,
                row.created, row.content,
            )  # fmt: skip
            self._add(entry, progress[row.seq])
            if row.inline is not None:
                self._remember_inline(row.seq, row.inline)
        unknown = {t for p in progress.values() for t in p} - set(self.targets)
        if unknown:
            log.warning(
                "journal has entries for targets no longer configured (%s): they stay pending",
                ", ".join(sorted(unknown)),
            )
        if self._entries:
            log.info(
                "journal: %d pending entries (%d bytes) recovered", len(self._entries), self._bytes
            )

    async def close(self) -> None:
        if self._conn is None:
            return
        async with self._lock:
            conn, self._conn = self._conn, None
            assert conn is not None
            garbage, self._garbage = self._garbage, []
            files, self._unsynced_files = self._unsynced_files, []

            def finish() -> None:
                self._sync_content(files)  # before the checkpoint makes their rows durable
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.close()
                self._unlink_content(garbage)

            await trio.to_thread.run_sync(finish)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("journal is not open")
        return self._conn

    # --- appends -----

    async def append_put(
        self,
        key: str,
        source_path: str | os.PathLike[str],
        metadata: Mapping[str, str],
        *,
        owned: bool = False,
        durable: bool = True,
    ) -> Entry:
        """Journal the content of ``source_path`` as ``key`` (``durable``: see the module
        docstring; a content file is fsync'd either way).

        The file is copied (the caller's staging file may change right after), unless
        ``owned``: then the journal takes the file over (renamed into place when on the same
        file system) and removes it once committed; on failure it is left where it was.
        NoSpace when the journal would exceed ``max_bytes``: nothing pending is ever evicted.
        """
        self._db()
        source = Path(source_path)
        reserved = source.stat().st_size  # a local staging file: no need for a thread
        self._reserve(reserved)
        staged: _Staged | None = None
        try:
            with _disk_full_is_no_space():
                if reserved <= self.inline_max:  # a few KiB read: cheaper than a thread hop
                    staged = self._stage_file(source, owned, durable)
                else:
                    staged = await trio.to_thread.run_sync(self._stage_file, source, owned, durable)
            if staged.size > reserved:  # the file grew while we copied it
                self._reserve(staged.size - reserved)
                reserved = staged.size
            entry = await self._commit(Op.PUT, key, None, metadata, staged, durable=durable)
        except BaseException:
            if staged is not None:
                await trio.to_thread.run_sync(self._unstage, staged)
            raise
        finally:
            self._reserved -= reserved
        if staged.consumed is not None:
            if staged.inline is not None:  # a few KiB: cheaper than a thread hop
                staged.consumed.unlink()
            else:
                await trio.to_thread.run_sync(staged.consumed.unlink)
        return entry

    async def append_put_bytes(
        self, key: str, data: bytes, metadata: Mapping[str, str], *, durable: bool = True
    ) -> Entry:
        self._db()
        size = len(data)
        self._reserve(size)
        staged: _Staged | None = None
        try:
            if size <= self.inline_max:  # hashing a few KiB costs less than a thread hop
                staged = self._stage_bytes(bytes(data))
            else:
                with _disk_full_is_no_space():
                    staged = await trio.to_thread.run_sync(self._stage_bytes, bytes(data), durable)
            return await self._commit(Op.PUT, key, None, metadata, staged, durable=durable)
        except BaseException:
            if staged is not None:
                await trio.to_thread.run_sync(self._unstage, staged)
            raise
        finally:
            self._reserved -= size

    async def append_delete(self, key: str, *, durable: bool = True) -> Entry:
        self._db()
        return await self._commit(Op.DELETE, key, None, None, None, durable=durable)

    async def append_copy(
        self,
        src: str,
        dst: str,
        metadata: Mapping[str, str] | None,
        *,
        size: int = 0,
        durable: bool = True,
    ) -> Entry:
        """Journal a server-side copy (``size``: the source's, for the overlay).

        If ``src`` has a pending PUT, the copy is journaled as a PUT of ``dst`` sharing that
        content (a hard link), so ``dst`` can be served without any remote. NotFound if the
        newest pending entry of ``src`` deletes it.
        """
        self._db()
        latest = self.latest(src)
        if latest is not None and latest.op is Op.DELETE:
            raise NotFound(src)
        if latest is not None and latest.op is Op.PUT:
            meta = metadata if metadata is not None else (latest.metadata or {})
            self._reserve(latest.size)
            staged: _Staged | None = None
            try:
                with _disk_full_is_no_space():
                    staged = await trio.to_thread.run_sync(self._stage_shared, latest)
                return await self._commit(Op.PUT, dst, None, meta, staged, durable=durable)
            except ContentGone:
                pass  # applied everywhere meanwhile, so the remotes have src: a COPY will do
            except BaseException:
                if staged is not None:
                    await trio.to_thread.run_sync(self._unstage, staged)
                raise
            finally:
                self._reserved -= latest.size
        return await self._commit(Op.COPY, dst, src, metadata, None, size=size, durable=durable)

    async def set_metadata(
        self, entry: Entry, metadata: Mapping[str, str], *, durable: bool = True
    ) -> Entry:
        """Give pending PUT ``entry`` new object metadata: a chmod, chown or utime of a file
        whose upload is still journaled costs one UPDATE, not a new entry sharing the content
        (and the drop of the old one). The caller makes sure no target is applying it
        (:meth:`Replayer.amend`)."""
        assert entry.op is Op.PUT
        meta = dict(metadata)
        async with self._lock:
            db = self._db()

            def update() -> None:
                db.execute(
                    "UPDATE entries SET metadata = ? WHERE seq = ?", (meta_json(meta), entry.seq)
                )

            with _disk_full_is_no_space():
                await self._run_commit(update, durable)
        amended = dataclasses.replace(entry, metadata=meta)
        if entry.seq in self._entries:
            self._entries[entry.seq] = amended
        self._notify()
        return amended

    async def _run_commit(self, commit: Callable[[], T], durable: bool) -> T:
        """Run ``commit`` (one SQLite transaction on the journal's connection, under the lock).

        A durable one waits for an fsync of the WAL: in a worker thread. One that is not (an
        ack, a held name's append or amendment) is committed with ``synchronous=NORMAL``, a
        write into the WAL (tens of microseconds), so it runs right here, cheaper than a thread
        hop; being on the trio thread, it must not be the commit that checkpoints the WAL
        (writes and fsyncs the database file). After ``_INLINE_COMMITS`` of those in a row the
        next runs in a worker thread with the checkpoint allowed, so a run of them (an rsync of
        many files, the replayer's acks after an outage) does not grow the WAL without end."""
        db = self._db()
        if durable or self._inline_commits >= _INLINE_COMMITS:
            sync = "FULL" if durable else "NORMAL"

            files = self._unsynced_files if durable else []
            if durable:
                self._unsynced_files = []

            def run() -> T:
                # Content first: the row this commit makes durable (and every earlier one the
                # WAL order makes durable with it) must not point at a file a power cut empties.
                self._sync_content(files)
                db.execute(f"PRAGMA synchronous={sync}")
                try:
                    return commit()
                finally:
                    db.execute("PRAGMA synchronous=FULL")

            try:
                result = await trio.to_thread.run_sync(run)
            except BaseException:
                self._unsynced_files[:0] = files
                raise
            self._inline_commits = 0
            # A durable commit's fsync of the WAL covered earlier ones; one that is not leaves
            # its own frames to the next.
            self._unsynced = not durable
            if not durable:
                self._unsynced_since.set()
            return result
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
        try:
            result = commit()
        finally:
            db.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT}")
            db.execute("PRAGMA synchronous=FULL")
        self._inline_commits += 1
        self._unsynced = True
        self._unsynced_since.set()
        return result

    async def make_durable(self) -> None:
        """fsync what commits made with ``durable=False`` wrote (an ``fsync()`` of a file
        whose upload was journaled that way); nothing to do when there are none."""
        if not self._unsynced and not self._unsynced_files:
            await trio.lowlevel.checkpoint()
            return
        async with self._lock:
            db = Layout(self.directory).db
            wal = db.with_name(db.name + "-wal")
            files, self._unsynced_files = self._unsynced_files, []
            unsynced, self._unsynced = self._unsynced, False

            def sync() -> None:
                self._sync_content(files)
                if unsynced:
                    _fsync_path(wal)

            try:
                await trio.to_thread.run_sync(sync)
            except BaseException:
                self._unsynced_files[:0] = files
                self._unsynced = self._unsynced or unsynced
                raise

    def _sync_content(self, files: Sequence[str]) -> None:
        """fsync content files written without it, then their directory (worker thread)."""
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # applied and removed meanwhile
                _fsync_path(self.content_dir / name)
        if files:
            fsync_dir(self.content_dir)

    async def commit_every(self, interval: float) -> None:
        """Group commit: every ``interval`` seconds, make what ``durable=False`` commits wrote
        durable (ext4's ``commit=``). A power cut then forgets at most the last interval of
        such appends; the daemon being killed forgets none (they are written)."""
        if interval <= 0:
            await trio.sleep_forever()
        while True:
            # Asleep while nothing waits for an fsync: no wake-ups on an idle mount.
            await self._unsynced_since.wait()
            await trio.sleep(interval)
            self._unsynced_since = trio.Event()  # commits from here on: the next round
            await self.make_durable()

    def _reserve(self, size: int) -> None:
        if self._bytes + self._reserved + size > self.max_bytes:
            raise NoSpace(
                f"journal full: {self._bytes + self._reserved} of {self.max_bytes} bytes hold"
                f" data not yet on every backend; cannot take {size} more"
            )
        self._reserved += size

    async def _commit(
        self,
        op: Op,
        key: str,
        src: str | None,
        metadata: Mapping[str, str] | None,
        staged: _Staged | None,
        *,
        size: int = 0,
        durable: bool = True,
    ) -> Entry:
        created = time.time()
        meta = None if metadata is None else dict(metadata)
        async with self._lock:
            db = self._db()
            garbage, self._garbage = (self._garbage, []) if durable else ([], self._garbage)

            def insert() -> int:
                seq = self._insert(db, op, key, src, meta, staged, created)
                # A durable commit was fsync'd, and with it every earlier ack: finished
                # files go.
                self._unlink_content(garbage)
                return seq

            if staged is not None and staged.content is not None and not staged.synced:
                # Before the commit: any durable commit from here on fsyncs it first.
                self._unsynced_files.append(staged.content)
            try:
                # One thread call, and no checkpoint between it and the mirror update below:
                # a cancellation cannot leave a committed entry out of the mirror.
                with _disk_full_is_no_space():
                    seq = await self._run_commit(insert, durable)
            except BaseException:
                self._garbage[:0] = garbage
                raise
        entry = Entry(
            seq=seq,
            op=op,
            key=key,
            src=src,
            metadata=meta,
            size=staged.size if staged is not None else size,
            sha256=staged.sha256 if staged is not None else None,
            created=created,
            content=staged.content if staged is not None else None,
        )
        self._add(entry, {t: TargetProgress() for t in self.targets})
        if staged is not None and staged.inline is not None:
            self._remember_inline(seq, staged.inline)
        for listener in self.listeners:
            try:
                listener(entry)
            except Exception:  # a listener's bug must not turn a durable append into an error
                log.exception("journal listener failed")
        return entry

    # The steps below run in worker threads. Tests of crash recovery wrap them to end the
    # process at a chosen point, so each is one step of the protocol.

    def _stage_file(self, source: Path, owned: bool, sync: bool = True) -> _Staged:
        """``source`` staged as content (inline when small). ``sync``: fsync'd here (file
        and directory); otherwise the next durable commit or make_durable does it."""
        size = source.stat().st_size
        if size <= self.inline_max:
            data = source.read_bytes()
            if len(data) <= self.inline_max:
                staged = self._stage_bytes(data)
                staged.consumed = source if owned else None
                return staged
        name = f"{secrets.token_hex(12)}.data"
        dest = self.content_dir / name
        if owned:
            try:
                source.rename(dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            else:
                staged = _Staged(0, "", content=name, moved_from=source, synced=sync)
                try:
                    if sync:
                        _fsync_path(dest)
                    staged.size, staged.sha256 = sha256_file(dest)
                    if sync:
                        fsync_dir(self.content_dir)
                except BaseException:
                    self._unstage(staged)
                    raise
                return staged
        digest = hashlib.sha256()
        size = 0
        try:
            with open(source, "rb") as src, open(dest, "xb") as out:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                if sync:
                    os.fsync(out.fileno())
            if sync:
                fsync_dir(self.content_dir)
        except BaseException:
            with contextlib.suppress(OSError):
                dest.unlink()
            raise
        consumed = source if owned else None
        return _Staged(size, digest.hexdigest(), content=name, consumed=consumed, synced=sync)

    def _unstage(self, staged: _Staged) -> None:
        """Undo staging after a failed append: the caller keeps (or gets back) its file."""
        if staged.content is None:
            return
        path = self.content_dir / staged.content
        if staged.moved_from is not None:
            with contextlib.suppress(OSError):
                path.rename(staged.moved_from)
                return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def _stage_bytes(self, data: bytes, sync: bool = True) -> _Staged:
        digest = hashlib.sha256(data).hexdigest()
        if len(data) <= self.inline_max:
            return _Staged(size=len(data), sha256=digest, inline=data)
        name = f"{secrets.token_hex(12)}.data"
        dest = self.content_dir / name
        try:
            with open(dest, "xb") as out:
                out.write(data)
                out.flush()
                if sync:
                    os.fsync(out.fileno())
            if sync:
                fsync_dir(self.content_dir)
        except BaseException:
            with contextlib.suppress(OSError):
                dest.unlink()
            raise
        return _Staged(size=len(data), sha256=digest, content=name, synced=sync)

    def _stage_shared(self, entry: Entry) -> _Staged:
        assert entry.sha256 is not None
        if entry.content is None:
            return _Staged(entry.size, entry.sha256, inline=self._inline_bytes(entry))
        name = f"{secrets.token_hex(12)}.data"
        try:
            os.link(self.content_dir / entry.content, self.content_dir / name)
        except FileNotFoundError:
            raise ContentGone(entry.key) from None
        fsync_dir(self.content_dir)
        return _Staged(entry.size, entry.sha256, content=name)

    def _insert(
        self,
        db: sqlite3.Connection,
        op: Op,
        key: str,
        src: str | None,
        metadata: Mapping[str, str] | None,
        staged: _Staged | None,
        created: float,
    ) -> int:
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "INSERT INTO entries (op, key, src, metadata, size, sha256, created, inline,"
                " content) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    op.value,
                    key,
                    src,
                    meta_json(metadata),
                    staged.size if staged else 0,
                    staged.sha256 if staged else None,
                    created,
                    staged.inline if staged else None,
                    staged.content if staged else None,
                ),
            )
            seq = cur.lastrowid
            assert seq is not None
            db.executemany(
                "INSERT INTO targets (seq, target) VALUES (?, ?)", [(seq, t) for t in self.targets]
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return seq

    # --- progress -----

    async def mark_applied(self, seq: int, target: str) -> None:
        """``target`` has applied entry ``seq``; the entry goes when no target is left.

        Acks that queue up behind the lock are committed together, in one transaction."""
        progress = self._progress.get(seq)
        if progress is None or target not in progress:
            await trio.lowlevel.checkpoint()
            return
        ack = _Ack(seq, target)
        self._acks.append(ack)
        async with self._lock:
            if ack.done:  # an earlier caller committed it with its own
                return
            batch, self._acks = self._acks, []
            db = self._db()
            try:
                await self._run_commit(lambda: self._delete_targets(db, batch), durable=False)
            except BaseException:
                self._acks[:0] = [a for a in batch if a is not ack]
                raise
        for done in batch:
            done.done = True
            self._drop_target(done.seq, done.target)

    async def record_failure(self, seq: int, target: str, error: str) -> None:
        progress = self._progress.get(seq, {}).get(target)
        if progress is None:
            return
        progress.attempts += 1
        progress.last_error = error

        def update(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA synchronous=NORMAL")
            try:
                db.execute(
                    "UPDATE targets SET attempts = attempts + 1, last_error = ?"
                    " WHERE seq = ? AND target = ?",
                    (error, seq, target),
                )
            finally:
                db.execute("PRAGMA synchronous=FULL")

        async with self._lock:
            db = self._db()
            await trio.to_thread.run_sync(update, db)

    async def quarantine(self, seq: int, target: str, reason: str) -> None:
        """Give up applying ``seq`` to ``target``: keep a copy and a description in
        quarantine/, log it, and stop retrying (the entry goes if no other target waits)."""
        entry = self._entries.get(seq)
        if entry is None or target not in self._progress.get(seq, {}):
            return
        progress = self._progress[seq][target]
        async with self._lock:
            db = self._db()

            def run() -> Path:
                where = self._write_quarantine(
                    f"{seq}-{target}", self._describe(entry, target, progress), reason, entry
                )
                self._delete_targets(db, [_Ack(seq, target)])  # synchronous=FULL: the default
                return where

            where = await trio.to_thread.run_sync(run)
        self.quarantined += 1
        log.error(
            "journal entry %d (%s %r) will not be applied to %s: %s; kept in %s",
            seq, entry.op.value, entry.key, target, reason, where,
        )  # fmt: skip
        self._drop_target(seq, target)

    def _delete_targets(self, db: sqlite3.Connection, acks: Sequence[_Ack]) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            for ack in acks:
                db.execute(
                    "DELETE FROM targets WHERE seq = ? AND target = ?", (ack.seq, ack.target)
                )
                left = db.execute(
                    "SELECT 1 FROM targets WHERE seq = ? LIMIT 1", (ack.seq,)
                ).fetchone()
                if left is None:
                    db.execute("DELETE FROM entries WHERE seq = ?", (ack.seq,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _drop_target(self, seq: int, target: str) -> None:
        progress = self._progress.get(seq)
        if progress is None:
            return
        progress.pop(target, None)
        queue = self._queues.get(target)
        if queue is not None:
            queue.pop(seq, None)
        if not progress:
            self._remove(seq)
        self._notify()

    async def barrier(self) -> None:
        """Make every ack durable now and free the content files of finished entries."""
        async with self._lock:
            db = self._db()
            garbage, self._garbage = self._garbage, []

            def run() -> None:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._unlink_content(garbage)

            await trio.to_thread.run_sync(run)

    # --- the mirror ---------------------------------------------------------------------------

    def _add(self, entry: Entry, progress: dict[str, TargetProgress]) -> None:
        self._entries[entry.seq] = entry
        self._progress[entry.seq] = progress
        for target in progress:
            self._queues.setdefault(target, {})[entry.seq] = None
        self._by_key.setdefault(entry.key, []).append(entry.seq)
        if entry.op is Op.COPY and entry.src is not None:
            self._copy_sources[entry.src] = self._copy_sources.get(entry.src, 0) + 1
        if entry.op is Op.PUT:
            self._bytes += entry.size
        self._notify()

    def _remember_inline(self, seq: int, data: bytes) -> None:
        if self._inline_memory_bytes + len(data) <= _INLINE_MEMORY:
            self._inline_memory[seq] = data
            self._inline_memory_bytes += len(data)

    def _remove(self, seq: int) -> None:
        data = self._inline_memory.pop(seq, None)
        if data is not None:
            self._inline_memory_bytes -= len(data)
        entry = self._entries.pop(seq)
        del self._progress[seq]
        seqs = self._by_key[entry.key]
        seqs.remove(seq)
        if not seqs:
            del self._by_key[entry.key]
        if entry.op is Op.COPY and entry.src is not None:
            left = self._copy_sources.get(entry.src, 1) - 1
            if left:
                self._copy_sources[entry.src] = left
            else:
                self._copy_sources.pop(entry.src, None)
        if entry.op is Op.PUT:
            self._bytes -= entry.size
        if entry.content is not None:
            self._garbage.append(entry.content)
            if len(self._garbage) >= _GARBAGE_BARRIER:
                # Nothing fsync'd the acks lately (no appends): ask for a barrier soon.
                self._barrier_wanted = True

    def take_barrier_request(self) -> bool:
        """True once after many finished content files piled up (the replayer then calls
        :meth:`barrier`)."""
        wanted, self._barrier_wanted = self._barrier_wanted, False
        return wanted

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Return after the next append, ack or quarantine."""
        await self._changed.wait()

    # --- queries (in memory, no I/O) -------------------------------------------------------------

    def pending(self, target: str) -> Iterator[Entry]:
        """Entries ``target`` has yet to apply, in seq order. A live view: consume it without
        awaiting in between (the replayer's dispatch is synchronous), or copy it first."""
        for seq in self._queues.get(target, ()):
            yield self._entries[seq]

    def pending_targets(self, seq: int) -> frozenset[str]:
        return frozenset(self._progress.get(seq, ()))

    def is_pending(self, seq: int, target: str) -> bool:
        return target in self._progress.get(seq, ())

    def progress(self, seq: int, target: str) -> TargetProgress | None:
        return self._progress.get(seq, {}).get(target)

    def entry(self, seq: int) -> Entry | None:
        return self._entries.get(seq)

    def entries_of(self, key: str) -> list[Entry]:
        """The pending entries that change ``key``, oldest first."""
        return [self._entries[seq] for seq in self._by_key.get(key, ())]

    def read_by_copy(self, key: str) -> bool:
        """A pending COPY reads ``key`` from the stores."""
        return bool(self._copy_sources.get(key))

    def latest(self, key: str) -> Entry | None:
        """The newest pending entry that changes ``key`` (PUT, DELETE or COPY to it)."""
        seqs = self._by_key.get(key)
        return self._entries[seqs[-1]] if seqs else None

    def superseded_by(self, newer: Entry) -> list[Entry]:
        """Pending entries that ``newer`` (a PUT or DELETE) makes pointless to apply: the
        earlier PUTs and DELETEs of its key, back to the nearest COPY to that key. None while
        a pending COPY reads the key, since it must see the key's older states."""
        if newer.op is Op.COPY or self._copy_sources.get(newer.key):
            return []
        found: list[Entry] = []
        for seq in reversed(self._by_key.get(newer.key, ())):
            if seq >= newer.seq:
                continue
            older = self._entries[seq]
            if older.op is Op.COPY:
                break
            found.append(older)
        return found

    def latest_before(self, key: str, seq: int) -> Entry | None:
        """The newest pending entry that changes ``key`` and is older than ``seq``."""
        seqs = self._by_key.get(key, ())
        index = bisect.bisect_left(seqs, seq)
        return self._entries[seqs[index - 1]] if index > 0 else None

    def resolve(self, key: str, entry: Entry | None, target: str) -> str | Entry | None:
        """The journal overlay for a read of ``key`` through ``target``: where the content
        ``key`` has now is — a key on that target, a pending PUT (its content is here), or
        None (deleted).

        ``entry`` is the newest pending entry of ``key`` (:meth:`latest`, read once by the
        caller so every target is judged against the same state). A pending COPY's content is
        its source's as of the copy: on a target that has not applied the copy yet, that is
        the source key there (later changes to the source wait for the copy) — unless an older
        entry of the source is pending on that target too, which is then followed instead.
        """
        while entry is not None:
            if entry.op is Op.PUT:
                return entry
            if entry.op is Op.DELETE:
                return None
            if not self.is_pending(entry.seq, target):
                return entry.key
            assert entry.src is not None
            key = entry.src
            entry = self.latest_before(key, entry.seq)
            if entry is not None and not self.is_pending(entry.seq, target):
                return key
        return key

    def latest_under(self, prefix: str) -> dict[str, Entry]:
        """Newest pending entry per key starting with ``prefix``."""
        return {
            key: self._entries[seqs[-1]]
            for key, seqs in self._by_key.items()
            if key.startswith(prefix)
        }

    def __len__(self) -> int:
        return len(self._entries)

    def drained(self, targets: Sequence[str] | None = None) -> bool:
        """True when none of ``targets`` (default: the configured ones) has work left."""
        chosen = self.targets if targets is None else targets
        return not any(self._queues.get(t) for t in chosen)

    def stats(self) -> JournalStats:
        now = time.time()
        per_target: dict[str, TargetBacklog] = {}
        for target, queue in self._queues.items():
            entries = [self._entries[s] for s in queue if s in self._entries]
            per_target[target] = TargetBacklog(
                pending_ops=len(entries),
                pending_bytes=sum(e.size for e in entries if e.op is Op.PUT),
                oldest_age=round(now - entries[0].created, 3) if entries else None,
                configured=target in self.targets,
            )
        oldest = next(iter(self._entries.values()), None)
        return JournalStats(
            pending_entries=len(self._entries),
            pending_bytes=self._bytes,
            max_bytes=self.max_bytes,
            oldest_age=round(now - oldest.created, 3) if oldest else None,
            quarantined=self.quarantined,
            recovered_orphans=self.recovered_orphans,
            targets=per_target,
        )

    # --- content access ------------------------------------------------------------------------

    def content_path(self, entry: Entry) -> Path | None:
        return None if entry.content is None else self.content_dir / entry.content

    async def read_content(self, entry: Entry, offset: int, length: int) -> bytes:
        """Bytes of a pending PUT; ContentGone if it was finished meanwhile."""
        if entry.inline:
            data = await self._locked_inline(entry)
            return data[offset : offset + length]
        path = self.content_path(entry)
        assert path is not None

        def read() -> bytes:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    return f.read(length)
            except FileNotFoundError:
                raise ContentGone(entry.key) from None

        return await trio.to_thread.run_sync(read)

    async def copy_content(self, entry: Entry, dest: str | os.PathLike[str]) -> None:
        """The whole content of a pending PUT into the file ``dest``."""
        if entry.inline:
            data = await self._locked_inline(entry)
            await trio.to_thread.run_sync(Path(dest).write_bytes, data)
            return
        path = self.content_path(entry)
        assert path is not None

        def copy() -> None:
            try:
                shutil.copyfile(path, dest)
            except FileNotFoundError:
                raise ContentGone(entry.key) from None

        await trio.to_thread.run_sync(copy)

    async def verified_bytes(self, entry: Entry) -> bytes:
        """The inline content of ``entry``, checked against its checksum (ContentCorrupt)."""
        data = await self._locked_inline(entry)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ContentCorrupt(f"inline content of entry {entry.seq} fails its checksum")
        return data

    async def verify_file(self, entry: Entry) -> Path:
        """The content file of ``entry`` after checking size and checksum (ContentCorrupt)."""
        path = self.content_path(entry)
        assert path is not None

        def check() -> None:
            try:
                size, digest = sha256_file(path)
            except FileNotFoundError:
                raise ContentCorrupt(f"content file of entry {entry.seq} is missing") from None
            if size != entry.size or digest != entry.sha256:
                raise ContentCorrupt(f"content file of entry {entry.seq} fails its checksum")

        await trio.to_thread.run_sync(check)
        return path

    async def _locked_inline(self, entry: Entry) -> bytes:
        data = self._inline_memory.get(entry.seq)
        if data is not None:
            await trio.lowlevel.checkpoint()
            return data
        async with self._lock:
            return await trio.to_thread.run_sync(self._inline_bytes, entry)

    def _inline_bytes(self, entry: Entry) -> bytes:
        data = self._inline_memory.get(entry.seq)
        if data is not None:
            return data
        row = (
            self._db().execute("SELECT inline FROM entries WHERE seq = ?", (entry.seq,)).fetchone()
        )
        if row is None or row[0] is None:
            raise ContentGone(entry.key)
        return bytes(row[0])

    def _unlink_content(self, names: Sequence[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.content_dir / name).unlink()

    def _describe(self, entry: Entry, target: str, progress: TargetProgress) -> dict[str, Any]:
        return {
            "seq": entry.seq,
            "op": entry.op.value,
            "key": entry.key,
            "src": entry.src,
            "metadata": dict(entry.metadata) if entry.metadata is not None else None,
            "size": entry.size,
            "sha256": entry.sha256,
            "created": entry.created,
            "target": target,
            "attempts": progress.attempts,
            "last_error": progress.last_error,
        }

    def _write_quarantine(self, stem: str, desc: dict[str, Any], reason: str, entry: Entry) -> Path:
        if entry.op is Op.PUT:
            data_path = self.quarantine_dir / f"{stem}.data"
            if entry.content is not None:
                with contextlib.suppress(FileExistsError, FileNotFoundError):
                    os.link(self.content_dir / entry.content, data_path)
            else:
                with contextlib.suppress(ContentGone):
                    data_path.write_bytes(self._inline_bytes(entry))
        return write_quarantine_json(self.quarantine_dir, stem, desc, reason)
