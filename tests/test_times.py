"""Times in integer nanoseconds (issue #21): every conversion from what a store or an old file
gives is exact, so ``cp -p``, ``rsync -a`` and ``make`` see the times they compare."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from storagefs.backends.base import ObjectInfo, datetime_to_ns, seconds_to_ns
from storagefs.backends.local import LocalBackend
from storagefs.backends.s3 import _timestamp
from storagefs.chain.cache import Cache
from storagefs.download.state import Record
from storagefs.fs.attrs import Defaults, attrs_from_object, ns_to_text, text_to_ns
from storagefs.sync.compare import version_of

ODD = 1_700_000_000_123_456_789  # no float of seconds holds it (~240 ns apart in 2023)


def test_a_datetime_converts_exactly() -> None:
    when = datetime(2023, 11, 14, 22, 13, 20, 123457, tzinfo=UTC)
    assert datetime_to_ns(when) == 1_700_000_000_123_457_000
    assert int(when.timestamp() * 1e9) != 1_700_000_000_123_457_000  # what a float gave
    assert datetime_to_ns(when.replace(tzinfo=None)) == datetime_to_ns(when)  # naive: UTC
    elsewhere = when.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert datetime_to_ns(elsewhere) == datetime_to_ns(when)
    before = datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert datetime_to_ns(before) == -1000
    assert _timestamp(when) == 1_700_000_000_123_457_000  # S3's LastModified


def test_seconds_convert_to_the_nearest_nanosecond() -> None:
    assert seconds_to_ns(1.5) == 1_500_000_000
    assert seconds_to_ns(0.1) == 100_000_000  # Decimal(0.1) is 0.1000000000000000055...
    assert seconds_to_ns(1_700_000_000.25) == 1_700_000_000_250_000_000
    assert seconds_to_ns(-2.5) == -2_500_000_000


def test_the_metadata_text_round_trips_every_nanosecond() -> None:
    for ns in (ODD, 1, 0, -1, -ODD, 2**63 - 1):
        assert text_to_ns(ns_to_text(ns), before_1970=True) == ns
    assert text_to_ns("1700000000.123456789") == ODD
    assert text_to_ns("1700000000.1234567891") == ODD  # a tenth decimal is dropped, not rounded


def test_attributes_of_an_object_without_metadata_are_its_exact_store_time() -> None:
    attrs = attrs_from_object(ObjectInfo("k", 1, ODD), False, Defaults(uid=0, gid=0), {})
    assert attrs.mtime_ns == attrs.ctime_ns == attrs.atime_ns == ODD


async def test_the_local_backend_gives_st_mtime_ns(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    os.utime(tmp_path / "d" / "f", ns=(ODD - 5, ODD))
    backend = LocalBackend(tmp_path)
    await backend.open()
    assert (await backend.stat("d/f")).mtime_ns == ODD
    page = await backend.list("d/")
    assert [o.mtime_ns for o in page.objects if o.key == "d/f"] == [ODD]  # and "d/" itself
    await backend.close()


def test_the_sync_mark_keeps_its_text() -> None:
    """Marks written when the time was a float (``f"{mtime:.6f}"``) still match."""
    micro = 1_700_000_000_123_456_000
    assert version_of(ObjectInfo("k", 3, micro)) == f"3:mtime={micro / 1e9:.6f}"
    assert version_of(ObjectInfo("k", 3, micro)) == "3:mtime=1700000000.123456"


def test_a_download_record_from_before_integer_times_still_matches() -> None:
    old = {"path": "f", "etag": None, "size": 1, "modified": 1_700_000_000.123456, "mtime_ns": 5}
    record = Record.from_json(old)
    assert record is not None and record.modified_ns == 1_700_000_000_123_456_000
    new = Record.from_json(json.loads(json.dumps(Record("f", None, 1, ODD, 5).as_json())))
    assert new is not None and new.modified_ns == ODD


async def test_a_cache_index_with_float_times_is_migrated_in_place(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    (directory / "objects" / "ab").mkdir(parents=True)
    (directory / "objects" / "ab" / "abcd").write_bytes(b"kept")
    db = sqlite3.connect(directory / "index.db")
    db.execute(  # the schema before #21
        "CREATE TABLE objects (key TEXT PRIMARY KEY, file TEXT NOT NULL, size INTEGER NOT NULL,"
        " etag TEXT, metadata TEXT NOT NULL, mtime REAL NOT NULL, stored REAL NOT NULL,"
        " accessed REAL NOT NULL)"
    )
    db.execute("INSERT INTO objects VALUES ('k', 'ab/abcd', 4, 'e', '{}', 1700000000.25, 1.0, 2.0)")
    db.commit()
    db.close()
    cache = Cache(directory, 10_000)
    await cache.open()
    kept = cache.info("k")
    assert kept is not None and kept.mtime_ns == 1_700_000_000_250_000_000
    assert await cache.read("k", 0, 10) == b"kept"
    await cache.store_bytes("new", b"n", ObjectInfo("new", 1, ODD, "e2", {}))
    await cache.close()
    cache = Cache(directory, 10_000)
    await cache.open()  # and the migrated index opens again as it is
    new, old = cache.info("new"), cache.info("k")
    assert new is not None and new.mtime_ns == ODD
    assert old is not None and old.mtime_ns == 1_700_000_000_250_000_000
    await cache.close()
