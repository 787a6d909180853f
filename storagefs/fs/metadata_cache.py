"""Object user metadata remembered on local disk, keyed by key and checked against the object's
etag and last-modified time.

Object listings carry size, etag and last-modified but not user metadata, and fetching it
costs one HEAD per object — which is what makes ``ls -l`` slow on s3fs. We remember the
metadata of every object this machine wrote or stat'ed, so a listing can show the right mode,
owner and mtime without a request, also after a remount. It is a cache: losing it costs
requests, never correctness of data.

The etag alone does not tell a stale entry: S3's etag is the MD5 of the content, so a chmod
made elsewhere (a copy of the object onto itself with new metadata) keeps it, and every empty
object has the same one. The object's last-modified time does move, so an entry also records
the newest last-modified it is known to describe (``stamp``, whole seconds) and a listing that
shows a later time is a miss: the caller HEADs the object and remembers what it finds. When
this mount wrote the object it only has its own clock's time of the write, so an entry
answers for times up to :data:`CLOCK_SLACK` later, and takes the store's time once a listing
shows it (from then on the check is exact). What that leaves: a metadata-only change made
elsewhere within :data:`CLOCK_SLACK` of the version remembered here is not seen until the
object changes again. Directory markers are remembered under the fixed etag ``"dir"`` with no
time (a listing of prefixes shows none).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path

from storagefs.backends.base import NS

# How far the store's clock may be ahead of ours, as seen in a written object's last-modified
# time. A clock further off only costs one HEAD per object this mount wrote.
CLOCK_SLACK = 2


def _seconds(mtime_ns: int | None) -> int | None:
    # Stamps stay whole seconds (the stores' listings have no finer times, and an old cache
    # file needs no migration); floor division of the exact nanoseconds, as floor() was.
    return None if mtime_ns is None else mtime_ns // NS


class MetadataCache:
    def __init__(self, path: Path | None) -> None:
        # Synchronous calls from the trio thread: every statement is a local, fsync-free B-tree
        # lookup (tens of microseconds), cheaper than a hop to a worker thread.
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        # stamp: the newest last-modified time (whole seconds) the entry describes; local: 1
        # when that is this machine's time of a write plus CLOCK_SLACK, not the store's.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, etag TEXT, meta TEXT,"
            " stamp INTEGER, local INTEGER NOT NULL DEFAULT 0)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(meta)")}
        if "stamp" not in columns:
            # A cache from before the time check: its entries have no stamp (NULL) and take
            # the time of the first listing that shows them.
            self._db.execute("ALTER TABLE meta ADD COLUMN stamp INTEGER")
            self._db.execute("ALTER TABLE meta ADD COLUMN local INTEGER NOT NULL DEFAULT 0")
            self._db.commit()

    def close(self) -> None:
        self._db.close()

    def get(self, key: str, etag: str | None, mtime: int | None) -> dict[str, str] | None:
        """The metadata of ``key`` if it is remembered for this etag and a last-modified time
        of ``mtime`` (nanoseconds; None: any time, for directory markers)."""
        if etag is None:
            return None
        return self.get_many([(key, etag, mtime)]).get(key)

    def get_many(
        self, objects: Iterable[tuple[str, str | None, int | None]]
    ) -> dict[str, dict[str, str]]:
        """What :meth:`get` answers for each (key, etag, mtime), in one query per 500 keys."""
        wanted = {k: (e, _seconds(m)) for k, e, m in objects if e is not None}
        found: dict[str, dict[str, str]] = {}
        adopted: list[tuple[int, str]] = []
        keys = list(wanted)
        for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for key, etag, stamp, local, meta in self._db.execute(
                f"SELECT key, etag, stamp, local, meta FROM meta WHERE key IN ({marks})", chunk
            ):
                want_etag, seen = wanted[key]
                if etag != want_etag:
                    continue
                if seen is not None and stamp is not None and seen > stamp:
                    continue  # modified since: a change elsewhere that kept the content
                found[key] = json.loads(meta)
                if seen is not None and (stamp is None or local):
                    adopted.append((seen, key))  # the store's own time from now on
        if adopted:
            self._db.executemany("UPDATE meta SET stamp = ?, local = 0 WHERE key = ?", adopted)
            self._db.commit()
        return found

    def put(
        self,
        key: str,
        etag: str | None,
        metadata: Mapping[str, str],
        mtime: int | None,
        *,
        local_time: bool = False,
    ) -> None:
        """Remember ``metadata`` for this etag and last-modified ``mtime``: the store's, or
        (``local_time``) this machine's time of a write it made, answered with slack."""
        if etag is None:
            return
        stamp = _seconds(mtime)
        local = stamp is not None and local_time
        if stamp is not None and local:
            stamp += CLOCK_SLACK
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, etag, stamp, local, meta) VALUES (?, ?, ?, ?, ?)",
            (key, etag, stamp, int(local), json.dumps(dict(metadata))),
        )
        self._db.commit()

    def forget(self, key: str) -> None:
        self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        self._db.commit()
