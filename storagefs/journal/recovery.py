"""The journal's on-disk format, and opening it after a crash.

What recovery decides, and why:

* A content file no index row names was written by an append that never committed, so it was
  never acknowledged: deleted.
* A row whose every target has applied it lost only its own delete: deleted (with its file).
* A row that does not decode, or whose content is missing or fails its checksum, cannot be
  replayed faithfully: moved to ``quarantine/`` (a JSON describing it and why, plus whatever
  content there is) with one ERROR line each. Never silently dropped, never a crash.
* An index SQLite cannot read: moved aside to ``quarantine/index-*`` together with every
  content file, with one ERROR line, and a fresh index started, so the mount still comes up.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("storagefs.journal")

_CHUNK = 1024 * 1024
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL,
    key TEXT NOT NULL,
    src TEXT,
    metadata TEXT,
    size INTEGER NOT NULL,
    sha256 TEXT,
    created REAL NOT NULL,
    inline BLOB,
    content TEXT
);
CREATE TABLE IF NOT EXISTS targets (
    seq INTEGER NOT NULL,
    target TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (seq, target)
) WITHOUT ROWID;
"""
ENTRY_COLUMNS = "seq, op, key, src, metadata, size, sha256, created, inline, content"


class Op(enum.StrEnum):
    PUT = "put"
    DELETE = "delete"
    COPY = "copy"


@dataclasses.dataclass(slots=True)
class TargetProgress:
    attempts: int = 0
    last_error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    """One decoded, checked index row."""

    seq: int
    op: Op
    key: str
    src: str | None
    metadata: Mapping[str, str] | None
    size: int
    sha256: str | None
    created: float
    inline: bytes | None
    content: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Layout:
    directory: Path

    @property
    def db(self) -> Path:
        return self.directory / "journal.db"

    @property
    def content(self) -> Path:
        return self.directory / "content"

    @property
    def quarantine(self) -> Path:
        return self.directory / "quarantine"


@dataclasses.dataclass(slots=True)
class Recovered:
    conn: sqlite3.Connection
    rows: list[Row]  # seq order
    progress: dict[int, dict[str, TargetProgress]]
    quarantined: int  # everything in quarantine/, from earlier runs too
    orphans: int  # content files of unacknowledged appends, removed


# --- small file helpers ---------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def meta_json(metadata: Mapping[str, str] | None) -> str | None:
    return None if metadata is None else json.dumps(dict(metadata), sort_keys=True)


def _decode_meta(text: str | None) -> dict[str, str] | None:
    if text is None:
        return None
    value = json.loads(text)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("metadata is not a string map")
    return value


def write_quarantine_json(quarantine: Path, stem: str, desc: dict[str, Any], reason: str) -> Path:
    path = quarantine / f"{stem}.json"
    with open(path, "w") as f:
        json.dump({**desc, "reason": reason, "quarantined_at": time.time()}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(quarantine)
    return path


def count_quarantined(quarantine: Path) -> int:
    return sum(1 for _ in quarantine.glob("*.json")) + sum(1 for _ in quarantine.glob("index-*"))


# --- the index ------------------------------------------------------------------------------


def connect(db_path: Path) -> sqlite3.Connection:
    """Open (or create) the index; sqlite3.DatabaseError if it is damaged."""
    db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        check = db.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise sqlite3.DatabaseError(f"quick_check: {check[0][0]}")
        db.executescript(_SCHEMA)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"unknown journal schema version {version}")
    except BaseException:
        db.close()
        raise
    return db


def decode(raw: tuple[Any, ...]) -> Row:
    seq, op, key, src, metadata, size, sha, created, inline, content = raw
    parsed = Op(op)
    if not isinstance(key, str) or not isinstance(size, int) or size < 0:
        raise ValueError("bad key or size")
    if not isinstance(created, float | int):
        raise ValueError("bad created time")
    meta = _decode_meta(metadata)
    if parsed is Op.PUT:
        if not isinstance(sha, str) or meta is None:
            raise ValueError("PUT without checksum or metadata")
        if (inline is None) == (content is None):
            raise ValueError("PUT needs exactly one of inline content or a content file")
    elif parsed is Op.COPY and not isinstance(src, str):
        raise ValueError("COPY without source")
    return Row(
        seq, parsed, key, src, meta, size, sha, float(created),
        bytes(inline) if inline is not None else None, content,
    )  # fmt: skip


def check_content(row: Row, content_dir: Path) -> str | None:
    """Why the row's content cannot be trusted, or None."""
    if row.op is not Op.PUT:
        return None
    if row.inline is not None:
        if len(row.inline) != row.size or hashlib.sha256(row.inline).hexdigest() != row.sha256:
            return "inline content fails its checksum"
        return None
    assert row.content is not None
    try:
        size, digest = sha256_file(content_dir / row.content)
    except FileNotFoundError:
        return "content file is missing"
    except OSError as exc:
        return f"content file unreadable ({exc.strerror})"
    if size != row.size or digest != row.sha256:
        return f"content file fails its checksum ({size} bytes, {row.size} expected)"
    return None


