"""Object user metadata remembered on local disk, keyed by (key, etag).

Object listings carry size and last-modified but not user metadata, and fetching it costs one
HEAD per object — which is what makes ``ls -l`` slow on s3fs. We remember the metadata of every
object this machine wrote or stat'ed, so a listing can show the right mode, owner and mtime
without a request, also after a remount. The etag makes an entry stale as soon as the object
changes behind our back. It is a cache: losing it costs requests, never correctness of data.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path


class MetadataCache:
    def __init__(self, path: Path | None) -> None:
        # Synchronous calls from the trio thread: every statement is a local, fsync-free B-tree
        # lookup (tens of microseconds), cheaper than a hop to a worker thread.
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, etag TEXT, meta TEXT)"
        )

    def close(self) -> None:
        self._db.close()

    def get(self, key: str, etag: str | None) -> dict[str, str] | None:
        if etag is None:
            return None
        row = self._db.execute("SELECT etag, meta FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None or row[0] != etag:
            return None
        result: dict[str, str] = json.loads(row[1])
        return result

    def get_many(self, pairs: Iterable[tuple[str, str | None]]) -> dict[str, dict[str, str]]:
        wanted = {k: e for k, e in pairs if e is not None}
        found: dict[str, dict[str, str]] = {}
        keys = list(wanted)
        for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for key, etag, meta in self._db.execute(
                f"SELECT key, etag, meta FROM meta WHERE key IN ({marks})", chunk
            ):
                if wanted.get(key) == etag:
                    found[key] = json.loads(meta)
        return found

    def put(self, key: str, etag: str | None, metadata: Mapping[str, str]) -> None:
        if etag is None:
            return
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, etag, meta) VALUES (?, ?, ?)",
            (key, etag, json.dumps(dict(metadata))),
        )
        self._db.commit()

    def forget(self, key: str) -> None:
        self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        self._db.commit()
