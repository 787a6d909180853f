"""Remembered object metadata (storagefs/fs/metadata_cache.py) must not outlive a change made
elsewhere: S3 keeps an object's etag (the MD5 of its content) when another mount chmods it,
so the entry is also checked against the object's last-modified time."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import trio

from storagefs.fs.attrs import META_MODE
from storagefs.fs.inodes import ROOT_INODE
from storagefs.fs.metadata_cache import CLOCK_SLACK, MetadataCache
from tests.core.conftest import make_fs, resolve, write_file
from tests.fakes import MemoryBackend

S = 1_000_000_000  # the cache takes nanoseconds
T = 1_700_000_000 * S


def test_an_entry_answers_for_its_etag_and_no_later_time(tmp_path: Path) -> None:
    cache = MetadataCache(tmp_path / "m.db")
    cache.put("k", "e1", {"mode": "1"}, T + 7 * S // 10)  # what a HEAD said: the store's time
    assert cache.get("k", "e1", T) == {"mode": "1"}  # a listing in whole seconds
    assert cache.get("k", "e1", T + 9 * S // 10) == {"mode": "1"}
    assert cache.get("k", "e1", T + 1 * S) is None  # modified since, the content unchanged
    assert cache.get("k", "e2", T) is None
    assert cache.get("k", None, T) is None


def test_a_write_of_this_mount_is_answered_with_slack_then_by_the_stores_time(
    tmp_path: Path,
) -> None:
    """Our own write only has our clock's time: a store time a little later is the same
    version (clocks differ), and once a listing showed it, that time is the entry's."""
    cache = MetadataCache(tmp_path / "m.db")
    cache.put("k", "e", {"mode": "1"}, T, local_time=True)
    assert cache.get("k", "e", T + (CLOCK_SLACK + 1) * S) is None  # beyond the slack: a miss
    assert cache.get("k", "e", T + 1 * S) == {"mode": "1"}  # within: the store's time, adopted
    assert cache.get("k", "e", T + 2 * S) is None  # later than the adopted time: changed since
    reopened = MetadataCache(tmp_path / "m.db")  # adopted on disk, not just in memory
    assert reopened.get("k", "e", T + 2 * S) is None
    assert reopened.get("k", "e", T + 1 * S) == {"mode": "1"}


def test_a_cache_from_before_the_time_check_is_kept_and_learns_the_time(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "old.db")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, etag TEXT, meta TEXT)")
    db.execute("""INSERT INTO meta VALUES ('k', 'e', '{"mode": "1"}')""")
    db.commit()
    db.close()
    cache = MetadataCache(tmp_path / "old.db")
    assert cache.get("k", "e", T) == {"mode": "1"}  # no HEAD storm after an upgrade
    assert cache.get("k", "e", T + 5 * S) is None  # and from then on the time counts
    assert cache.get("k", "e", None) == {"mode": "1"}  # directory markers carry no time


async def test_a_chmod_made_elsewhere_is_seen_though_the_etag_is_the_same(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    here = make_fs(backend, tmp_path, ttl=0.0)  # every lookup and listing asks the store
    here.attach(nursery)
    await write_file(here, "f", b"data", mode=0o644)
    dh = await here.opendir(ROOT_INODE)
    (entry,) = here.readdir(dh, 0)
    assert stat.S_IMODE(entry.node.attrs.mode) == 0o644
    # Another mount chmods it a minute later: a copy onto itself, new metadata, same bytes.
    data, meta, mtime = backend.objects["f"]
    etag = backend._info("f").etag
    backend.objects["f"] = (data, {**meta, META_MODE: str(0o100755)}, mtime + 60 * S)
    assert backend._info("f").etag == etag
    node = await here.getattr(await resolve(here, "f"))
    assert stat.S_IMODE(node.attrs.mode) == 0o755
    dh = await here.opendir(ROOT_INODE)
    (entry,) = here.readdir(dh, 0)
    assert stat.S_IMODE(entry.node.attrs.mode) == 0o755


async def test_a_listing_of_files_this_mount_wrote_costs_no_request_per_file(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The time check must not cost what the cache saves: a remount lists what it wrote
    with the remembered metadata and no HEAD."""
    first = make_fs(backend, tmp_path)
    first.attach(nursery)
    for i in range(5):
        await write_file(first, f"f{i}", b"x" * i, mode=0o600)
    again = make_fs(backend, tmp_path)  # the same metadata cache file, as after a remount
    again.attach(nursery)
    backend.calls.clear()
    dh = await again.opendir(ROOT_INODE)
    entries = again.readdir(dh, 0)
    assert [stat.S_IMODE(e.node.attrs.mode) for e in entries] == [0o600] * 5
    assert [op for op, _ in backend.calls] == ["list"]
