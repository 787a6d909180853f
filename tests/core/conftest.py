from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from storagefs.fs.core import Filesystem, FsOptions, build_filesystem
from storagefs.fs.inodes import ROOT_INODE
from tests.fakes import MemoryBackend
from tests.fault_injection import FaultyBackend


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


def make_fs(backend: object, tmp_path: Path, **kw: object) -> Filesystem:
    opts = FsOptions(
        staging_dir=tmp_path / "staging",
        metadata_ttl=kw.pop("ttl", 5.0),  # type: ignore[arg-type]
        read_chunk_size=kw.pop("chunk", 64 * 1024),  # type: ignore[arg-type]
        metadata_cache=tmp_path / "meta.db",
        **kw,  # type: ignore[arg-type]
    )
    return build_filesystem(backend, opts)  # type: ignore[arg-type]


def attached(backend: object, tmp_path: Path, nursery: trio.Nursery, **kw: object) -> Filesystem:
    """A core (see make_fs) whose background work (readahead, streams) runs in ``nursery``."""
    fs = make_fs(backend, tmp_path, **kw)
    fs.attach(nursery)
    return fs


@asynccontextmanager
async def over_two_remotes(
    tmp_path: Path, nursery: trio.Nursery
) -> AsyncIterator[tuple[Filesystem, FaultyBackend, FaultyBackend]]:
    """A core over a chain of two in-memory remotes (primary, secondary) that a test may take
    down; after the block both answer again, the journal must drain to them within 10 s,
    and the core is closed."""
    from tests.test_chain import remotes, running

    primary, secondary = remotes()
    async with running(tmp_path / "chain", (primary, secondary)) as chain:
        fs = attached(chain, tmp_path, nursery)
        yield fs, primary, secondary
        primary.set_up()
        secondary.set_up()
        assert await chain.flush(10)
        fs.close()


@pytest.fixture
async def fs(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> AsyncIterator[Filesystem]:
    f = make_fs(backend, tmp_path)
    f.attach(nursery)
    yield f
    f.close()


async def resolve(fs: Filesystem, path: str) -> int:
    ino = ROOT_INODE
    for part in [p for p in path.split("/") if p]:
        ino = (await fs.lookup(ino, part)).ino
    return ino


async def write_file(fs: Filesystem, path: str, data: bytes, mode: int = 0o644) -> int:
    parent, _, name = path.rpartition("/")
    pino = await resolve(fs, parent)
    fh, node = await fs.create(pino, name, mode, os.O_WRONLY | os.O_CREAT, 0, 0)
    if data:
        await fs.write(fh, 0, data)
    await fs.flush(fh)
    await fs.release(fh)
    return node.ino


async def read_file(fs: Filesystem, path: str) -> bytes:
    ino = await resolve(fs, path)
    fh, _ = await fs.open(ino, os.O_RDONLY)
    node = await fs.getattr(ino)
    out = b""
    off = 0
    while True:
        chunk = await fs.read(fh, off, 100_000)
        if not chunk:
            break
        out += chunk
        off += len(chunk)
    await fs.release(fh)
    assert len(out) == node.attrs.size
    return out
