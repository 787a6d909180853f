"""What only the local backend has: paths, atomic writes, xattrs, directories as markers."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from storagefs.backends.base import ConfigurationError, Conflict, InvalidRequest, NotFound
from storagefs.backends.local import TMP_DIR, XATTR_PREFIX, LocalBackend


@pytest.fixture
async def backend(tmp_path: Path) -> LocalBackend:
    root = tmp_path / "root"
    root.mkdir()
    b = LocalBackend(root)
    await b.open()
    return b


async def test_open_refuses_a_missing_root_or_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        await LocalBackend(tmp_path / "missing").open()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigurationError, match="is not a directory"):
        await LocalBackend(tmp_path / "file").open()


async def test_keys_are_files_and_metadata_is_in_xattrs(backend: LocalBackend) -> None:
    await backend.write_bytes("a/b c/d.txt", b"hello", {"mode": "33188", "uid": "7"})
    path = backend.root / "a" / "b c" / "d.txt"
    assert path.read_bytes() == b"hello"
    assert os.getxattr(path, XATTR_PREFIX + "mode") == b"33188"
    assert os.getxattr(path, XATTR_PREFIX + "uid") == b"7"
    info = await backend.stat("a/b c/d.txt")
    st = path.stat()
    assert (info.mtime_ns, info.etag) == (st.st_mtime_ns, f"{st.st_mtime_ns}-5")


async def test_files_made_outside_are_objects(backend: LocalBackend) -> None:
    (backend.root / "outside").mkdir()
    (backend.root / "outside" / "f").write_bytes(b"12345")
    (backend.root / "outside" / "link").symlink_to("f")  # not an object
    info = await backend.stat("outside/f")
    assert (info.size, info.metadata) == (5, {})
    for op in (backend.stat("outside/link"), backend.read("outside/link", 0, 5)):
        with pytest.raises(NotFound):
            await op
    with pytest.raises(NotFound):
        await backend.read("outside", 0, 5)  # a directory is only the marker "outside/"
    assert await backend.read("outside/f", 2, 1 << 40) == b"345"
    page = await backend.list("outside/")
    assert [o.key for o in page.objects] == ["outside/", "outside/f"]


async def test_writes_are_atomic_and_leave_no_temporary_files(
    backend: LocalBackend, tmp_path: Path
) -> None:
    await backend.write_bytes("k", b"old", {"uid": "1"})
    with pytest.raises(NotFound):
        await backend.write("k", str(tmp_path / "no-such-source"), {"uid": "2"})
    assert (backend.root / "k").read_bytes() == b"old"  # the failed write changed nothing
    assert (await backend.stat("k")).metadata == {"uid": "1"}
    assert list((backend.root / TMP_DIR).iterdir()) == []

    inode = (backend.root / "k").stat().st_ino
    await backend.write_bytes("k", b"new", {})
    assert (backend.root / "k").stat().st_ino != inode  # replaced by rename, not rewritten
    assert list((backend.root / TMP_DIR).iterdir()) == []


async def test_temporary_directory_is_never_listed_nor_addressable(
    backend: LocalBackend,
) -> None:
    await backend.write_bytes("x", b"1", {})
    (backend.root / TMP_DIR / "leftover.part").write_bytes(b"partial")
    objects = [o.key for o in (await backend.list("", delimiter=None)).objects]
    assert objects == ["x"]
    assert (await backend.list("")).prefixes == []
    with pytest.raises(InvalidRequest):
        await backend.stat(f"{TMP_DIR}/leftover.part")


async def test_stale_temporary_files_are_removed_on_open(backend: LocalBackend) -> None:
    tmp = backend.root / TMP_DIR
    tmp.mkdir(exist_ok=True)
    (tmp / "old.part").write_bytes(b"")
    (tmp / "fresh.part").write_bytes(b"")
    os.utime(tmp / "old.part", (0, 0))
    await backend.open()
    assert sorted(p.name for p in tmp.iterdir()) == ["fresh.part"]


@pytest.mark.parametrize("key", ["", "../escape", "a/../b", "a//b", "./a", "/abs", "a\0b"])
async def test_keys_that_are_not_safe_paths_are_refused(backend: LocalBackend, key: str) -> None:
    with pytest.raises(InvalidRequest):
        await backend.write_bytes(key, b"x", {})
    assert list(backend.root.iterdir()) == []


async def test_deleting_a_marker(backend: LocalBackend) -> None:
    await backend.write_bytes("d/", b"", {})
    await backend.write_bytes("d/f", b"x", {})
    await backend.delete("d/")  # not empty: a no-op
    assert (backend.root / "d" / "f").exists()
    await backend.delete("d/f")
    assert (backend.root / "d").is_dir()  # directories are explicit here
    await backend.delete("d/")
    assert not (backend.root / "d").exists()


async def test_a_file_and_a_directory_cannot_share_a_name(backend: LocalBackend) -> None:
    await backend.write_bytes("name", b"file", {})
    with pytest.raises(Conflict):
        await backend.write_bytes("name/child", b"x", {})
    with pytest.raises(Conflict):
        await backend.write_bytes("name/", b"", {})
    await backend.write_bytes("dir/child", b"x", {})
    with pytest.raises(Conflict):
        await backend.write_bytes("dir", b"x", {})
    with pytest.raises(NotFound):
        await backend.stat("name/child")


async def test_marker_metadata_is_replaced(backend: LocalBackend) -> None:
    await backend.write_bytes("d/", b"", {"mode": "16877", "uid": "1"})
    await backend.write_bytes("d/", b"", {"mode": "16832"})
    assert (await backend.stat("d/")).metadata == {"mode": "16832"}
    with pytest.raises(InvalidRequest):
        await backend.write_bytes("d/", b"not empty", {})


async def test_without_xattrs_it_warns_once_and_keeps_working(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    # A filesystem without user xattrs (some FUSE and network filesystems).
    monkeypatch.setattr(os, "setxattr", refuse)
    monkeypatch.setattr(os, "listxattr", refuse)
    with caplog.at_level(logging.WARNING, logger="storagefs.backends.local"):
        await backend.write_bytes("a", b"1", {"mode": "33188"})
        await backend.write_bytes("b", b"2", {"mode": "33188"})
        info = await backend.stat("a")
        await backend.copy("a", "c", {"uid": "1"})
    assert info.metadata == {}
    assert await backend.read("b", 0, 1) == b"2"
    warnings = [r for r in caplog.records if "extended attributes" in r.getMessage()]
    assert len(warnings) == 1


async def test_names_that_are_not_utf8_are_skipped(backend: LocalBackend) -> None:
    (backend.root / os.fsdecode(b"bad\xffname")).mkdir()
    (backend.root / "good").write_bytes(b"")
    page = await backend.list("")
    assert [o.key for o in page.objects] == ["good"]
    assert page.prefixes == []


async def test_pagination_inside_deep_trees(backend: LocalBackend) -> None:
    # The token can point deep inside a subtree; the next page must resume right after it.
    keys = [f"t/{a}/{b}/{c}" for a in "ab" for b in "xy" for c in "12"]
    for key in keys:
        await backend.write_bytes(key, b"", {})
    expected = sorted(
        {k for key in keys for k in [key, *(key.rsplit("/", n)[0] + "/" for n in (1, 2, 3))]},
        key=str.encode,
    )
    seen: list[str] = []
    token = None
    while True:
        page = await backend.list("t/", delimiter=None, token=token, limit=1)
        seen += [o.key for o in page.objects]
        token = page.token
        if token is None:
            break
    assert seen == expected
