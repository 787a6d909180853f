"""Hard links (storagefs/fs/links.py) in the core, over the in-memory backend: one inode under
several names, the count, the inode object on the store, and what another mount sees."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio

from storagefs.backends.base import ObjectInfo, TransientError
from storagefs.fs.attrs import META_LINK, META_NLINK
from storagefs.fs.core import Filesystem
from storagefs.fs.errors import FSError
from storagefs.fs.inodes import ROOT_INODE
from storagefs.fs.links import pointer_body
from storagefs.fs.metadata_cache import MetadataCache
from storagefs.fs.names import LINKS_PREFIX
from tests.core.conftest import attached, make_fs, over_two_remotes, read_file, resolve, write_file
from tests.fakes import MemoryBackend


def cold(backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery, name: str) -> Filesystem:
    """A second mount of the same store that remembers nothing."""
    (tmp_path / name).mkdir()
    fresh = make_fs(backend, tmp_path / name)
    fresh.meta = MetadataCache(tmp_path / f"{name}.db")
    fresh.attach(nursery)
    return fresh


def inode_objects(backend: MemoryBackend) -> dict[str, tuple[bytes, dict[str, str]]]:
    return {k: (v[0], v[1]) for k, v in backend.objects.items() if k.startswith(LINKS_PREFIX)}


def link_id(backend: MemoryBackend) -> str:
    [key] = inode_objects(backend)
    return key[len(LINKS_PREFIX) :]


async def errno_of(call: object) -> int:
    try:
        await call  # type: ignore[misc]
    except FSError as exc:
        return exc.errno
    return 0


async def stat_of(fs: Filesystem, path: str) -> tuple[int, int, int, int]:
    """(ino, nlink, size, ctime_ns) of ``path``, as getattr answers."""
    node = await fs.getattr(await resolve(fs, path))
    return node.ino, node.nlink, node.attrs.size, node.attrs.ctime_ns


async def overwrite(fs: Filesystem, path: str, data: bytes) -> None:
    fh, _ = await fs.open(await resolve(fs, path), os.O_WRONLY | os.O_TRUNC)
    await fs.write(fh, 0, data)
    await fs.release(fh)


async def test_a_link_is_the_same_file_under_two_names(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    ino = await write_file(fs, "f", b"hello")
    await fs.mkdir(ROOT_INODE, "d", 0o755, 0, 0)
    node = await fs.link(ino, await resolve(fs, "d"), "g")
    assert node.ino == ino and node.nlink == 2
    assert (await stat_of(fs, "f"))[:3] == (ino, 2, 5)
    assert (await stat_of(fs, "d/g"))[:3] == (ino, 2, 5)
    assert await read_file(fs, "d/g") == b"hello"
    # On the store: two one-line pointers naming one inode object that holds it all.
    [(key, (data, meta))] = inode_objects(backend).items()
    assert data == b"hello" and meta[META_NLINK] == "2" and meta["mode"] == str(0o100644)
    link_id = key[len(LINKS_PREFIX) :]
    for name in ("f", "d/g"):
        assert backend.objects[name][0] == f"storagefs hard link: {key}\n".encode()
        assert backend.objects[name][1] == {META_LINK: link_id}
    # A third name: the count goes up, no new inode object.
    third = await fs.link(ino, ROOT_INODE, "h")
    assert third.nlink == 3 and len(inode_objects(backend)) == 1
    assert inode_objects(backend)[key][1][META_NLINK] == "3"


async def test_writes_and_attributes_through_one_name_show_through_the_other(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    ino = await write_file(fs, "f", b"one")
    await fs.link(ino, ROOT_INODE, "g")
    await overwrite(fs, "g", b"second version")
    assert await read_file(fs, "f") == b"second version"
    await fs.setattr(await resolve(fs, "f"), mode=0o600, uid=7, gid=8)
    node = await fs.getattr(await resolve(fs, "g"))
    assert stat.S_IMODE(node.attrs.mode) == 0o600 and (node.attrs.uid, node.attrs.gid) == (7, 8)
    await fs.setattr(await resolve(fs, "g"), size=3)
    assert await read_file(fs, "f") == b"sec"
    [(data, meta)] = inode_objects(backend).values()
    assert data == b"sec" and meta["mode"] == str(0o100600) and meta[META_NLINK] == "2"
    assert backend.objects["f"][0] == backend.objects["g"][0] == pointer_body(link_id(backend))


async def test_ctime_changes_on_link_unlink_and_rename(fs: Filesystem) -> None:
    ino = await write_file(fs, "f", b"x")
    before = (await stat_of(fs, "f"))[3]
    await trio.sleep(0.01)
    await fs.link(ino, ROOT_INODE, "g")
    linked = (await stat_of(fs, "f"))[3]
    assert linked > before
    await trio.sleep(0.01)
    await fs.link(ino, ROOT_INODE, "h")
    assert (await stat_of(fs, "g"))[3] > linked
    after_h = (await stat_of(fs, "g"))[3]
    await trio.sleep(0.01)
    await fs.unlink(ROOT_INODE, "h")
    after_unlink = (await stat_of(fs, "f"))[3]
    assert after_unlink > after_h
    await trio.sleep(0.01)
    await fs.rename(ROOT_INODE, "g", ROOT_INODE, "g2")
    assert (await stat_of(fs, "f"))[3] > after_unlink


async def test_unlink_of_one_name_keeps_the_other_and_the_last_removes_the_inode_object(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    ino = await write_file(fs, "f", b"data")
    await fs.link(ino, ROOT_INODE, "g")
    await fs.unlink(ROOT_INODE, "f")
    assert "f" not in backend.objects
    assert await errno_of(fs.lookup(ROOT_INODE, "f")) == errno.ENOENT
    assert (await stat_of(fs, "g"))[:3] == (ino, 1, 4)
    assert await read_file(fs, "g") == b"data"
    [(_, meta)] = inode_objects(backend).values()
    assert meta[META_NLINK] == "1"
    await fs.unlink(ROOT_INODE, "g")
    assert backend.objects == {} and inode_objects(backend) == {}


async def test_a_file_open_when_its_last_name_goes_keeps_its_data(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    ino = await write_file(fs, "f", b"kept")
    await fs.link(ino, ROOT_INODE, "g")
    fh, _ = await fs.open(ino, os.O_RDONLY)
    await fs.unlink(ROOT_INODE, "f")
    await fs.unlink(ROOT_INODE, "g")
    assert inode_objects(backend) == {}
    assert (await fs.getattr(ino)).nlink == 0
    assert await fs.read(fh, 0, 100) == b"kept"
    await fs.release(fh)


async def test_rename_moves_only_the_pointer(fs: Filesystem, backend: MemoryBackend) -> None:
    ino = await write_file(fs, "f", b"abc")
    await fs.link(ino, ROOT_INODE, "g")
    await fs.mkdir(ROOT_INODE, "d", 0o755, 0, 0)
    inode_before = dict(inode_objects(backend))
    await fs.rename(ROOT_INODE, "g", await resolve(fs, "d"), "moved")
    assert "g" not in backend.objects
    assert backend.objects["d/moved"][0] == pointer_body(link_id(backend))
    assert inode_objects(backend).keys() == inode_before.keys()
    assert (await stat_of(fs, "d/moved"))[:3] == (ino, 2, 3)
    assert await read_file(fs, "d/moved") == b"abc"
    # A directory holding a name moves it along; the file is still one inode.
    await fs.rename(ROOT_INODE, "d", ROOT_INODE, "e")
    assert (await stat_of(fs, "e/moved"))[:2] == (ino, 2)
    assert await read_file(fs, "e/moved") == b"abc"


async def test_rename_onto_another_name_of_the_same_file_does_nothing(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    ino = await write_file(fs, "f", b"abc")
    await fs.link(ino, ROOT_INODE, "g")
    await fs.rename(ROOT_INODE, "f", ROOT_INODE, "g")
    assert (await stat_of(fs, "f"))[:2] == (ino, 2)
    assert (await stat_of(fs, "g"))[:2] == (ino, 2)
    assert {"f", "g"} <= backend.objects.keys()


async def test_rename_over_a_hard_linked_name_drops_one_link_of_the_target(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    target = await write_file(fs, "t", b"target")
    await fs.link(target, ROOT_INODE, "t2")
    src = await write_file(fs, "s", b"source")
    await fs.rename(ROOT_INODE, "s", ROOT_INODE, "t")
    assert await read_file(fs, "t") == b"source"
    assert (await stat_of(fs, "t"))[:2] == (src, 1)
    assert (await stat_of(fs, "t2"))[:2] == (target, 1)
    assert await read_file(fs, "t2") == b"target"
    await fs.rename(ROOT_INODE, "t", ROOT_INODE, "t2")  # over its last name: the object goes
    assert inode_objects(backend) == {}
    assert await read_file(fs, "t2") == b"source"


async def test_link_errors(fs: Filesystem, backend: MemoryBackend) -> None:
    ino = await write_file(fs, "f", b"x")
    await write_file(fs, "other", b"y")
    d = await fs.mkdir(ROOT_INODE, "d", 0o755, 0, 0)
    assert await errno_of(fs.link(d.ino, ROOT_INODE, "d2")) == errno.EPERM
    assert await errno_of(fs.link(ino, ROOT_INODE, "other")) == errno.EEXIST
    assert await errno_of(fs.link(ino, ROOT_INODE, "d")) == errno.EEXIST
    assert await errno_of(fs.link(ino, ino, "x")) == errno.ENOTDIR
    assert await errno_of(fs.link(ino, ROOT_INODE, ".storagefs")) == errno.EPERM
    assert inode_objects(backend) == {} and backend.objects["f"][0] == b"x"  # nothing changed
    assert (await stat_of(fs, "f"))[1] == 1


async def test_the_inode_objects_are_hidden_and_reserved(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    ino = await write_file(fs, "f", b"x")
    await fs.link(ino, ROOT_INODE, "g")
    dh = await fs.opendir(ROOT_INODE)
    assert sorted(e.name for e in fs.readdir(dh, 0)) == ["f", "g"]
    fs.releasedir(dh)
    assert await errno_of(fs.lookup(ROOT_INODE, ".storagefs")) == errno.ENOENT
    for call in (
        fs.mkdir(ROOT_INODE, ".storagefs", 0o755, 0, 0),
        fs.create(ROOT_INODE, ".storagefs", 0o644, os.O_WRONLY, 0, 0),
        fs.symlink(ROOT_INODE, ".storagefs", b"f", 0, 0),
        fs.rename(ROOT_INODE, "f", ROOT_INODE, ".storagefs"),
    ):
        assert await errno_of(call) == errno.EPERM
    # Only at the root: a directory of that name elsewhere is anybody's.
    d = await fs.mkdir(ROOT_INODE, "d", 0o755, 0, 0)
    await fs.mkdir(d.ino, ".storagefs", 0o755, 0, 0)


async def test_link_of_a_file_still_being_written_links_its_newest_content(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    fh, node = await fs.create(ROOT_INODE, "new", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    await fs.write(fh, 0, b"not flushed yet")
    await fs.link(node.ino, ROOT_INODE, "other")
    await fs.write(fh, 15, b", and more")
    await fs.release(fh)
    assert await read_file(fs, "other") == b"not flushed yet, and more"
    [(data, _)] = inode_objects(backend).values()
    assert data == b"not flushed yet, and more"


async def test_special_files_and_symlinks_can_be_linked(fs: Filesystem) -> None:
    fifo = await fs.mknod(ROOT_INODE, "fifo", stat.S_IFIFO | 0o640, 0, 0, 0)
    await fs.link(fifo.ino, ROOT_INODE, "fifo2")
    node = await fs.getattr(await resolve(fs, "fifo2"))
    assert stat.S_ISFIFO(node.attrs.mode) and node.nlink == 2 and node.ino == fifo.ino
    sym = await fs.symlink(ROOT_INODE, "sym", b"fifo", 0, 0)
    await fs.link(sym.ino, ROOT_INODE, "sym2")
    assert await fs.readlink(await resolve(fs, "sym2")) == b"fifo"


async def test_another_mount_sees_one_file_with_two_names(
    fs: Filesystem, backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    ino = await write_file(fs, "f", b"shared", mode=0o640)
    await fs.mkdir(ROOT_INODE, "d", 0o755, 0, 0)
    await fs.link(ino, await resolve(fs, "d"), "g")

    fresh = cold(backend, tmp_path, nursery, "second")
    f = await stat_of(fresh, "f")
    g = await stat_of(fresh, "d/g")
    assert f[:3] == (g[0], 2, 6) and g[1:3] == (2, 6)
    assert await read_file(fresh, "d/g") == b"shared"
    assert stat.S_IMODE((await fresh.getattr(f[0])).attrs.mode) == 0o640
    # A listing shows the inode's size and attributes, not the pointer's.
    other = cold(backend, tmp_path, nursery, "third")
    dh = await other.opendir(await resolve(other, "d"))
    [entry] = other.readdir(dh, 0)
    assert entry.node.attrs.size == 6 and entry.node.nlink == 2
    assert stat.S_IMODE(entry.node.attrs.mode) == 0o640
    other.releasedir(dh)
    assert (await other.lookup(ROOT_INODE, "f")).ino == entry.node.ino
    # A change there shows here once the attributes expire; and the other way round.
    await overwrite(fresh, "f", b"changed")
    await fresh.unlink(await resolve(fresh, "d"), "g")
    node = fs.inodes.get(ino)
    node.expires = 0.0
    node = await fs.getattr(ino)
    assert node.nlink == 1 and node.attrs.size == 7
    third = cold(backend, tmp_path, nursery, "fourth")
    assert (await stat_of(third, "f"))[1:3] == (1, 7)
    assert await read_file(third, "f") == b"changed"
    for mount in (fresh, other, third):
        mount.close()


async def test_a_pointer_whose_inode_object_is_gone_is_the_file_it_is(
    fs: Filesystem, backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    ino = await write_file(fs, "f", b"x")
    await fs.link(ino, ROOT_INODE, "g")
    for key in inode_objects(backend):
        del backend.objects[key]
    body = backend.objects["f"][0]
    fresh = cold(backend, tmp_path, nursery, "second")
    assert (await stat_of(fresh, "f"))[1:3] == (1, len(body))
    assert await read_file(fresh, "f") == body  # it says where the file was
    await fresh.unlink(ROOT_INODE, "f")
    assert "f" not in backend.objects
    fresh.close()


async def test_too_many_links_is_emlink(
    fs: Filesystem, backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("storagefs.fs.links.LINK_MAX", 3)
    ino = await write_file(fs, "f", b"x")
    await fs.link(ino, ROOT_INODE, "g")
    await fs.link(ino, ROOT_INODE, "h")
    assert await errno_of(fs.link(ino, ROOT_INODE, "i")) == errno.EMLINK


async def test_a_mount_that_knew_the_empty_file_sees_it_become_a_link(
    fs: Filesystem, backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The metadata cache is keyed by etag: a pointer must not share one with the empty file
    that was there before (nor with another pointer)."""
    await write_file(fs, "empty", b"")
    other = cold(backend, tmp_path, nursery, "second")
    dh = await other.opendir(ROOT_INODE)  # remembers the empty file's metadata
    other.releasedir(dh)
    await fs.link(await resolve(fs, "empty"), ROOT_INODE, "also")
    again = make_fs(backend, tmp_path / "second")  # a remount with the same metadata cache
    again.meta = other.meta
    again.attach(nursery)
    dh = await again.opendir(ROOT_INODE)
    nodes = {e.name: e.node for e in again.readdir(dh, 0)}
    again.releasedir(dh)
    assert nodes["empty"].nlink == nodes["also"].nlink == 2
    assert nodes["empty"].ino == nodes["also"].ino
    other.close()


