"""How long the kernel may keep what the core answered: an entry and its attributes as long as
the core trusts them, and a name found missing (a negative entry) as long as the listing that
said so; the FUSE adapter passes both on."""

from __future__ import annotations

import errno
from pathlib import Path

import pyfuse3
import pytest
import trio

from storagefs.daemon.fuse_ops import StorageOperations
from storagefs.fs.errors import FSError
from storagefs.fs.inodes import Node
from tests.core.conftest import make_fs, resolve
from tests.fakes import MemoryBackend

TTL = 5.0


async def test_a_missing_name_is_trusted_as_long_as_the_listing(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    fs = make_fs(backend, tmp_path, ttl=TTL)
    fs.attach(nursery)
    clock = [1000.0]
    fs.known.now = lambda: clock[0]  # type: ignore[method-assign]
    backend.objects["d/f"] = (b"f", {}, 0)
    d = await resolve(fs, "d")
    with pytest.raises(FSError):
        await fs.lookup(d, "missing")
    assert fs.absent_for(d) == 0.0  # the store said so, no listing: nothing bounds it

    dh = await fs.opendir(d)
    assert [e.name for e in fs.readdir(dh, 0)] == ["f"]
    fs.releasedir(dh)
    with pytest.raises(FSError):
        await fs.lookup(d, "missing")
    assert fs.absent_for(d) == TTL
    clock[0] += 3
    assert fs.absent_for(d) == pytest.approx(TTL - 3)
    node = await fs.lookup(d, "f")  # from the same listing: trusted as long as it
    assert fs.trusted_for(node) == pytest.approx(TTL - 3)
    clock[0] += TTL
    assert fs.absent_for(d) == 0.0
    assert fs.trusted_for(node) == 0.0
    fs.close()


class Router:
    """The part of the HealthRouter the adapter's lookup uses."""

    def __init__(self, absent: float) -> None:
        self.absent = absent

    async def lookup(self, parent_ino: int, name: str) -> Node:
        await trio.lowlevel.checkpoint()
        raise FSError(errno.ENOENT)

    def absent_for(self, parent_ino: int, name: str | None = None) -> float:
        return self.absent


async def test_the_adapter_answers_a_trusted_miss_with_a_negative_entry() -> None:
    ops = StorageOperations(Router(2.5))  # type: ignore[arg-type]
    entry = await ops.lookup(1, b"missing", None)  # type: ignore[arg-type]
    assert (entry.st_ino, entry.entry_timeout) == (0, 2.5)
    with pytest.raises(pyfuse3.FUSEError) as refused:
        await StorageOperations(Router(0.0)).lookup(1, b"missing", None)  # type: ignore[arg-type]
    assert refused.value.errno == errno.ENOENT
