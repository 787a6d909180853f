"""Clean whole-object copies on local disk: the last link of the fallback chain.

When no remote answers, the chain serves these (stale but available). The cache never holds
data that exists nowhere else — unsynced writes live in the journal — so anything in it may be
evicted or lost at any time; losing it costs availability, never data.

Layout under ``directory``: ``index.db`` (SQLite: key -> file, size, etag, metadata, times) and
``objects/xx/<random>`` files. A stored object is written under a fresh name and the index row
switched to it, so a reader holding the old name reads the old bytes or finds it gone (a miss),
never a mixture. Eviction is least-recently-used, done on insert, down to ``max_bytes``. Access
times are kept in memory and written back on close (an unclean stop only blurs the LRU order).

Concurrency: the index is changed only under one ``trio.Lock`` and the SQLite connection is
used by one worker thread at a time under it; the in-memory index (an ordered dict in LRU order)
answers lookups without I/O.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import trio

from storagefs.backends.base import ListPage, ObjectInfo, seconds_to_ns

log = logging.getLogger("storagefs.cache")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT,
    metadata TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL,
    stored REAL NOT NULL,
    accessed REAL NOT NULL
)
"""


def _migrate(db: sqlite3.Connection) -> None:
    """An index from before integer times has ``mtime REAL`` (seconds): its rows get their
    time in nanoseconds, in place, so the cached copies survive the upgrade. The rows are as
    many as the cache holds objects; the float they had is converted exactly (its own error
    stays, nothing is added). REAL cannot hold nanoseconds: 2**53 ns is only 104 days."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(objects)")}
    if "mtime_ns" in columns:
        return
    db.execute("BEGIN")
    db.execute("ALTER TABLE objects ADD COLUMN mtime_ns INTEGER NOT NULL DEFAULT 0")
    rows = db.execute("SELECT key, mtime FROM objects").fetchall()
    db.executemany(
        "UPDATE objects SET mtime_ns = ? WHERE key = ?",
        [(seconds_to_ns(m) if isinstance(m, int | float) else 0, k) for k, m in rows],
    )
    db.execute("ALTER TABLE objects DROP COLUMN mtime")
    db.execute("COMMIT")


@dataclasses.dataclass(slots=True)
class CachedObject:
    key: str
    file: str  # relative to objects/
    size: int
    etag: str | None
    metadata: dict[str, str]
    mtime_ns: int  # the store's last-modified time
    stored: float
    accessed: float

    def info(self, *, with_metadata: bool = True) -> ObjectInfo:
        return ObjectInfo(
            key=self.key,
            size=self.size,
            mtime_ns=self.mtime_ns,
            etag=self.etag,
            metadata=dict(self.metadata) if with_metadata else None,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class CacheStats:
    """One reading of the cache's figures (for health)."""

    enabled: bool
    objects: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int
    stores: int