async def test_links_made_during_an_outage_reach_both_stores_by_the_journal(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    from tests.test_chain import store

    async with over_two_remotes(tmp_path, nursery) as (fs, primary, secondary):
        ino = await write_file(fs, "f", b"before")
        primary.set_down()
        secondary.set_down()
        await fs.link(ino, ROOT_INODE, "g")
        await fs.link(ino, ROOT_INODE, "h")
        await overwrite(fs, "g", b"during the outage")
        await fs.unlink(ROOT_INODE, "f")
        assert await read_file(fs, "h") == b"during the outage"
    for backend in (primary, secondary):
        objects = store(backend).objects
        assert "f" not in objects
        [key] = [k for k in objects if k.startswith(LINKS_PREFIX)]
        assert objects[key][0] == b"during the outage"
        assert objects[key][1][META_NLINK] == "2"
        assert objects["g"][1] == objects["h"][1] == {META_LINK: key[len(LINKS_PREFIX) :]}


async def test_a_count_change_keeps_attributes_another_mount_stored(
    fs: Filesystem, backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    ino = await write_file(fs, "f", b"x", mode=0o644)
    await fs.link(ino, ROOT_INODE, "g")
    other = cold(backend, tmp_path, nursery, "second")
    await other.setattr(await resolve(other, "g"), mode=0o600)
    await fs.link(ino, ROOT_INODE, "h")  # this mount's attributes of the file are stale
    await fs.unlink(ROOT_INODE, "g")
    [(_, meta)] = inode_objects(backend).values()
    assert meta["mode"] == str(0o100600) and meta[META_NLINK] == "2"
    other.close()


class NoStatOfInodeObjects(MemoryBackend):
    """A store whose HEADs of inode objects time out (while set)."""

    failing = False

    async def stat(self, key: str) -> ObjectInfo:
        if self.failing and key.startswith(LINKS_PREFIX):
            await trio.lowlevel.checkpoint()
            raise TransientError("timed out")
        return await super().stat(key)


async def test_unlink_counts_on_what_the_mount_knows_when_the_count_cannot_be_read(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    backend = NoStatOfInodeObjects()
    fs = attached(backend, tmp_path, nursery)
    ino = await write_file(fs, "f", b"x")
    await fs.link(ino, ROOT_INODE, "g")
    backend.failing = True
    await fs.unlink(ROOT_INODE, "f")
    assert "f" not in backend.objects and fs.inodes.get(ino).nlink == 1
    [(_, meta)] = inode_objects(backend).values()
    assert meta[META_NLINK] == "1"
    fs.close()


class FailingPointerWrites(MemoryBackend):
    """A store that refuses to write pointers (while set)."""

    failing = False

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        if self.failing and META_LINK in metadata:
            await trio.lowlevel.checkpoint()
            raise TransientError("refused")
        return await super().write_bytes(key, data, metadata)


async def test_a_failed_first_link_leaves_the_file_as_it_was(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    backend = FailingPointerWrites()
    fs = attached(backend, tmp_path, nursery)
    ino = await write_file(fs, "f", b"plain")
    backend.failing = True
    assert await errno_of(fs.link(ino, ROOT_INODE, "g")) == errno.EIO
    backend.failing = False
    node = await fs.getattr(ino)
    assert node.link is None and node.nlink == 1
    await overwrite(fs, "f", b"still plain")
    assert backend.objects["f"][0] == b"still plain"
    await fs.link(ino, ROOT_INODE, "g")  # and it can be linked later
    assert await read_file(fs, "g") == b"still plain"
    fs.close()
