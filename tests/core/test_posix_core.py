"""POSIX rules of the core without a mount: file types and their stored format, timestamps,
ownership rules, inode numbers, and the metadata codec."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import trio

from storagefs.backends.base import ObjectInfo
from storagefs.config import load_settings
from storagefs.fs.attrs import (
    Defaults,
    attrs_from_object,
    ns_to_text,
    object_kind,
    text_to_ns,
)
from storagefs.fs.core import Filesystem
from storagefs.fs.errors import FSError
from storagefs.fs.inodes import ROOT_INODE
from storagefs.fs.metadata_cache import MetadataCache
from tests.core.conftest import make_fs, over_two_remotes, resolve, write_file
from tests.fakes import MemoryBackend


def cold(backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery, name: str) -> Filesystem:
    """A second mount of the same store that remembers nothing."""
    fresh = make_fs(backend, tmp_path)
    fresh.meta = MetadataCache(tmp_path / f"{name}.db")
    fresh.attach(nursery)
    return fresh


async def test_symlink_is_stored_as_s3fs_stores_it(
    fs: Filesystem, backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    node = await fs.symlink(ROOT_INODE, "ln", b"some/target", 5, 6)
    assert stat.S_ISLNK(node.attrs.mode) and node.attrs.size == len(b"some/target")
    data, meta = backend.objects["ln"][:2]
    assert data == b"some/target"
    assert meta["mode"] == str(stat.S_IFLNK | 0o777)
    assert await fs.readlink(node.ino) == b"some/target"
    with pytest.raises(FSError) as exc:
        await fs.symlink(ROOT_INODE, "ln", b"other", 0, 0)
    assert exc.value.errno == errno.EEXIST

    fresh = cold(backend, tmp_path, nursery, "cold")
    again = await fresh.lookup(ROOT_INODE, "ln")
    assert stat.S_ISLNK(again.attrs.mode) and (again.attrs.uid, again.attrs.gid) == (5, 6)
    assert await fresh.readlink(again.ino) == b"some/target"
    # ... and one written by s3fs (mode only) reads the same way.
    await backend.write_bytes("theirs", b"x/y", {"mode": str(stat.S_IFLNK | 0o777)})
    theirs = await fresh.lookup(ROOT_INODE, "theirs")
    assert await fresh.readlink(theirs.ino) == b"x/y"
    with pytest.raises(FSError) as exc:
        await fresh.readlink(ROOT_INODE)
    assert exc.value.errno == errno.EINVAL


async def test_special_files_carry_type_and_rdev(
    fs: Filesystem, backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    dev = os.makedev(8, 3)
    await fs.mknod(ROOT_INODE, "fifo", stat.S_IFIFO | 0o640, 0, 0, 0)
    await fs.mknod(ROOT_INODE, "blk", stat.S_IFBLK | 0o600, dev, 0, 0)
    await fs.mknod(ROOT_INODE, "plain", 0o644, 0, 0, 0)  # no type: a regular file
    assert backend.objects["fifo"][0] == b""
    assert backend.objects["blk"][1]["rdev"] == str(dev)
    assert "rdev" not in backend.objects["fifo"][1]
    fresh = cold(backend, tmp_path, nursery, "cold")
    fifo = await fresh.lookup(ROOT_INODE, "fifo")
    assert stat.S_ISFIFO(fifo.attrs.mode) and stat.S_IMODE(fifo.attrs.mode) == 0o640
    blk = await fresh.lookup(ROOT_INODE, "blk")
    assert stat.S_ISBLK(blk.attrs.mode) and blk.attrs.rdev == dev
    assert stat.S_ISREG((await fresh.lookup(ROOT_INODE, "plain")).attrs.mode)
    # rename and chmod keep the type (a copy carries the metadata).
    await fresh.rename(ROOT_INODE, "fifo", ROOT_INODE, "fifo2")
    node = await fresh.lookup(ROOT_INODE, "fifo2")
    await fresh.setattr(node.ino, mode=0o600)
    assert backend.objects["fifo2"][1]["mode"] == str(stat.S_IFIFO | 0o600)
    with pytest.raises(FSError) as exc:
        await fresh.mknod(ROOT_INODE, "dir", stat.S_IFDIR | 0o755, 0, 0, 0)
    assert exc.value.errno == errno.EINVAL


async def test_truncate_beyond_the_largest_object_is_efbig(fs: Filesystem) -> None:
    ino = await write_file(fs, "f", b"x")
    with pytest.raises(FSError) as exc:
        await fs.setattr(ino, size=2**62)
    assert exc.value.errno == errno.EFBIG
    assert (await fs.getattr(ino)).attrs.size == 1


async def test_ctime_is_stored_and_parents_change_with_their_entries(
    fs: Filesystem, backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    d = await fs.mkdir(ROOT_INODE, "d", 0o755, 0, 0)
    before = (d.attrs.mtime_ns, d.attrs.ctime_ns)
    ino = await write_file(fs, "d/f", b"x")
    assert d.attrs.mtime_ns > before[0] and d.attrs.ctime_ns > before[1]
    node = await fs.setattr(ino, mode=0o600)
    assert backend.objects["d/f"][1]["ctime"] == ns_to_text(node.attrs.ctime_ns)
    assert node.attrs.ctime_ns > node.attrs.mtime_ns
    stamp = d.attrs.mtime_ns
    await fs.unlink(d.ino, "f")
    assert d.attrs.mtime_ns > stamp
    # The directory's new times outlive the cached attributes (no TTL rollback).
    d.expires = 0.0
    assert (await fs.getattr(d.ino)).attrs.mtime_ns > stamp

    await write_file(fs, "g", b"x")
    g = await fs.lookup(ROOT_INODE, "g")
    await fs.setattr(g.ino, atime_ns=5, mtime_ns=7)
    fresh = cold(backend, tmp_path, nursery, "cold")
    again = await fresh.lookup(ROOT_INODE, "g")
    assert (again.attrs.atime_ns, again.attrs.mtime_ns) == (5, 7)
    assert again.attrs.ctime_ns == g.attrs.ctime_ns


async def test_setgid_directories_and_ownership_rules(fs: Filesystem) -> None:
    team = await fs.mkdir(ROOT_INODE, "team", 0o2775, 0, 50)
    sub = await fs.mkdir(team.ino, "sub", 0o755, 1000, 1000)
    assert sub.attrs.gid == 50 and sub.attrs.mode & stat.S_ISGID
    fh, f = await fs.create(team.ino, "f", 0o644, os.O_WRONLY, 1000, 1000)
    await fs.release(fh)
    assert (f.attrs.uid, f.attrs.gid) == (1000, 50) and not f.attrs.mode & stat.S_ISGID
    link = await fs.symlink(team.ino, "ln", b"f", 1000, 1000)
    assert link.attrs.gid == 50

    await fs.setattr(f.ino, mode=0o6755)
    for caller, uid, gid in [(2000, None, 7), (1000, 0, None), (2000, 2000, None)]:
        with pytest.raises(FSError) as exc:
            await fs.setattr(f.ino, uid=uid, gid=gid, caller=caller)
        assert exc.value.errno == errno.EPERM
    node = await fs.setattr(f.ino, gid=1000, caller=1000)  # the owner, to a group of theirs
    assert stat.S_IMODE(node.attrs.mode) == 0o755  # chown clears setuid and setgid
    await fs.setattr(f.ino, mode=0o2645)  # setgid without group-exec: mandatory locking
    node = await fs.setattr(f.ino, uid=3, caller=0)
    assert stat.S_IMODE(node.attrs.mode) == 0o2645 and node.attrs.uid == 3


async def test_inode_numbers_outlive_forget_and_renames(fs: Filesystem) -> None:
    a = await fs.mkdir(ROOT_INODE, "a", 0o755, 0, 0)
    ino = await write_file(fs, "a/f", b"x")
    fs.forget(ino, 1)
    assert ino not in {n.ino for n in fs.inodes._nodes.values()}  # really dropped
    assert (await fs.lookup(a.ino, "f")).ino == ino
    await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b")
    fs.forget(ino, 1)
    assert await resolve(fs, "b/f") == ino
    await fs.unlink(await resolve(fs, "b"), "f")
    assert await write_file(fs, "b/f", b"new") != ino  # a new file, a new number


def test_codec_reads_every_time_format_and_type() -> None:
    assert text_to_ns("1700000000") == 1_700_000_000 * 10**9
    assert text_to_ns("1700000000.5") == 1_700_000_000_500_000_000
    assert text_to_ns(" 1700000000.123456789 ") == 1_700_000_000_123_456_789
    assert text_to_ns("-1") is None and text_to_ns("soon") is None and text_to_ns(None) is None
    assert ns_to_text(1_700_000_000_500_000_000) == "1700000000.5"
    assert text_to_ns(ns_to_text(123_456_789_012_345_678)) == 123_456_789_012_345_678
    assert ns_to_text(-1_500_000_000) == "-1.5"  # before 1970: kept by the mount
    assert text_to_ns("-1.5", before_1970=True) == -1_500_000_000
    assert object_kind({"mode": "420"}) == stat.S_IFREG  # s3fs: no type bits, a file
    assert object_kind({"mode": str(stat.S_IFSOCK | 0o755)}) == stat.S_IFSOCK
    assert object_kind({"mode": str(stat.S_IFDIR | 0o755)}) == stat.S_IFREG  # not on a file
    assert object_kind({"mode": "junk"}) == stat.S_IFREG

    info = ObjectInfo("k", 3, 1_600_000_000 * 10**9)
    defaults = Defaults(uid=7, gid=8, file_mode=0o640, dir_mode=0o750)
    attrs = attrs_from_object(info, False, defaults, {})
    assert (attrs.mode, attrs.uid, attrs.gid) == (stat.S_IFREG | 0o640, 7, 8)
    assert attrs.ctime_ns == attrs.mtime_ns == 1_600_000_000 * 10**9
    assert attrs_from_object(None, True, defaults, {}).mode == stat.S_IFDIR | 0o750


def test_mount_options_for_objects_without_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("UID", "GID", "UMASK", "FILE_MODE", "DIR_MODE"):
        monkeypatch.delenv(f"STORAGEFS_{name}", raising=False)
    assert load_settings().object_modes() == (0o644, 0o755)
    monkeypatch.setenv("STORAGEFS_UMASK", "027")
    assert load_settings().object_modes() == (0o640, 0o750)
    monkeypatch.setenv("STORAGEFS_FILE_MODE", "0o600")
    assert load_settings().object_modes() == (0o600, 0o750)
    monkeypatch.setenv("STORAGEFS_UID", "1234")
    assert load_settings().uid == 1234
    monkeypatch.setenv("STORAGEFS_DIR_MODE", "8")
    with pytest.raises(Exception, match="STORAGEFS_DIR_MODE"):
        load_settings()


async def test_defaults_apply_to_objects_without_metadata(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    await backend.write_bytes("bare", b"x", {})
    await backend.write_bytes("dir/", b"", {})
    fs = make_fs(backend, tmp_path, uid=42, gid=43, file_mode=0o600, dir_mode=0o700)
    fs.attach(nursery)
    bare = await fs.lookup(ROOT_INODE, "bare")
    assert (bare.attrs.mode, bare.attrs.uid, bare.attrs.gid) == (stat.S_IFREG | 0o600, 42, 43)
    assert (await fs.lookup(ROOT_INODE, "dir")).attrs.mode == stat.S_IFDIR | 0o700
    root = await fs.getattr(ROOT_INODE)
    assert root.attrs.mode == stat.S_IFDIR | 0o700 and root.attrs.uid == 42
    fs.close()


async def test_links_and_nodes_go_through_the_journal_during_an_outage(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    from tests.test_chain import store

    async with over_two_remotes(tmp_path, nursery) as (fs, primary, secondary):
        primary.set_down()
        secondary.set_down()
        link = await fs.symlink(ROOT_INODE, "ln", b"target", 0, 0)
        fifo = await fs.mknod(ROOT_INODE, "fifo", stat.S_IFIFO | 0o600, 0, 0, 0)
        await fs.setattr(fifo.ino, mode=0o640)
        link.target = None  # read it back through the journal's overlay
        assert await fs.readlink(link.ino) == b"target"
    for backend in (primary, secondary):
        objects = store(backend).objects
        assert objects["ln"][0] == b"target"
        assert objects["ln"][1]["mode"] == str(stat.S_IFLNK | 0o777)
        assert objects["fifo"][1]["mode"] == str(stat.S_IFIFO | 0o640)