# --- recovery -------------------------------------------------------------------------------


def recover(layout: Layout) -> Recovered:
    """Open the journal in ``layout`` as the module docstring says (blocking: call it from a
    worker thread)."""
    for d in (layout.directory, layout.content, layout.quarantine):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    fsync_dir(layout.directory)  # so content/ itself survives a power cut after the 1st append
    db = _connect_or_quarantine(layout)
    progress: dict[int, dict[str, TargetProgress]] = {}
    for seq, target, attempts, last_error in db.execute(
        "SELECT seq, target, attempts, last_error FROM targets"
    ):
        progress.setdefault(seq, {})[target] = TargetProgress(attempts, last_error)
    good: list[Row] = []
    referenced: set[str] = set()
    for raw in db.execute(f"SELECT {ENTRY_COLUMNS} FROM entries ORDER BY seq").fetchall():
        seq, content = raw[0], raw[9] if isinstance(raw[9], str) else None
        if seq not in progress:
            # Every target applied it; the row's own delete was lost. Nothing to keep.
            db.execute("DELETE FROM entries WHERE seq = ?", (seq,))
            continue
        try:
            row = decode(raw)
        except (ValueError, TypeError) as exc:
            _quarantine_row(db, layout, raw, f"index row does not decode ({exc})", progress)
            continue
        problem = check_content(row, layout.content)
        if problem is not None:
            _quarantine_row(db, layout, raw, problem, progress)
            continue
        if content is not None:
            referenced.add(content)
        good.append(row)
    db.execute("DELETE FROM targets WHERE seq NOT IN (SELECT seq FROM entries)")
    orphans = 0
    for path in layout.content.iterdir():
        if path.name not in referenced:
            path.unlink()
            orphans += 1
    if orphans:
        log.info("journal: removed %d content files of unacknowledged appends", orphans)
    return Recovered(
        conn=db,
        rows=good,
        progress={row.seq: progress[row.seq] for row in good},
        quarantined=count_quarantined(layout.quarantine),
        orphans=orphans,
    )


def _connect_or_quarantine(layout: Layout) -> sqlite3.Connection:
    try:
        return connect(layout.db)
    except sqlite3.DatabaseError as exc:
        where = layout.quarantine / f"index-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        where.mkdir(mode=0o700)
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{layout.db}{suffix}")
            if path.exists():
                path.rename(where / path.name)
        content = where / "content"
        layout.content.rename(content)
        moved = sum(1 for _ in content.iterdir())
        layout.content.mkdir(mode=0o700)
        (where / "reason.json").write_text(
            json.dumps({"reason": f"journal index unreadable: {exc}"}, indent=2)
        )
        fsync_dir(layout.quarantine)
        fsync_dir(layout.directory)
        log.error(
            "journal index %s is unreadable (%s): moved it and %d content files to %s and"
            " started an empty journal; those writes were NOT replayed, recover them by hand",
            layout.db, exc, moved, where,
        )  # fmt: skip
        return connect(layout.db)


def _quarantine_row(
    db: sqlite3.Connection,
    layout: Layout,
    raw: tuple[Any, ...],
    reason: str,
    progress: dict[int, dict[str, TargetProgress]],
) -> None:
    seq = raw[0]
    names = ("seq", "op", "key", "src", "metadata", "size", "sha256", "created")
    desc: dict[str, Any] = {
        name: value if isinstance(value, str | int | float | None) else repr(value)
        for name, value in zip(names, raw[:8], strict=True)
    }
    desc["pending_targets"] = {t: dataclasses.asdict(p) for t, p in progress.pop(seq, {}).items()}
    stem = f"{seq}-recovery"
    inline = raw[8]
    content = raw[9] if isinstance(raw[9], str) else None
    if isinstance(inline, bytes):
        (layout.quarantine / f"{stem}.data").write_bytes(inline)
    if content is not None and (layout.content / content).exists():
        (layout.content / content).rename(layout.quarantine / f"{stem}.data")
    where = write_quarantine_json(layout.quarantine, stem, desc, reason)
    db.execute("BEGIN IMMEDIATE")
    db.execute("DELETE FROM targets WHERE seq = ?", (seq,))
    db.execute("DELETE FROM entries WHERE seq = ?", (seq,))
    db.execute("COMMIT")
    log.error(
        "journal entry %s (%s %r) quarantined at recovery: %s; kept in %s",
        seq, raw[1], raw[2], reason, where,
    )  # fmt: skip
