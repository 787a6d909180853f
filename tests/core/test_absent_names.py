"""A name the store said is not there is remembered for the metadata TTL (issue #23: a cp or
mkdir of one new name looked it up four times, a HEAD and a listing each)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from storagefs.fs.core import Filesystem
from storagefs.fs.errors import FSError
from storagefs.fs.inodes import ROOT_INODE
from tests.core.conftest import make_fs
from tests.fakes import MemoryBackend


async def missing(fs: Filesystem, name: str) -> None:
    with pytest.raises(FSError) as info:
        await fs.lookup(ROOT_INODE, name)
    assert info.value.errno == errno.ENOENT


async def test_a_missing_name_costs_one_lookup_then_is_known(
    backend: MemoryBackend, fs: Filesystem
) -> None:
    await backend.write_bytes("other", b"x", {})  # the root is not listed: names are asked
    await missing(fs, "new")
    asked = len(backend.calls)
    assert asked > 0
    await missing(fs, "new")  # cp's stat, then the create's check, the kernel's revalidation
    await fs.mkdir(ROOT_INODE, "new", 0o755, 0, 0)  # its own check of the name: no request
    made = [c for c in backend.calls[asked:] if c[0] != "write"]
    assert made == [], f"asked the store again: {made}"
    assert fs.absent_for(ROOT_INODE, "new") == 0  # made by the mount: no negative entry


async def test_a_remembered_absence_gives_the_kernel_a_negative_entry(
    backend: MemoryBackend, fs: Filesystem
) -> None:
    await missing(fs, "gone")
    assert 0 < fs.absent_for(ROOT_INODE, "gone") <= 5.0
    assert fs.absent_for(ROOT_INODE, "never-asked") == 0


async def test_with_ttl_zero_every_lookup_asks(backend: MemoryBackend, tmp_path: Path) -> None:
    fs = make_fs(backend, tmp_path, ttl=0.0)
    await missing(fs, "new")
    asked = len(backend.calls)
    await backend.write_bytes("new", b"made elsewhere", {})
    node = await fs.lookup(ROOT_INODE, "new")
    assert node.attrs.size == len(b"made elsewhere") and len(backend.calls) > asked + 1
    fh, _ = await fs.open(node.ino, os.O_RDONLY)
    await fs.release(fh)
    fs.close()


def _forget_all(fs: Filesystem, *nodes: object) -> None:
    """The kernel forgets every inode it was given (drop_caches, memory pressure)."""
    for node in nodes:
        ino = node.ino  # type: ignore[attr-defined]
        fs.forget(ino, node.lookups)  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["mkdir", "create", "symlink", "link", "rename-file", "rename-dir"])
async def test_a_name_this_mount_makes_is_found_after_the_kernel_forgets_it(
    backend: MemoryBackend, fs: Filesystem, how: str
) -> None:
    """Found by CI: a name remembered absent, then made by a rename (or a create), was ENOENT
    once the kernel forgot the new node and looked it up again, within the metadata TTL."""
    await backend.write_bytes("other", b"x", {})
    await missing(fs, "new")
    if how == "mkdir":
        made = [await fs.mkdir(ROOT_INODE, "new", 0o755, 0, 0)]
    elif how == "create":
        fh, node = await fs.create(ROOT_INODE, "new", 0o644, os.O_WRONLY, 0, 0)
        await fs.write(fh, 0, b"data")
        await fs.release(fh)
        made = [node]
    elif how == "symlink":
        made = [await fs.symlink(ROOT_INODE, "new", b"other", 0, 0)]
    elif how == "link":
        other = await fs.lookup(ROOT_INODE, "other")
        made = [other, await fs.link(other.ino, ROOT_INODE, "new")]
    elif how == "rename-file":
        other = await fs.lookup(ROOT_INODE, "other")
        await fs.rename(ROOT_INODE, "other", ROOT_INODE, "new")
        made = [other]
    else:
        src = await fs.mkdir(ROOT_INODE, "src", 0o755, 0, 0)
        fh, inner = await fs.create(src.ino, "f", 0o644, os.O_WRONLY, 0, 0)
        await fs.release(fh)
        await fs.rename(ROOT_INODE, "src", ROOT_INODE, "new")
        made = [inner, src]
    _forget_all(fs, *made)
    node = await fs.lookup(ROOT_INODE, "new")
    assert fs.absent_for(ROOT_INODE, "new") == 0
    if how == "rename-dir":
        await fs.lookup(node.ino, "f")


async def test_a_name_below_a_directory_renamed_over_its_place_is_found(
    backend: MemoryBackend, fs: Filesystem
) -> None:
    """``dst/f`` said absent while ``dst`` was an empty directory; a directory holding ``f``
    renamed over ``dst`` makes it a name."""
    dst = await fs.mkdir(ROOT_INODE, "dst", 0o755, 0, 0)
    with pytest.raises(FSError):
        await fs.lookup(dst.ino, "f")
    src = await fs.mkdir(ROOT_INODE, "src", 0o755, 0, 0)
    fh, inner = await fs.create(src.ino, "f", 0o644, os.O_WRONLY, 0, 0)
    await fs.release(fh)
    await fs.rename(ROOT_INODE, "src", ROOT_INODE, "dst")
    _forget_all(fs, inner, src)
    moved = await fs.lookup(ROOT_INODE, "dst")
    await fs.lookup(moved.ino, "f")
