"""A new file renamed before its upload is done is uploaded once, under its final name
(rsync and editors write a temporary name, then rename it): counted in backend requests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from storagefs.chain.fallback import FallbackChain
from storagefs.config import Settings
from storagefs.fs.core import Filesystem
from storagefs.fs.inodes import ROOT_INODE
from tests.core.conftest import make_fs, read_file, resolve
from tests.fakes import MemoryBackend
from tests.fault_injection import FaultyBackend


def writes(backend: MemoryBackend) -> list[tuple[str, str]]:
    return [c for c in backend.calls if c[0] in ("write", "copy", "delete")]


async def test_renaming_an_open_new_file_moves_its_pending_upload(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    fh, _ = await fs.create(ROOT_INODE, ".final.Ab12", 0o600, os.O_WRONLY, 0, 0)
    await fs.write(fh, 0, b"content")
    await fs.rename(ROOT_INODE, ".final.Ab12", ROOT_INODE, "final")
    await fs.flush(fh)
    await fs.release(fh)
    assert writes(backend) == [("write", "final")]  # no copy, no delete, no temp upload
    assert set(backend.objects) == {"final"}
    assert await read_file(fs, "final") == b"content"


async def test_renaming_an_uploaded_file_still_copies(
    fs: Filesystem, backend: MemoryBackend
) -> None:
    """Once the store has the file, a rename must move what the store has (copy + delete)."""
    fh, _ = await fs.create(ROOT_INODE, "a", 0o644, os.O_WRONLY, 0, 0)
    await fs.write(fh, 0, b"x")
    await fs.flush(fh)
    await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b")
    await fs.release(fh)
    assert writes(backend) == [("write", "a"), ("copy", "a"), ("delete", "a")]
    assert set(backend.objects) == {"b"}


@asynccontextmanager
async def chained(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[Filesystem, Any]]:
    primary = FaultyBackend(MemoryBackend("primary"))
    values: dict[str, Any] = {"cache_dir": tmp_path, "cache_max_bytes": 0, **overrides}
    chain = FallbackChain.from_settings([primary], Settings(**values))
    await chain.open()
    fs = make_fs(chain, tmp_path)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(chain.run)
            fs.attach(nursery)
            yield fs, primary
            chain.stop()
    finally:
        fs.close()
        await chain.close()


async def rsync_like(fs: Filesystem, tmp: str, final: str, data: bytes) -> None:
    """What rsync's receiver does: write a temporary name, close, set times and mode, rename."""
    fh, node = await fs.create(ROOT_INODE, tmp, 0o600, os.O_WRONLY, 0, 0)
    await fs.write(fh, 0, data)
    await fs.flush(fh)
    await fs.release(fh)
    await fs.setattr(node.ino, mtime_ns=1_700_000_000 * 10**9)
    await fs.setattr(node.ino, mode=0o644)
    await fs.rename(ROOT_INODE, tmp, ROOT_INODE, final)


async def test_a_file_still_in_the_journal_is_uploaded_once_under_its_final_name(
    tmp_path: Path,
) -> None:
    """The primary is down: close, chmod and rename all land in the journal, and the store
    gets one upload of the final name (and a delete of the temporary one), never a copy."""
    async with chained(tmp_path) as (fs, primary):
        primary.set_down()
        await rsync_like(fs, ".f.tmp", "f", b"journaled")
        primary.set_up()
        primary.calls.clear()
        chain = fs.backend
        assert isinstance(chain, FallbackChain)
        assert await chain.flush(timeout=10)
        assert primary.calls["write"] + primary.calls["write_bytes"] == 1
        assert primary.calls["copy"] == 0
        inner = primary.inner
        assert isinstance(inner, MemoryBackend)
        assert set(inner.objects) == {"f"}
        data, meta, _ = inner.objects["f"]
        assert data == b"journaled" and meta["mode"] == str(0o100644)
        assert meta["mtime"].startswith("1700000000")


async def test_write_back_folds_rsyncs_rename_into_one_upload(tmp_path: Path) -> None:
    """Write-back mode holds new journal entries for STORAGEFS_WRITE_BACK_DELAY, so the
    attribute changes and the rename right after close replace the upload of the temporary
    name: one upload per file, no copy."""
    async with chained(tmp_path, write_mode="back", write_back_delay=30.0) as (fs, primary):
        for i in range(5):
            await rsync_like(fs, f".f{i}.XyZ", f"f{i}", b"%d" % i)
        chain = fs.backend
        assert isinstance(chain, FallbackChain)
        assert await chain.flush(timeout=10)  # a flush does not wait out the delay
        assert primary.calls["write"] + primary.calls["write_bytes"] == 5
        assert primary.calls["copy"] == 0
        inner = primary.inner
        assert isinstance(inner, MemoryBackend)
        assert {k: v[0] for k, v in inner.objects.items()} == {f"f{i}": b"%d" % i for i in range(5)}
        assert await read_file(fs, "f3") == b"3"
        assert (await fs.getattr(await resolve(fs, "f3"))).attrs.mode & 0o777 == 0o644
