"""Other tools' metadata kept on every rewrite, and user.* extended attributes (issue #21)."""

from __future__ import annotations

import base64
import errno
import json
import os
import stat
import urllib.parse
from pathlib import Path

import pytest
import trio

from storagefs.fs.core import Filesystem
from storagefs.fs.errors import FSError
from storagefs.fs.health_router import HealthRouter
from storagefs.fs.inodes import ROOT_INODE
from storagefs.fs.names import inode_key
from storagefs.fs.xattrs import XATTR_CREATE, XATTR_REPLACE
from tests.core.conftest import make_fs, resolve, write_file
from tests.fakes import MemoryBackend

FOREIGN = {"owner-app": "reports", "checksum": "abc123"}


def s3fs_entry(values: dict[str, bytes]) -> str:
    """The ``xattr`` entry as s3fs-fuse writes it (raw_build_xattrs + urlEncodePath)."""
    pairs = ",".join(f'"{k}":"{base64.b64encode(v).decode()}"' for k, v in sorted(values.items()))
    return urllib.parse.quote("{" + pairs + "}", safe="/")


def fresh(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery, **kw: object
) -> Filesystem:
    """A new mount of ``backend`` that remembers nothing (its own metadata cache)."""
    name = f"fresh-{len(list(tmp_path.glob('fresh-*')))}"
    (tmp_path / name).mkdir()
    fs = make_fs(backend, tmp_path / name, **kw)
    fs.attach(nursery)
    return fs


def put_foreign(backend: MemoryBackend, key: str, data: bytes = b"data") -> None:
    """An object another tool wrote: its own metadata, none of ours."""
    backend.objects[key] = (data, dict(FOREIGN), 1_700_000_000 * 10**9)


def assert_foreign_kept(backend: MemoryBackend, key: str) -> None:
    meta = backend.objects[key][1]
    assert {k: meta.get(k) for k in FOREIGN} == FOREIGN, meta


# --- A: other tools' metadata -------------------------------------------------------------


@pytest.mark.parametrize("change", ["chmod", "chown", "utimens"])
async def test_attribute_changes_keep_other_tools_metadata(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery, change: str
) -> None:
    put_foreign(backend, "f")
    backend.objects["d/"] = (b"", dict(FOREIGN), 1_700_000_000 * 10**9)
    fs = fresh(backend, tmp_path, nursery)
    for key, name in (("f", "f"), ("d/", "d")):
        ino = await resolve(fs, name)
        if change == "chmod":
            await fs.setattr(ino, mode=0o600)
        elif change == "chown":
            await fs.setattr(ino, uid=42, gid=43)
        else:
            await fs.setattr(ino, mtime_ns=1_600_000_000 * 10**9)
        assert_foreign_kept(backend, key)
        assert backend.objects[key][1]["ctime"]  # and ours are there too


