"""The local cache of clean copies: lookups, LRU eviction, persistence, and a damaged index."""

from __future__ import annotations

from pathlib import Path

from storagefs.backends.base import ObjectInfo
from storagefs.chain.cache import Cache

META = {"mode": "33188"}


def info(key: str, size: int, etag: str = "e") -> ObjectInfo:
    return ObjectInfo(key=key, size=size, mtime_ns=1_700_000_000 * 10**9, etag=etag, metadata=META)


async def opened(directory: Path, max_bytes: int = 10_000) -> Cache:
    cache = Cache(directory, max_bytes)
    await cache.open()
    return cache


async def test_store_and_serve(tmp_path: Path) -> None:
    cache = await opened(tmp_path / "c")
    await cache.store_bytes("a", b"hello world", info("a", 11))
    src = tmp_path / "src"
    src.write_bytes(b"from a file")
    await cache.store_copy("b", src, info("b", 11))
    src.write_bytes(b"changed later")  # a copy, not a link: the cache keeps what it was given

    assert await cache.read("a", 6, 100) == b"world"
    assert await cache.read("b", 0, 100) == b"from a file"
    assert await cache.read("missing", 0, 1) is None
    stat = cache.info("a")
    assert stat is not None and stat.size == 11 and stat.metadata == META and stat.etag == "e"
    dest = tmp_path / "dest"
    got = await cache.download("b", str(dest))
    assert got is not None and dest.read_bytes() == b"from a file"
    page = cache.listing("")
    assert [o.key for o in page.objects] == ["a", "b"] and page.token is None
    assert cache.stats().hits == 3 and cache.stats().misses == 1

    await cache.copy("a", "d/c", {"mode": "1"})
    assert await cache.read("d/c", 0, 5) == b"hello"
    assert cache.listing("").prefixes == ["d/"]
    await cache.discard("a")
    assert cache.info("a") is None and await cache.read("d/c", 0, 5) == b"hello"
    await cache.close()


async def test_replacing_an_object(tmp_path: Path) -> None:
    cache = await opened(tmp_path / "c")
    await cache.store_bytes("a", b"one", info("a", 3, "1"))
    await cache.store_bytes("a", b"second", info("a", 6, "2"))
    assert await cache.read("a", 0, 100) == b"second"
    assert cache.stats().bytes == 6 and cache.stats().objects == 1
    files = [p for p in (tmp_path / "c" / "objects").rglob("*") if p.is_file()]
    assert len(files) == 1  # the old copy is gone
    await cache.close()


async def test_least_recently_used_goes_first(tmp_path: Path) -> None:
    cache = await opened(tmp_path / "c", max_bytes=3000)
    for key in ("a", "b", "c"):
        await cache.store_bytes(key, bytes(1000), info(key, 1000))
    assert await cache.read("a", 0, 1) is not None  # a is now more recent than b
    await cache.store_bytes("d", bytes(1000), info("d", 1000))
    assert cache.info("b") is None
    assert {o.key for o in cache.listing("").objects} == {"a", "c", "d"}
    assert cache.stats().evictions == 1 and cache.stats().bytes == 3000

    await cache.store_bytes("huge", bytes(5000), info("huge", 5000))  # larger than the cache
    assert cache.info("huge") is None and cache.stats().objects == 3
    await cache.close()


async def test_survives_a_restart_and_drops_damage(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    cache = await opened(directory)
    await cache.store_bytes("kept", b"kept", info("kept", 4))
    await cache.store_bytes("lost", b"lost", info("lost", 4))
    await cache.store_bytes("short", b"short", info("short", 5))
    obj_lost, obj_short = cache.get("lost"), cache.get("short")
    await cache.close()
    assert obj_lost is not None and obj_short is not None
    (directory / "objects" / obj_lost.file).unlink()
    (directory / "objects" / obj_short.file).write_bytes(b"sh")
    stray = directory / "objects" / "zz" / "stray"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"left by an interrupted store")

    cache = await opened(directory)
    assert await cache.read("kept", 0, 10) == b"kept"
    assert cache.info("lost") is None and cache.info("short") is None
    assert not stray.exists()
    await cache.close()

    (directory / "index.db").write_bytes(b"garbage" * 100)
    cache = await opened(directory)  # a cache: start empty, never fail
    assert cache.stats().objects == 0
    await cache.store_bytes("new", b"n", info("new", 1))
    assert await cache.read("new", 0, 1) == b"n"
    await cache.close()


async def test_disabled_cache_holds_nothing(tmp_path: Path) -> None:
    cache = await opened(tmp_path / "c", max_bytes=0)
    await cache.store_bytes("a", b"x", info("a", 1))
    assert cache.info("a") is None and await cache.read("a", 0, 1) is None
    assert not cache.stats().enabled
    await cache.close()
