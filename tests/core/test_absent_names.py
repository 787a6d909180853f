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
