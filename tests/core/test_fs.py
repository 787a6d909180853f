"""The filesystem core driven directly, without a mount, over the in-memory backend."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import trio

from storagefs.backends.base import META_MODE, META_MTIME, ObjectInfo, TransientError
from storagefs.fs.core import RENAME_NOREPLACE, Filesystem
from storagefs.fs.errors import FSError
from storagefs.fs.health_router import HealthRouter
from storagefs.fs.inodes import ROOT_INODE
from tests.core.conftest import make_fs, read_file, resolve, write_file
from tests.fakes import MemoryBackend


def errno_of(exc_info: pytest.ExceptionInfo[FSError]) -> int:
    return exc_info.value.errno


async def test_create_write_is_uploaded_on_flush(fs: Filesystem, backend: MemoryBackend) -> None:
    fh, _ = await fs.create(ROOT_INODE, "a.txt", 0o640, os.O_WRONLY, 0, 0)
    await fs.write(fh, 0, b"hello ")
    await fs.write(fh, 6, b"world")
    assert "a.txt" not in backend.objects  # nothing before flush
    await fs.flush(fh)
    await fs.release(fh)
    data, meta, _ = backend.objects["a.txt"]
    assert data == b"hello world"
    assert stat.S_IMODE(int(meta[META_MODE])) == 0o640
    assert await read_file(fs, "a.txt") == b"hello world"


async def test_empty_file_is_created(fs: Filesystem, backend: MemoryBackend) -> None:
    await write_file(fs, "empty", b"")
    assert backend.objects["empty"][0] == b""


async def test_read_large_file_in_chunks_with_readahead(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    blob = os.urandom(1_000_000)  # 16 chunks of 64 KiB
    await backend.write_bytes("big", blob, {})
    assert await read_file(fs, "big") == blob
    ino = await resolve(fs, "big")
    fh, _ = await fs.open(ino, os.O_RDONLY)
    for off, size in [(900_000, 5000), (10, 70_000), (65_530, 20), (999_999, 10)]:
        assert await fs.read(fh, off, size) == blob[off : off + size]
    await fs.release(fh)


async def test_sequential_read_fetches_chunks_once(fs: Filesystem, backend: MemoryBackend) -> None:
    blob = os.urandom(640 * 1024)
    await backend.write_bytes("seq", blob, {})
    await resolve(fs, "seq")  # the lookup's peek is not the reader's business
    backend.calls.clear()
    assert await read_file(fs, "seq") == blob
    reads = [c for c in backend.calls if c[0] == "read"]
    assert len(reads) == 10  # one GET per 64 KiB chunk, never twice


async def test_append_overwrite_random_write(fs: Filesystem, backend: MemoryBackend) -> None:
    await write_file(fs, "f", b"0123456789")
    ino = await resolve(fs, "f")
    fh, _ = await fs.open(ino, os.O_WRONLY | os.O_APPEND)
    await fs.write(fh, 10, b"ab")
    await fs.flush(fh)
    await fs.release(fh)
    assert backend.objects["f"][0] == b"0123456789ab"
    fh, _ = await fs.open(ino, os.O_RDWR)
    await fs.write(fh, 3, b"XY")
    await fs.release(fh)  # release without flush still uploads
    assert backend.objects["f"][0] == b"012XY56789ab"
    fh, _ = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
    await fs.write(fh, 0, b"new")
    await fs.flush(fh)
    await fs.release(fh)
    assert backend.objects["f"][0] == b"new"


async def test_truncate_shrink_and_grow(fs: Filesystem, backend: MemoryBackend) -> None:
    await write_file(fs, "t", b"abcdef")
    ino = await resolve(fs, "t")
    await fs.setattr(ino, size=3)
    assert backend.objects["t"][0] == b"abc"
    await fs.setattr(ino, size=6)
    assert backend.objects["t"][0] == b"abc\0\0\0"
    assert (await fs.getattr(ino)).attrs.size == 6


async def test_mkdir_rmdir_and_errors(fs: Filesystem, backend: MemoryBackend) -> None:
    d = await fs.mkdir(ROOT_INODE, "d", 0o750, 0, 0)
    assert "d/" in backend.objects
    with pytest.raises(FSError) as e:
        await fs.mkdir(ROOT_INODE, "d", 0o755, 0, 0)
    assert errno_of(e) == errno.EEXIST
    await write_file(fs, "d/x", b"1")
    with pytest.raises(FSError) as e:
        await fs.rmdir(ROOT_INODE, "d")
    assert errno_of(e) == errno.ENOTEMPTY
    with pytest.raises(FSError) as e:
        await fs.unlink(ROOT_INODE, "d")
    assert errno_of(e) == errno.EISDIR
    with pytest.raises(FSError) as e:
        await fs.rmdir(d.ino, "x")
    assert errno_of(e) == errno.ENOTDIR
    with pytest.raises(FSError) as e:
        await fs.open(d.ino, os.O_RDONLY)
    assert errno_of(e) == errno.EISDIR
    x = await resolve(fs, "d/x")
    with pytest.raises(FSError) as e:
        await fs.lookup(x, "child")
    assert errno_of(e) == errno.ENOTDIR
    await fs.unlink(d.ino, "x")
    await fs.rmdir(ROOT_INODE, "d")
    assert not backend.objects
    with pytest.raises(FSError) as e:
        await fs.lookup(ROOT_INODE, "d")
    assert errno_of(e) == errno.ENOENT


async def test_name_too_long(fs: Filesystem) -> None:
    with pytest.raises(FSError) as e:
        await fs.lookup(ROOT_INODE, "x" * 256)
    assert errno_of(e) == errno.ENAMETOOLONG
    with pytest.raises(FSError) as e:
        await fs.create(ROOT_INODE, "é" * 128, 0o644, os.O_WRONLY, 0, 0)  # 256 bytes
    assert errno_of(e) == errno.ENAMETOOLONG


async def test_a_key_the_stores_cannot_hold_is_enametoolong(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    # Every component is a legal name, but the whole key is over what the stores take (S3 and
    # Azure: 1,024 bytes): refused when the name is made, not with EIO at close.
    fs = make_fs(backend, tmp_path, max_key_bytes=24)
    fs.attach(nursery)
    d = await fs.mkdir(ROOT_INODE, "d" * 10, 0o755, 0, 0)  # "dddddddddd/": 11 bytes
    fh, _ = await fs.create(d.ino, "f" * 13, 0o644, os.O_WRONLY, 0, 0)  # 24 bytes: fits
    await fs.release(fh)
    calls = {
        "create": fs.create(d.ino, "f" * 14, 0o644, os.O_WRONLY, 0, 0),
        "mkdir": fs.mkdir(d.ino, "e" * 13, 0o755, 0, 0),  # 24 + the marker's "/"
        "symlink": fs.symlink(d.ino, "s" * 14, b"target", 0, 0),
        "rename": fs.rename(d.ino, "f" * 13, d.ino, "g" * 14),
    }
    for name, call in calls.items():
        with pytest.raises(FSError) as e:
            await call
        assert errno_of(e) == errno.ENAMETOOLONG, name
    assert sorted(backend.objects) == ["dddddddddd/", "dddddddddd/" + "f" * 13]
    # A directory renamed to a longer name would push the key of a file below it over the
    # limit: refused before anything is copied, not halfway through.
    with pytest.raises(FSError) as e:
        await fs.rename(ROOT_INODE, "d" * 10, ROOT_INODE, "d" * 11)
    assert errno_of(e) == errno.ENAMETOOLONG
    assert sorted(backend.objects) == ["dddddddddd/", "dddddddddd/" + "f" * 13]


def test_key_room_per_store() -> None:
    from storagefs.backends import key_room

    assert key_room("s3://bucket") == 1024
    assert key_room("s3://bucket/docs/2026") == 1024 - len("docs/2026/")
    assert key_room("azure://container/x") == 1022
    assert key_room("file:///srv/bucket") == 4096 - len("/srv/bucket") - 2


async def test_read_only(backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery) -> None:
    await backend.write_bytes("f", b"x", {})
    fs = make_fs(backend, tmp_path, read_only=True)
    fs.attach(nursery)
    assert await read_file(fs, "f") == b"x"
    ino = await resolve(fs, "f")
    for call in (
        fs.create(ROOT_INODE, "n", 0o644, os.O_WRONLY, 0, 0),
        fs.mkdir(ROOT_INODE, "d", 0o755, 0, 0),
        fs.unlink(ROOT_INODE, "f"),
        fs.rename(ROOT_INODE, "f", ROOT_INODE, "g"),
        fs.setattr(ino, mode=0o600),
        fs.open(ino, os.O_WRONLY),
    ):
        with pytest.raises(FSError) as e:
            await call
        assert errno_of(e) == errno.EROFS
    assert list(backend.objects) == ["f"]


async def test_implicit_dirs_markers_and_10000_entries(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    for i in range(10_000):
        backend.objects[f"many/f{i:05d}"] = (b"", {}, 0)
    backend.objects["implicit/deep/file"] = (b"x", {}, 0)
    backend.objects["empty/"] = (b"", {}, 0)
    dh = await fs.opendir(ROOT_INODE)
    names = [e.name for e in fs.readdir(dh, 0)]
    assert names == ["empty", "implicit", "many"]
    assert all(e.node.attrs.is_dir for e in fs.readdir(dh, 0))
    many = await resolve(fs, "many")
    dh = await fs.opendir(many)
    entries = fs.readdir(dh, 0)
    assert len(entries) == 10_000
    assert entries[-1].name == "f09999"
    assert [e.name for e in fs.readdir(dh, 9998)] == ["f09998", "f09999"]
    fs.releasedir(dh)
    assert (await fs.getattr(await resolve(fs, "implicit/deep"))).attrs.is_dir
    assert (await fs.getattr(await resolve(fs, "empty"))).attrs.is_dir


async def test_one_listing_serves_readdir_and_lookups(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    for i in range(50):
        await write_file(fs, f"f{i}", b"x")
    fresh = make_fs(backend, fs.options.staging_dir.parent)  # a remount, same metadata cache
    fresh.attach(fs.files.nursery)  # type: ignore[arg-type]
    backend.calls.clear()
    dh = await fresh.opendir(ROOT_INODE)
    fresh.readdir(dh, 0)
    for i in range(50):
        await fresh.lookup(ROOT_INODE, f"f{i}")
    assert [c[0] for c in backend.calls] == ["list"]


async def test_invalid_keys_are_left_out(fs: Filesystem, backend: MemoryBackend) -> None:
    for key in ["ok", "a//b", "dot/./x", "dd/../y", "x" * 300, ".health", "good/.."]:
        backend.objects[key] = (b"1", {}, 0)
    dh = await fs.opendir(ROOT_INODE)
    names = {e.name for e in fs.readdir(dh, 0)}
    assert names == {"ok", "a", "dot", "dd", "good"}
    for sub, expected in [("a", set()), ("dot", set()), ("dd", set()), ("good", set())]:
        dh = await fs.opendir(await resolve(fs, sub))
        assert {e.name for e in fs.readdir(dh, 0)} == expected


async def test_rename_file_over_existing(fs: Filesystem, backend: MemoryBackend) -> None:
    await write_file(fs, "a", b"AAA")
    await write_file(fs, "b", b"B")
    await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b")
    assert set(backend.objects) == {"b"}
    assert await read_file(fs, "b") == b"AAA"
    await write_file(fs, "c", b"C")
    with pytest.raises(FSError) as e:
        await fs.rename(ROOT_INODE, "c", ROOT_INODE, "b", RENAME_NOREPLACE)
    assert errno_of(e) == errno.EEXIST
    with pytest.raises(FSError) as e:
        await fs.rename(ROOT_INODE, "missing", ROOT_INODE, "x")
    assert errno_of(e) == errno.ENOENT


async def test_rename_directory_tree(fs: Filesystem, backend: MemoryBackend) -> None:
    await fs.mkdir(ROOT_INODE, "src", 0o755, 0, 0)
    await fs.mkdir(await resolve(fs, "src"), "sub", 0o700, 0, 0)
    await fs.mkdir(await resolve(fs, "src/sub"), "empty", 0o755, 0, 0)
    for i in range(30):
        await write_file(fs, f"src/sub/f{i}", str(i).encode())
    await write_file(fs, "src/top", b"top")
    await fs.rename(ROOT_INODE, "src", ROOT_INODE, "dst")
    assert not [k for k in backend.objects if k.startswith("src")]
    assert "dst/sub/empty/" in backend.objects
    assert await read_file(fs, "dst/sub/f7") == b"7"
    assert await read_file(fs, "dst/top") == b"top"
    sub = await fs.getattr(await resolve(fs, "dst/sub"))
    assert stat.S_IMODE(sub.attrs.mode) == 0o700
    with pytest.raises(FSError) as e:
        await fs.lookup(ROOT_INODE, "src")
    assert errno_of(e) == errno.ENOENT
    # into itself, and over a non-empty directory
    with pytest.raises(FSError) as e:
        await fs.rename(ROOT_INODE, "dst", await resolve(fs, "dst/sub"), "x")
    assert errno_of(e) == errno.EINVAL
    await fs.mkdir(ROOT_INODE, "other", 0o755, 0, 0)
    await write_file(fs, "other/f", b"")
    with pytest.raises(FSError) as e:
        await fs.rename(ROOT_INODE, "dst", ROOT_INODE, "other")
    assert errno_of(e) == errno.ENOTEMPTY
    with pytest.raises(FSError) as e:
        await fs.rename(ROOT_INODE, "dst", await resolve(fs, "other"), "f")
    assert errno_of(e) == errno.ENOTDIR


async def test_attributes_survive_remount(
    fs: Filesystem, backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    ino = await write_file(fs, "f", b"data", mode=0o600)
    await fs.setattr(ino, mode=0o751, uid=123, gid=456, mtime_ns=1_600_000_000_123_456_789)
    await fs.mkdir(ROOT_INODE, "d", 0o700, 7, 8)
    assert backend.objects["f"][1][META_MTIME] == "1600000000.123456789"
    for cache in ("meta.db", "other.db"):  # remembered metadata, and a cold cache (HEAD)
        fresh = make_fs(backend, tmp_path)
        if cache == "other.db":
            from storagefs.fs.metadata_cache import MetadataCache

            fresh.meta = MetadataCache(tmp_path / cache)
        fresh.attach(nursery)
        node = await fresh.getattr(await resolve(fresh, "f"))
        assert stat.S_IMODE(node.attrs.mode) == 0o751
        assert (node.attrs.uid, node.attrs.gid) == (123, 456)
        assert node.attrs.mtime_ns == 1_600_000_000_123_456_789
        d = await fresh.getattr(await resolve(fresh, "d"))
        assert stat.S_IMODE(d.attrs.mode) == 0o700
        assert (d.attrs.uid, d.attrs.gid) == (7, 8)


async def test_listing_shows_remembered_metadata(
    fs: Filesystem, backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    ino = await write_file(fs, "f", b"data")
    await fs.setattr(ino, mode=0o600)
    fresh = make_fs(backend, tmp_path)
    fresh.attach(nursery)
    dh = await fresh.opendir(ROOT_INODE)
    (entry,) = fresh.readdir(dh, 0)
    assert stat.S_IMODE(entry.node.attrs.mode) == 0o600
    # Changed behind our back: the etag no longer matches, so defaults apply until a HEAD.
    backend.objects["f"] = (b"other!", {}, 0)
    fresh2 = make_fs(backend, tmp_path)
    fresh2.attach(nursery)
    dh = await fresh2.opendir(ROOT_INODE)
    (entry,) = fresh2.readdir(dh, 0)
    assert stat.S_IMODE(entry.node.attrs.mode) == 0o644
    assert entry.node.attrs.size == 6


class FailingWrites(MemoryBackend):
    async def write(self, key: str, source: str, metadata: object) -> object:  # type: ignore[override]
        raise TransientError("simulated outage")


async def test_failed_upload_is_an_error_on_flush(tmp_path: Path, nursery: trio.Nursery) -> None:
    fs = make_fs(FailingWrites(), tmp_path)
    fs.attach(nursery)
    fh, _ = await fs.create(ROOT_INODE, "f", 0o644, os.O_WRONLY, 0, 0)
    await fs.write(fh, 0, b"x")
    with pytest.raises(FSError) as e:
        await fs.flush(fh)
    assert errno_of(e) == errno.EIO
    with pytest.raises(FSError):
        await fs.fsync(fh)
    await fs.release(fh)


async def test_behind_the_back_changes_seen_after_ttl(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    fs = make_fs(backend, tmp_path, ttl=0.0)
    fs.attach(nursery)
    await write_file(fs, "f", b"one")
    backend.objects["f"] = (b"second", {}, 0)
    assert await read_file(fs, "f") == b"second"
    del backend.objects["f"]
    with pytest.raises(FSError) as e:
        await fs.getattr(await resolve(fs, ""))  # root always answers
        await resolve(fs, "f")
    assert errno_of(e) == errno.ENOENT


async def test_unlink_while_open_keeps_handle_and_uploads_nothing(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    fh, _ = await fs.create(ROOT_INODE, "f", 0o644, os.O_RDWR, 0, 0)
    await fs.write(fh, 0, b"abc")
    await fs.unlink(ROOT_INODE, "f")
    assert await fs.read(fh, 0, 10) == b"abc"
    await fs.flush(fh)
    await fs.release(fh)
    assert "f" not in backend.objects


async def test_many_writers_at_once(fs: Filesystem, backend: MemoryBackend) -> None:
    async def writer(i: int) -> None:
        await write_file(fs, f"w{i}", bytes([i]) * (1000 + i))

    async with trio.open_nursery() as n:
        for i in range(40):
            n.start_soon(writer, i)
    for i in range(40):
        assert backend.objects[f"w{i}"][0] == bytes([i]) * (1000 + i)


async def test_statfs_and_forget(fs: Filesystem) -> None:
    assert fs.statfs()["f_namemax"] == 255
    ino = await write_file(fs, "f", b"x")
    node = await fs.lookup(ROOT_INODE, "f")
    before = len(fs.inodes)
    fs.forget(ino, node.lookups)
    assert len(fs.inodes) == before - 1


async def test_chmod_of_a_file_open_for_reading(fs: Filesystem, backend: MemoryBackend) -> None:
    ino = await write_file(fs, "f", b"abc")
    fh, _ = await fs.open(ino, os.O_RDONLY)
    await fs.setattr(ino, mode=0o600, mtime_ns=1_000_000_000)
    await fs.release(fh)
    assert backend.objects["f"][1][META_MODE] == str(stat.S_IFREG | 0o600)
    assert backend.objects["f"][1][META_MTIME] == "1"


async def test_renamed_tree_keeps_attributes_in_listings(
    fs: Filesystem, backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    await fs.mkdir(ROOT_INODE, "d", 0o755, 0, 0)
    ino = await write_file(fs, "d/f", b"abc")
    await fs.setattr(ino, mode=0o600)
    await fs.rename(ROOT_INODE, "d", ROOT_INODE, "e")
    fresh = make_fs(backend, tmp_path)  # remount with the same cache directory
    fresh.attach(nursery)
    dh = await fresh.opendir(await resolve(fresh, "e"))
    (entry,) = fresh.readdir(dh, 0)
    assert stat.S_IMODE(entry.node.attrs.mode) == 0o600


async def test_cold_listing_fetches_stored_attributes_once(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    for i in range(20):
        backend.objects[f"f{i}"] = (b"x", {META_MODE: str(0o100600)}, 0)
    backend.objects["d/"] = (b"", {META_MODE: str(0o40700)}, 0)
    backend.objects["implicit/x"] = (b"", {}, 0)
    fs = make_fs(backend, tmp_path, ttl=0.0)
    fs.attach(nursery)
    dh = await fs.opendir(ROOT_INODE)
    modes = {e.name: stat.S_IMODE(e.node.attrs.mode) for e in fs.readdir(dh, 0)}
    assert modes == {**{f"f{i}": 0o600 for i in range(20)}, "d": 0o700, "implicit": 0o755}
    backend.calls.clear()
    dh = await fs.opendir(ROOT_INODE)  # ttl 0: listed again, but nothing HEADed again
    assert [c[0] for c in backend.calls] == ["list"]


async def test_health_tree_is_virtual_and_read_only(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    calls = []

    def provider() -> dict[str, bytes]:
        calls.append(1)
        return {"status.json": b'{"state": "ok"}', "backends/s3.json": f"{len(calls)}".encode()}

    core = make_fs(backend, tmp_path)
    core.attach(nursery)
    fs = HealthRouter(core, provider)
    backend.objects[".health/x"] = (b"shadowed", {}, 0)
    root = await fs.lookup(ROOT_INODE, ".health")
    dh = await fs.opendir(root.ino)
    assert [e.name for e in fs.readdir(dh, 0)] == ["backends", "status.json"]
    status = await fs.lookup(root.ino, "status.json")
    fh, _ = await fs.open(status.ino, os.O_RDONLY)
    assert fs.is_virtual(fh)
    assert await fs.read(fh, 0, 100) == b'{"state": "ok"}'
    await fs.release(fh)
    s3 = await fs.lookup((await fs.lookup(root.ino, "backends")).ino, "s3.json")
    first = (await fs.open(s3.ino, os.O_RDONLY))[0]
    second = (await fs.open(s3.ino, os.O_RDONLY))[0]
    assert await fs.read(first, 0, 10) != await fs.read(second, 0, 10)  # fresh per open
    for call in (
        fs.open(status.ino, os.O_WRONLY),
        fs.create(root.ino, "new", 0o644, os.O_WRONLY, 0, 0),
        fs.mkdir(root.ino, "d", 0o755, 0, 0),
        fs.unlink(root.ino, "status.json"),
        fs.rmdir(ROOT_INODE, ".health"),
        fs.rename(root.ino, "status.json", ROOT_INODE, "x"),
        fs.setattr(status.ino, mode=0o777),
    ):
        with pytest.raises(FSError) as e:
            await call
        assert errno_of(e) == errno.EACCES
    # Not listed at the root (cp -r / diff -r of the mount must not see it), and the bucket's
    # own ".health" objects stay out of the mount.
    dh = await fs.opendir(ROOT_INODE)
    assert ".health" not in [e.name for e in fs.readdir(dh, 0)]
    assert not [c for c in backend.calls if c[1].startswith(".health")]


async def test_lookup_with_no_backend_answering(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A name nobody can vouch for is absent (so new files can be written to the journal
    during an outage); a refusal that is an answer (access denied) is raised as such."""
    from storagefs.backends.base import BackendUnavailable, PermissionDenied
    from tests.fault_injection import FaultyBackend

    faulty = FaultyBackend(backend)
    fs = make_fs(faulty, tmp_path, ttl=0.0)
    fs.attach(nursery)
    faulty.set_down(BackendUnavailable("down"))
    with pytest.raises(FSError) as e:
        await fs.lookup(ROOT_INODE, "unknown")
    assert errno_of(e) == errno.ENOENT
    faulty.set_down(PermissionDenied("no"))
    with pytest.raises(FSError) as refused:
        await fs.lookup(ROOT_INODE, "unknown")
    assert errno_of(refused) == errno.EACCES