class Cache:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.objects_dir = directory / "objects"
        self._db_path = directory / "index.db"
        self._conn: sqlite3.Connection | None = None
        self._lock = trio.Lock()
        self._index: OrderedDict[str, CachedObject] = OrderedDict()  # LRU first
        self._touched: set[str] = set()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.stores = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    # --- open / close ------------------------------------------------------------------------

    async def open(self) -> None:
        if not self.enabled or self._conn is not None:
            return
        async with self._lock:
            entries = await trio.to_thread.run_sync(self._load)
        for obj in sorted(entries, key=lambda o: o.accessed):
            self._index[obj.key] = obj
            self.bytes += obj.size
        if self.bytes > self.max_bytes:  # the limit was lowered since last time
            async with self._lock:
                await self._evict(0)

    async def close(self) -> None:
        if self._conn is None:
            return
        async with self._lock:
            conn, self._conn = self._conn, None
            assert conn is not None
            touched = [(self._index[k].accessed, k) for k in self._touched if k in self._index]
            self._touched.clear()

            def finish() -> None:
                with contextlib.suppress(sqlite3.Error):
                    conn.executemany("UPDATE objects SET accessed = ? WHERE key = ?", touched)
                conn.close()

            await trio.to_thread.run_sync(finish)

    def _load(self) -> list[CachedObject]:
        for d in (self.directory, self.objects_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._conn = self._connect()
        except sqlite3.DatabaseError as exc:
            log.warning(
                "cache index %s unreadable (%s): starting an empty cache", self._db_path, exc
            )
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{self._db_path}{suffix}").unlink()
            self._conn = self._connect()
        good: list[CachedObject] = []
        bad: list[str] = []
        for row in self._conn.execute(
            "SELECT key, file, size, etag, metadata, mtime_ns, stored, accessed FROM objects"
        ):
            try:
                obj = CachedObject(
                    row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], row[6], row[7]
                )
                ok = (self.objects_dir / obj.file).stat().st_size == obj.size
            except (OSError, ValueError, TypeError):
                ok = False
            if ok:
                good.append(obj)
            else:
                bad.append(row[0])
        self._conn.executemany("DELETE FROM objects WHERE key = ?", [(k,) for k in bad])
        known = {o.file for o in good}
        for sub in self.objects_dir.iterdir():
            for path in sub.iterdir() if sub.is_dir() else [sub]:
                if path.relative_to(self.objects_dir).as_posix() not in known:
                    path.unlink()  # a store interrupted before its index row, or a dropped one
        return good

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._db_path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # A cache: losing the newest rows on power loss is fine, corrupting is not (WAL).
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            _migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    # --- lookups -----

    def get(self, key: str) -> CachedObject | None:
        obj = self._index.get(key)
        if obj is not None:
            obj.accessed = time.time()
            self._index.move_to_end(key)
            self._touched.add(key)
        return obj

    def info(self, key: str) -> ObjectInfo | None:
        obj = self.get(key)
        return obj.info() if obj is not None else None

    async def read(self, key: str, offset: int, length: int) -> bytes | None:
        """Bytes of the cached copy; None when not cached."""
        obj = self.get(key)
        if obj is None:
            self.misses += 1
            await trio.lowlevel.checkpoint()
            return None
        path = self.objects_dir / obj.file

        def read() -> bytes | None:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    return f.read(length)
            except FileNotFoundError:
                return None

        data = await trio.to_thread.run_sync(read)
        self._count(data is not None)
        return data

    async def download(self, key: str, dest: str) -> ObjectInfo | None:
        """The cached copy into ``dest``; None when not cached."""
        obj = self.get(key)
        if obj is None:
            self.misses += 1
            await trio.lowlevel.checkpoint()
            return None
        path = self.objects_dir / obj.file

        def copy() -> bool:
            try:
                shutil.copyfile(path, dest)
            except FileNotFoundError:
                return False
            return True

        found = await trio.to_thread.run_sync(copy)
        self._count(found)
        return obj.info() if found else None

    def _count(self, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1

    def listing(self, prefix: str, delimiter: str | None = "/") -> ListPage:
        """Everything cached under ``prefix``, as one page (the contract's shape and order)."""
        objects: dict[str, ObjectInfo] = {}
        prefixes: set[str] = set()
        for key, obj in self._index.items():
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest[: rest.index(delimiter) + 1])
            else:
                objects[key] = obj.info(with_metadata=False)
        return ListPage(
            objects=[objects[k] for k in sorted(objects, key=lambda k: k.encode())],
            prefixes=sorted(prefixes, key=lambda p: p.encode()),
            token=None,
        )

    # --- storing -----

    async def store_file(
        self,
        key: str,
        source: str | os.PathLike[str],
        info: ObjectInfo,
        *,
        link: bool = True,
    ) -> None:
        """Keep a copy of the local file ``source``: a hard link when ``link`` and possible
        (pass only files nobody will modify, such as journal content), else a real copy."""
        if not self.enabled or info.size > self.max_bytes:
            await trio.lowlevel.checkpoint()
            return
        name = self._new_name()
        dest = self.objects_dir / name

        def place() -> int:
            dest.parent.mkdir(exist_ok=True, mode=0o700)
            linked = False
            if link:
                with contextlib.suppress(OSError):  # another file system: copy instead
                    os.link(source, dest)
                    linked = True
            if not linked:
                shutil.copyfile(source, dest)
            return dest.stat().st_size

        size = await trio.to_thread.run_sync(place)
        await self._register(key, name, size, info)

    async def store_copy(self, key: str, source: str | os.PathLike[str], info: ObjectInfo) -> None:
        """Keep a copy of ``source``, a file its owner may change later (never linked)."""
        await self.store_file(key, source, info, link=False)

    async def store_bytes(self, key: str, data: bytes, info: ObjectInfo) -> None:
        if not self.enabled or len(data) > self.max_bytes:
            await trio.lowlevel.checkpoint()
            return
        name = self._new_name()
        dest = self.objects_dir / name

        def place() -> None:
            dest.parent.mkdir(exist_ok=True, mode=0o700)
            dest.write_bytes(data)

        # Small and in memory: written in the same worker-thread call as its index row (one
        # hop instead of two; cp -r and cold reads of small files store one per file).
        await self._register(key, name, len(data), info, place=place)

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None) -> None:
        """Mirror a server-side copy when ``src`` is cached."""
        obj = self._index.get(src)
        if obj is None or not self.enabled:
            await trio.lowlevel.checkpoint()
            return
        info = dataclasses.replace(
            obj.info(),
            key=dst,
            metadata=dict(metadata) if metadata is not None else dict(obj.metadata),
        )
        try:
            await self.store_file(dst, self.objects_dir / obj.file, info)
        except FileNotFoundError:
            pass  # evicted meanwhile

    async def discard(self, key: str) -> None:
        if key not in self._index:
            await trio.lowlevel.checkpoint()
            return
        async with self._lock:
            obj = self._index.pop(key, None)
            if obj is None:
                return
            self.bytes -= obj.size
            await trio.to_thread.run_sync(self._drop_rows, [obj])

    def _new_name(self) -> str:
        token = secrets.token_hex(16)
        return f"{token[:2]}/{token}"

    async def _register(
        self,
        key: str,
        name: str,
        size: int,
        info: ObjectInfo,
        place: Callable[[], None] | None = None,
    ) -> None:
        """Index the object file ``name`` (written first by ``place``, in the same worker
        thread call, when given)."""
        now = time.time()
        obj = CachedObject(
            key=key,
            file=name,
            size=size,
            etag=info.etag,
            metadata=dict(info.metadata or {}),
            mtime_ns=info.mtime_ns,
            stored=now,
            accessed=now,
        )
        async with self._lock:
            if self._conn is None:  # closed meanwhile
                await trio.to_thread.run_sync(self._unlink, [name])
                return
            old = self._index.pop(key, None)
            if old is not None:
                self.bytes -= old.size
            victims = self._pick_victims(size)
            conn = self._conn

            def write() -> None:
                if place is not None:
                    place()
                conn.execute("BEGIN")
                conn.executemany("DELETE FROM objects WHERE key = ?", [(v.key,) for v in victims])
                conn.execute(
                    "INSERT OR REPLACE INTO objects (key, file, size, etag, metadata, mtime_ns,"
                    " stored, accessed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, name, size, obj.etag, json.dumps(obj.metadata), obj.mtime_ns, now, now),
                )
                conn.execute("COMMIT")
                self._unlink([v.file for v in victims] + ([old.file] if old else []))

            try:
                await trio.to_thread.run_sync(write)
            except BaseException:
                if old is not None:  # the index still names the old file
                    self._index[key] = old
                    self.bytes += old.size
                for v in victims:
                    self._index[v.key] = v
                    self.bytes += v.size
                await trio.to_thread.run_sync(self._unlink, [name])
                raise
            self._index[key] = obj
            self.bytes += size
            self.stores += 1
            self.evictions += len(victims)

    def _pick_victims(self, incoming: int) -> list[CachedObject]:
        """Least recently used objects to drop so ``incoming`` more bytes fit (removed from
        the in-memory index already)."""
        victims: list[CachedObject] = []
        while self._index and self.bytes + incoming > self.max_bytes:
            _, obj = self._index.popitem(last=False)
            self.bytes -= obj.size
            victims.append(obj)
        return victims

    async def _evict(self, incoming: int) -> None:
        victims = self._pick_victims(incoming)
        if victims:
            await trio.to_thread.run_sync(self._drop_rows, victims)
            self.evictions += len(victims)

    def _drop_rows(self, objs: list[CachedObject]) -> None:
        if self._conn is not None:
            self._conn.executemany("DELETE FROM objects WHERE key = ?", [(o.key,) for o in objs])
        self._unlink([o.file for o in objs])

    def _unlink(self, names: list[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.objects_dir / name).unlink()

    def stats(self) -> CacheStats:
        return CacheStats(
            enabled=self.enabled,
            objects=len(self._index),
            bytes=self.bytes,
            max_bytes=self.max_bytes,
            hits=self.hits,
            misses=self.misses,
            evictions=self.evictions,
            stores=self.stores,
        )
