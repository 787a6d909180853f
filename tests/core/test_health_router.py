"""The router in front of the core: /.health answered by inode and handle range, the rest
passed through (the tree's listing and read-only basics are in test_fs.py)."""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
import trio

from storagefs.fs.errors import FSError
from storagefs.fs.health_dir import HEALTH_INODE_BASE
from storagefs.fs.health_router import HEALTH_FH_BASE, HealthRouter
from storagefs.fs.inodes import ROOT_INODE
from tests.core.conftest import make_fs, read_file, write_file
from tests.fakes import MemoryBackend


def provider() -> dict[str, bytes]:
    return {"status.json": b'{"state": "ok"}\n'}


def make_router(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery, **options: object
) -> HealthRouter:
    core = make_fs(backend, tmp_path, **options)
    core.attach(nursery)
    return HealthRouter(core, provider)


async def errno_of(call: Awaitable[Any]) -> int:
    with pytest.raises(FSError) as e:
        await call
    return e.value.errno


async def test_root_name_is_reserved_for_every_change(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    fs = make_router(backend, tmp_path, nursery)
    await write_file(fs, "f", b"x")  # type: ignore[arg-type]
    f = await fs.lookup(ROOT_INODE, "f")
    answers = {
        "mkdir": await errno_of(fs.mkdir(ROOT_INODE, ".health", 0o755, 0, 0)),
        "symlink": await errno_of(fs.symlink(ROOT_INODE, ".health", b"f", 0, 0)),
        "mknod": await errno_of(fs.mknod(ROOT_INODE, ".health", 0o100644, 0, 0, 0)),
        "link": await errno_of(fs.link(f.ino, ROOT_INODE, ".health")),
        "create": await errno_of(fs.create(ROOT_INODE, ".health", 0o644, os.O_WRONLY, 0, 0)),
        "unlink": await errno_of(fs.unlink(ROOT_INODE, ".health")),
        "rename onto": await errno_of(fs.rename(ROOT_INODE, "f", ROOT_INODE, ".health")),
        "rename away": await errno_of(fs.rename(ROOT_INODE, ".health", ROOT_INODE, "g")),
    }
    # mkdir-like calls find the name taken; the rest are refused as changes to /.health.
    assert answers == {
        "mkdir": errno.EEXIST,
        "symlink": errno.EEXIST,
        "mknod": errno.EEXIST,
        "link": errno.EEXIST,
        "create": errno.EACCES,
        "unlink": errno.EACCES,
        "rename onto": errno.EACCES,
        "rename away": errno.EACCES,
    }
    health = await fs.lookup(ROOT_INODE, ".health")
    assert await errno_of(fs.link(f.ino, health.ino, "f")) == errno.EACCES
    assert await errno_of(fs.readlink(health.ino)) == errno.EINVAL
    assert await errno_of(fs.open(health.ino, os.O_RDONLY)) == errno.EISDIR
    assert await read_file(fs, "f") == b"x"  # type: ignore[arg-type]
    assert not [c for c in backend.calls if c[1].startswith(".health")]


async def test_read_only_mount_answers_erofs_for_the_name(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    fs = make_router(backend, tmp_path, nursery, read_only=True)
    assert await errno_of(fs.unlink(ROOT_INODE, ".health")) == errno.EROFS
    assert await errno_of(fs.mkdir(ROOT_INODE, ".health", 0o755, 0, 0)) == errno.EROFS
    assert await errno_of(fs.rmdir(ROOT_INODE, ".health")) == errno.EACCES


async def test_handles_and_inodes_stay_in_their_ranges(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    fs = make_router(backend, tmp_path, nursery)
    await write_file(fs, "f", b"core")  # type: ignore[arg-type]
    health = await fs.lookup(ROOT_INODE, ".health")
    status = await fs.lookup(health.ino, "status.json")
    f = await fs.lookup(ROOT_INODE, "f")
    assert status.ino >= HEALTH_INODE_BASE > f.ino
    hfh, keep = await fs.open(status.ino, os.O_RDONLY)
    cfh, _ = await fs.open(f.ino, os.O_RDONLY)
    hdh = await fs.opendir(health.ino)
    cdh = await fs.opendir(ROOT_INODE)
    assert min(hfh, hdh) >= HEALTH_FH_BASE > max(cfh, cdh)
    assert not keep and fs.is_virtual(hfh) and not fs.is_virtual(cfh)
    assert await fs.read(hfh, 0, 100) == b'{"state": "ok"}\n'
    assert await fs.read(cfh, 0, 100) == b"core"
    assert await errno_of(fs.write(hfh, 0, b"x")) == errno.EBADF
    await fs.flush(hfh)
    assert [e.name for e in fs.readdir(hdh, 0)] == ["status.json"]
    assert [e.name for e in fs.readdir(cdh, 0)] == ["f"]
    fs.forget(status.ino, 1)  # health nodes are not the core's: nothing to forget there
    await fs.release(hfh)
    await fs.release(cfh)
    fs.releasedir(hdh)
    fs.releasedir(cdh)
    assert await errno_of(fs.read(hfh, 0, 1)) == errno.EBADF
    assert await errno_of(fs.read(cfh, 0, 1)) == errno.EBADF
    with pytest.raises(FSError):
        fs.readdir(hdh, 0)
