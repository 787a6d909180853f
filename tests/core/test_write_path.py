"""The core's write path: what a failed upload does to a file, errnos of write failures."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio

from storagefs.backends.base import TransientError
from storagefs.chain import FallbackChain
from storagefs.config import Settings
from storagefs.fs.errors import FSError
from storagefs.fs.inodes import ROOT_INODE
from tests.core.conftest import make_fs, read_file, resolve
from tests.fakes import MemoryBackend


class Outage(MemoryBackend):
    """A store whose uploads fail while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def write_bytes(self, key: str, data: bytes, metadata: object) -> object:  # type: ignore[override]
        if self.down:
            await trio.lowlevel.checkpoint()
            raise TransientError("simulated outage")
        return await super().write_bytes(key, data, metadata)  # type: ignore[arg-type]


def staged(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "staging").glob("stage-*"))


async def test_a_full_journal_is_enospc_on_close_and_fsync(tmp_path: Path) -> None:
    """docs/SEMANTICS.md: when the journal is full, writes fail with ENOSPC (not EIO)."""
    settings = Settings(cache_dir=tmp_path, journal_max_bytes=1024, cache_max_bytes=0)
    # With a secondary every change is journaled first, so the 1 KiB limit is hit at once.
    chain = FallbackChain.from_settings(
        [MemoryBackend("primary"), MemoryBackend("secondary")], settings
    )
    await chain.open()
    fs = make_fs(chain, tmp_path)
    try:
        fh, _ = await fs.create(ROOT_INODE, "big", 0o644, os.O_WRONLY, 0, 0)
        await fs.write(fh, 0, b"x" * 4096)
        with pytest.raises(FSError) as flushed:
            await fs.flush(fh)
        assert flushed.value.errno == errno.ENOSPC
        with pytest.raises(FSError) as synced:
            await fs.fsync(fh)
        assert synced.value.errno == errno.ENOSPC
        await fs.release(fh)
    finally:
        fs.close()
        await chain.close()


async def test_a_failed_upload_keeps_the_data_until_a_retry_succeeds(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    backend = Outage()
    fs = make_fs(backend, tmp_path)
    fs.attach(nursery)
    fh, node = await fs.create(ROOT_INODE, "f", 0o644, os.O_WRONLY, 0, 0)
    await fs.write(fh, 0, b"precious")
    with pytest.raises(FSError) as e:
        await fs.flush(fh)
    assert e.value.errno == errno.EIO
    await fs.release(fh)  # the last handle: the data must survive it
    assert [p.read_bytes() for p in staged(tmp_path)] == [b"precious"]
    assert fs.failed_files == 1 and fs.dirty_files == 1
    # The name still shows the local data, and reading it back works.
    assert (await fs.getattr(await resolve(fs, "f"))).attrs.size == 8
    assert await read_file(fs, "f") == b"precious"

    backend.down = False  # the store is back: the next close of the file uploads it
    fh, _ = await fs.open(node.ino, os.O_RDONLY)
    await fs.flush(fh)
    await fs.release(fh)
    assert backend.objects["f"][0] == b"precious"
    assert staged(tmp_path) == []
    assert fs.failed_files == 0 and fs.dirty_files == 0
    fs.close()
    assert fs.abandoned_uploads == 0


async def test_unmount_retries_a_failed_upload_then_gives_up_keeping_the_data(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    backend = Outage()
    fs = make_fs(backend, tmp_path)
    fs.attach(nursery)
    fh, _ = await fs.create(ROOT_INODE, "dir-less", 0o644, os.O_WRONLY, 0, 0)
    await fs.write(fh, 0, b"keep me")
    with pytest.raises(FSError):
        await fs.fsync(fh)
    await fs.release(fh)
    await fs.upload_all()  # what unmount does: one more try, which fails too
    assert fs.failed_files == 1
    fs.close()  # the explicit give-up: logged, counted, the bytes moved aside
    assert staged(tmp_path) == []
    assert fs.abandoned_uploads == 1
    (kept,) = list(fs.abandoned_dir.iterdir())
    assert kept.read_bytes() == b"keep me" and kept.name.endswith("dir-less")


async def test_unlinking_a_failed_file_lets_its_data_go(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    fs = make_fs(Outage(), tmp_path)
    fs.attach(nursery)
    fh, _ = await fs.create(ROOT_INODE, "f", 0o644, os.O_WRONLY, 0, 0)
    await fs.write(fh, 0, b"x")
    with pytest.raises(FSError):
        await fs.flush(fh)
    await fs.release(fh)
    await fs.unlink(ROOT_INODE, "f")
    assert staged(tmp_path) == [] and fs.failed_files == 0
    fs.close()
    assert fs.abandoned_uploads == 0