async def test_chmod_after_a_listing_without_metadata_reads_it_first(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    put_foreign(backend, "f")
    put_foreign(backend, "g")
    # Beyond the HEAD limit a listing's entries carry no metadata: nothing is known of them.
    fs = fresh(backend, tmp_path, nursery, listing_head_limit=0)
    dh = await fs.opendir(ROOT_INODE)
    entries = {e.name: e.node for e in fs.readdir(dh, 0)}
    assert entries["f"].attrs.extra is None
    backend.calls.clear()
    await fs.setattr(entries["f"].ino, mode=0o640)
    assert ("stat", "f") in backend.calls  # the one HEAD that learns what to keep
    assert_foreign_kept(backend, "f")
    assert backend.objects["f"][1]["mode"] == str(stat.S_IFREG | 0o640)


async def test_rename_and_content_rewrites_keep_other_tools_metadata(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    for key in ("moved", "rewritten", "truncated", "linked"):
        put_foreign(backend, key)
    fs = fresh(backend, tmp_path, nursery)
    await fs.rename(ROOT_INODE, "moved", ROOT_INODE, "moved2")
    assert_foreign_kept(backend, "moved2")
    fh, _ = await fs.open(await resolve(fs, "rewritten"), os.O_RDWR)
    await fs.write(fh, 0, b"DATA more")
    await fs.release(fh)
    assert backend.objects["rewritten"][0] == b"DATA more"
    assert_foreign_kept(backend, "rewritten")
    fh, _ = await fs.open(await resolve(fs, "truncated"), os.O_WRONLY | os.O_TRUNC)
    await fs.write(fh, 0, b"new")
    await fs.release(fh)
    assert backend.objects["truncated"][0] == b"new"
    assert_foreign_kept(backend, "truncated")
    node = await fs.link(await resolve(fs, "linked"), ROOT_INODE, "linked2")
    assert node.link is not None
    assert_foreign_kept(backend, inode_key(node.link))  # they go with the content
    await fs.setattr(node.ino, mode=0o600)
    assert_foreign_kept(backend, inode_key(node.link))


async def test_other_tools_metadata_survives_unknown_listing_then_upload(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    put_foreign(backend, "f")
    fs = fresh(backend, tmp_path, nursery, listing_head_limit=0)
    dh = await fs.opendir(ROOT_INODE)
    (entry,) = fs.readdir(dh, 0)
    fs.add_lookup(entry.node)
    fh, _ = await fs.open(entry.node.ino, os.O_WRONLY)
    await fs.write(fh, 0, b"X")
    await fs.release(fh)
    assert backend.objects["f"][0] == b"Xata"
    assert_foreign_kept(backend, "f")


# --- B: extended attributes -----------------------------------------------------------------


async def test_set_get_list_remove_and_the_store_format(
    fs: Filesystem, backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    ino = await write_file(fs, "f", b"data")
    before = (await fs.getattr(ino)).attrs.ctime_ns
    await fs.setxattr(ino, b"user.color", b"blue")
    await fs.setxattr(ino, b"user.bin", bytes(range(256)))
    assert (await fs.getattr(ino)).attrs.ctime_ns > before
    assert await fs.getxattr(ino, b"user.color") == b"blue"
    assert await fs.listxattr(ino) == [b"user.bin", b"user.color"]
    stored = backend.objects["f"][1]["xattr"]
    assert stored == s3fs_entry({"user.bin": bytes(range(256)), "user.color": b"blue"})
    assert json.loads(urllib.parse.unquote(stored))["user.color"] == "Ymx1ZQ=="
    # A remount (nothing remembered) reads them back from the store.
    other = fresh(backend, tmp_path, nursery)
    oino = await resolve(other, "f")
    assert await other.getxattr(oino, b"user.bin") == bytes(range(256))
    await other.removexattr(oino, b"user.bin")
    await other.removexattr(oino, b"user.color")
    assert "xattr" not in backend.objects["f"][1]  # none left: no entry at all
    assert await other.listxattr(oino) == []
    with pytest.raises(FSError) as err:
        await other.getxattr(oino, b"user.color")
    assert err.value.errno == errno.ENODATA
    with pytest.raises(FSError) as err:
        await other.removexattr(oino, b"user.color")
    assert err.value.errno == errno.ENODATA


async def test_reads_what_s3fs_wrote_and_keeps_its_other_namespaces(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    entry = s3fs_entry({"user.tag": b"x", "system.posix_acl_access": b"\x02\x00\x00\x00"})
    backend.objects["f"] = (b"data", {"mode": "33188", "xattr": entry}, 1_700_000_000 * 10**9)
    fs = fresh(backend, tmp_path, nursery)
    ino = await resolve(fs, "f")
    assert await fs.listxattr(ino) == [b"user.tag"]  # only the namespace the mount serves
    assert await fs.getxattr(ino, b"user.tag") == b"x"
    await fs.setxattr(ino, b"user.more", b"y")
    stored = json.loads(urllib.parse.unquote(backend.objects["f"][1]["xattr"]))
    assert stored["system.posix_acl_access"] == "AgAAAA=="
    assert set(stored) == {"user.tag", "user.more", "system.posix_acl_access"}


async def test_flags_limits_and_namespaces(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    fs = fresh(backend, tmp_path, nursery, max_metadata_bytes=2048)  # S3's room
    ino = await write_file(fs, "f", b"data")
    await fs.setxattr(ino, b"user.a", b"1", XATTR_CREATE)

    async def fails(err: int, call: object) -> None:
        with pytest.raises(FSError) as caught:
            await call  # type: ignore[misc]
        assert caught.value.errno == err

    await fails(errno.EEXIST, fs.setxattr(ino, b"user.a", b"2", XATTR_CREATE))
    await fails(errno.ENODATA, fs.setxattr(ino, b"user.b", b"2", XATTR_REPLACE))
    await fs.setxattr(ino, b"user.a", b"3", XATTR_REPLACE)
    assert await fs.getxattr(ino, b"user.a") == b"3"
    await fails(errno.E2BIG, fs.setxattr(ino, b"user.big", b"x" * (64 * 1024 + 1)))
    # Fits Linux's 64 KiB, not S3's 2 KiB of metadata: ENOSPC, and nothing changed.
    await fails(errno.ENOSPC, fs.setxattr(ino, b"user.big", b"x" * 1600))
    assert await fs.listxattr(ino) == [b"user.a"]
    await fs.setxattr(ino, b"user.fits", b"x" * 1000)
    backend.calls.clear()
    for name in (b"security.capability", b"system.posix_acl_access", b"trusted.x", b"os2.x"):
        await fails(errno.EOPNOTSUPP, fs.getxattr(ino, name))
        await fails(errno.EOPNOTSUPP, fs.setxattr(ino, name, b"v"))
    assert backend.calls == []  # refused without asking a store (every write(2) asks)
    await fails(errno.EOPNOTSUPP, fs.setxattr(ROOT_INODE, b"user.a", b"v"))
    ro = fresh(backend, tmp_path, nursery, read_only=True)
    rino = await resolve(ro, "f")
    assert await ro.getxattr(rino, b"user.a") == b"3"
    await fails(errno.EROFS, ro.setxattr(rino, b"user.a", b"v"))
    await fails(errno.EROFS, ro.removexattr(rino, b"user.a"))


async def test_listxattr_costs_no_request_when_metadata_is_known(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    for name in ("a", "b", "c"):
        put_foreign(backend, name)
    fs = fresh(backend, tmp_path, nursery)
    dh = await fs.opendir(ROOT_INODE)  # ls -l: the listing HEADs what it does not know
    nodes = [e.node for e in fs.readdir(dh, 0)]
    backend.calls.clear()
    for node in nodes:
        fs.add_lookup(node)
        assert await fs.listxattr(node.ino) == []
    assert backend.calls == []


async def test_xattr_of_a_file_being_written_goes_with_its_upload(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    fh, node = await fs.create(ROOT_INODE, "f", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    await fs.write(fh, 0, b"data")
    backend.calls.clear()
    await fs.setxattr(node.ino, b"user.k", b"v")
    assert backend.calls == []  # nothing yet: the upload will carry it
    await fs.release(fh)
    assert [c for c in backend.calls if c[0] in ("write", "copy")] == [("write", "f")]
    assert await fs.getxattr(node.ino, b"user.k") == b"v"
    assert "xattr" in backend.objects["f"][1]


async def test_directories_and_hard_links_keep_their_xattrs(
    fs: Filesystem, backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    d = await fs.mkdir(ROOT_INODE, "d", 0o755, 0, 0)
    await fs.setxattr(d.ino, b"user.dir", b"yes")
    assert "xattr" in backend.objects["d/"][1]
    ino = await write_file(fs, "f", b"data")
    await fs.setxattr(ino, b"user.before", b"1")
    node = await fs.link(ino, ROOT_INODE, "g")
    assert node.link is not None
    await fs.setxattr(node.ino, b"user.after", b"2")
    assert "xattr" in backend.objects[inode_key(node.link)][1]
    assert "xattr" not in backend.objects["g"][1]  # a pointer only names the inode object
    other = fresh(backend, tmp_path, nursery)
    assert await other.getxattr(await resolve(other, "d"), b"user.dir") == b"yes"
    g = await resolve(other, "g")
    assert await other.listxattr(g) == [b"user.after", b"user.before"]


async def test_health_files_have_no_xattrs_and_ask_no_store(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    router = HealthRouter(fs)
    health = await router.lookup(ROOT_INODE, ".health")
    backend.calls.clear()
    assert await router.listxattr(health.ino) == []
    with pytest.raises(FSError) as err:
        await router.getxattr(health.ino, b"user.x")
    assert err.value.errno == errno.ENODATA
    with pytest.raises(FSError) as err:
        await router.setxattr(health.ino, b"user.x", b"v")
    assert err.value.errno == errno.EOPNOTSUPP
    assert backend.calls == []