async def test_a_cold_lookup_of_a_small_file_fetches_its_content_once(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    """lookup + open + read of a small file: the lookup's peek carries the bytes, the read
    makes no request; a file changed since (other etag) is read from the store again."""
    await backend.write_bytes("small", b"tiny file", {})
    backend.calls.clear()
    assert await read_file(fs, "small") == b"tiny file"
    assert [c[0] for c in backend.calls] == ["stat", "read"]  # MemoryBackend has no own peek
    ino = await resolve(fs, "small")
    await backend.write_bytes("small", b"changed!!", {})  # same size, new etag
    fs.known.remember_content("small", "stale-etag", b"tiny file")
    fh, _ = await fs.open(ino, os.O_RDONLY)
    fs.inodes.get(ino).etag = "current"
    assert await fs.read(fh, 0, 100) == b"changed!!"
    await fs.release(fh)


async def test_a_listing_shows_a_chmod_made_after_it_was_cached(fs: Filesystem) -> None:
    ino = await write_file(fs, "f", b"x")
    await fs.mkdir(ROOT_INODE, "d", 0o755, 0, 0)
    dh = await fs.opendir(ROOT_INODE)
    fs.readdir(dh, 0)
    await fs.setattr(ino, mode=0o600)
    await fs.setattr(await resolve(fs, "d"), mode=0o700)
    for node in list(fs.inodes._nodes.values()):  # the kernel forgot them: rebuilt from listing
        if node.ino != ROOT_INODE:
            fs.forget(node.ino, node.lookups)
    dh = await fs.opendir(ROOT_INODE)
    modes = {e.name: stat.S_IMODE(e.node.attrs.mode) for e in fs.readdir(dh, 0)}
    assert modes == {"f": 0o600, "d": 0o700}


async def test_an_expired_small_listing_is_fetched_again_whole(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cp -r, rsync and tar look up every name they create: once the listing of the directory
    # they fill has expired, one LIST answers them all, not a HEAD and a LIST per name.
    fs = make_fs(backend, tmp_path, ttl=0.05)
    fs.attach(nursery)
    await fs.mkdir(ROOT_INODE, "d", 0o755, 0, 0)
    for i in range(5):
        await write_file(fs, f"d/f{i}", b"x")
    dino = await resolve(fs, "d")
    fs.releasedir(await fs.opendir(dino))
    await trio.sleep(0.1)  # the listing expires
    backend.calls.clear()
    for i in range(10):  # five present, five absent
        try:
            await fs.lookup(dino, f"f{i}")
        except FSError as exc:
            assert exc.errno == errno.ENOENT and i >= 5
        else:
            assert i < 5
    assert [c[0] for c in backend.calls] == ["list"]
    # A directory bigger than that keeps the per-name probes (cheaper than listing it all).
    monkeypatch.setattr("storagefs.fs.lookup.RELIST_MAX_ENTRIES", 3)
    await trio.sleep(0.1)
    backend.calls.clear()
    with pytest.raises(FSError):
        await fs.lookup(dino, "absent")
    assert sorted(c[0] for c in backend.calls) == ["list", "stat"]
    fs.close()


class HeadsHang(MemoryBackend):
    """A store whose HEADs and GETs of some names never answer (as a hung primary's, while
    its secondary's "not found" must wait for them); listings answer."""

    def __init__(self, hanging: set[str]) -> None:
        super().__init__()
        self.hanging = hanging

    async def stat(self, key: str) -> ObjectInfo:
        if key in self.hanging:
            await trio.sleep_forever()
        return await super().stat(key)

    async def read(self, key: str, offset: int, length: int) -> bytes:
        if key in self.hanging:
            await trio.sleep_forever()
        return await super().read(key, offset, length)


async def test_a_directory_is_found_while_the_head_of_its_name_hangs(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    backend = HeadsHang({"d", "f"})
    backend.objects["d/x"] = (b"x", {}, 1_000_000_000)
    backend.objects["f"] = (b"file", {}, 1_000_000_000)
    fs = make_fs(backend, tmp_path)
    fs.attach(nursery)
    with trio.fail_after(5):  # without the probe beside the HEAD: never
        d = await fs.getattr(await resolve(fs, "d"))
    assert stat.S_ISDIR(d.attrs.mode)
    # A file still needs its HEAD: the probe finds no directory and leaves the answer to it.
    backend.hanging.clear()
    f = await fs.getattr(await resolve(fs, "f"))
    assert stat.S_ISREG(f.attrs.mode) and f.attrs.size == 4
