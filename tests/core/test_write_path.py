"""The core's write path: what a failed upload does to a file, the one error type the core
raises (converted at its edge), the states a file goes through."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
import trio

from storagefs.backends.base import (
    BackendUnavailable,
    InvalidRequest,
    NoSpace,
    PermissionDenied,
    TransientError,
)
from storagefs.chain.fallback import FallbackChain
from storagefs.config import Settings
from storagefs.fs.core import Filesystem
from storagefs.fs.errors import FSError
from storagefs.fs.files import Clean, Dirty, Failed, Uploading, UploadState
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


async def failed_file(fs: Filesystem, name: str, data: bytes) -> tuple[int, FSError]:
    """Create ``name`` with ``data`` over a store that refuses it, close it; (inode, error)."""
    fh, node = await fs.create(ROOT_INODE, name, 0o644, os.O_WRONLY, 0, 0)
    await fs.write(fh, 0, data)
    with pytest.raises(FSError) as failed:
        await fs.flush(fh)
    await fs.release(fh)  # the last handle: the data must survive it
    return node.ino, failed.value


async def emptied(tmp_path: Path) -> None:
    """Wait until no staging file holds data (returned ones are emptied in the background)."""
    with trio.fail_after(5):
        while staged(tmp_path):  # noqa: ASYNC110 -- a worker thread empties them
            await trio.sleep(0.01)


def staged(tmp_path: Path) -> list[Path]:
    """Staging files holding data (empty ones wait in the pool for the next file)."""
    return sorted(p for p in (tmp_path / "staging").glob("stage-*") if p.stat().st_size)


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
    ino, error = await failed_file(fs, "f", b"precious")
    assert error.errno == errno.EIO
    assert [p.read_bytes() for p in staged(tmp_path)] == [b"precious"]
    assert fs.failed_files == 1 and fs.dirty_files == 1
    # The name still shows the local data, and reading it back works.
    assert (await fs.getattr(await resolve(fs, "f"))).attrs.size == 8
    assert await read_file(fs, "f") == b"precious"

    backend.down = False  # the store is back: the next close of the file uploads it
    fh, _ = await fs.open(ino, os.O_RDONLY)
    await fs.flush(fh)
    await fs.release(fh)
    assert backend.objects["f"][0] == b"precious"
    await emptied(tmp_path)
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
    await failed_file(fs, "dir-less", b"keep me")
    await fs.upload_all()  # what unmount does: one more try, which fails too
    assert fs.failed_files == 1
    fs.close()  # the explicit give-up: logged, counted, the bytes moved aside
    await emptied(tmp_path)
    assert staged(tmp_path) == []
    assert fs.abandoned_uploads == 1
    (kept,) = list(fs.abandoned_dir.iterdir())
    assert kept.read_bytes() == b"keep me" and kept.name.endswith("dir-less")


async def test_unlinking_a_failed_file_lets_its_data_go(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    fs = make_fs(Outage(), tmp_path)
    fs.attach(nursery)
    await failed_file(fs, "f", b"x")
    await fs.unlink(ROOT_INODE, "f")
    await emptied(tmp_path)
    assert staged(tmp_path) == [] and fs.failed_files == 0
    fs.close()
    assert fs.abandoned_uploads == 0


# --- one error type at the core's edge, explicit file states -------------------------------


class Refusing(MemoryBackend):
    """Answers reads, refuses every upload and every copy with ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def write_bytes(self, key: str, data: bytes, metadata: object) -> object:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        raise self.error

    async def copy(self, src: str, dst: str, metadata: object = None) -> object:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        raise self.error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (PermissionDenied("no"), errno.EACCES),
        (NoSpace("full"), errno.ENOSPC),
        (InvalidRequest("bad"), errno.EINVAL),
        (BackendUnavailable("down"), errno.EIO),
    ],
)
async def test_backend_errors_leave_the_core_as_its_own_error(
    tmp_path: Path, nursery: trio.Nursery, error: Exception, expected: int
) -> None:
    backend = Refusing(error)
    backend.objects["old"] = (b"data", {}, 0)
    fs = make_fs(backend, tmp_path)
    fs.attach(nursery)
    # A metadata change (a server-side copy) and a rename: the error is converted at the edge.
    ino = await resolve(fs, "old")
    with pytest.raises(FSError) as chmod:
        await fs.setattr(ino, mode=0o600)
    assert chmod.value.errno == expected and chmod.value.level == logging.WARNING
    with pytest.raises(FSError) as moved:
        await fs.rename(ROOT_INODE, "old", ROOT_INODE, "new")
    assert moved.value.errno == expected
    assert isinstance(moved.value.__cause__, type(error))  # the backend's error is the cause
    fs.close()


async def test_routine_answers_are_quiet(fs: Filesystem) -> None:
    with pytest.raises(FSError) as missing:
        await fs.lookup(ROOT_INODE, "absent")
    assert missing.value.errno == errno.ENOENT and missing.value.level == logging.DEBUG


async def test_a_file_goes_through_explicit_states(tmp_path: Path, nursery: trio.Nursery) -> None:
    backend = Outage()
    fs = make_fs(backend, tmp_path)
    fs.attach(nursery)
    seen: list[UploadState] = []
    upload = backend.write_bytes

    async def watching(key: str, data: bytes, metadata: object) -> object:
        seen.append(fs.files.get(node.ino).state)
        return await upload(key, data, metadata)

    backend.write_bytes = watching  # type: ignore[method-assign]
    fh, node = await fs.create(ROOT_INODE, "f", 0o644, os.O_WRONLY, 0, 0)
    ofile = fs.files.get(node.ino)
    await fs.write(fh, 0, b"x")
    assert ofile.state == Dirty()
    with pytest.raises(FSError):
        await fs.flush(fh)
    assert ofile.state == Failed(errno.EIO) and ofile.failed == errno.EIO
    backend.down = False
    await fs.flush(fh)
    assert ofile.state == Clean() and ofile.failed is None
    assert [type(state) for state in seen] == [Uploading, Uploading]
    assert seen[1] == Uploading(ofile.version, Failed(errno.EIO))  # the retry
    await fs.release(fh)
    fs.close()


class Ops:
    """What the adapter's guard needs of StorageOperations for these tests."""


async def test_the_adapter_maps_the_core_error_and_answers_eio_to_bugs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import pyfuse3

    from storagefs.daemon.fuse_ops import _guarded

    @_guarded
    async def refused(_ops: object) -> None:
        await trio.lowlevel.checkpoint()
        raise FSError(errno.ENOSPC, "journal full", level=logging.WARNING)

    @_guarded
    async def buggy(_ops: object) -> None:
        await trio.lowlevel.checkpoint()
        raise KeyError("a bug")

    with pytest.raises(pyfuse3.FUSEError) as mapped:
        await refused(Ops())
    assert mapped.value.errno == errno.ENOSPC
    assert any(r.levelno == logging.WARNING and "journal full" in r.message for r in caplog.records)
    with caplog.at_level(logging.ERROR), pytest.raises(pyfuse3.FUSEError) as bug:
        await buggy(Ops())
    assert bug.value.errno == errno.EIO
    assert any("unexpected error in buggy" in r.message for r in caplog.records)


async def test_only_write_only_handles_of_plain_files_bypass_the_page_cache(
    fs: Filesystem,
) -> None:
    fh, node = await fs.create(ROOT_INODE, "f", 0o644, os.O_WRONLY | os.O_TRUNC, 0, 0)
    assert fs.writes_bypass_page_cache(fh)
    await fs.release(fh)
    for flags, bypass in ((os.O_WRONLY, True), (os.O_RDWR, False), (os.O_RDONLY, False)):
        fh = await fs.open(node.ino, flags)
        assert fs.writes_bypass_page_cache(fh[0]) is bypass, flags
        await fs.release(fh[0])
    # The kernel clears setuid/setgid on a write only on its cached path.
    for bits in (0o4755, 0o2755):
        await fs.setattr(node.ino, mode=bits)
        fh = await fs.open(node.ino, os.O_WRONLY)
        assert not fs.writes_bypass_page_cache(fh[0]), oct(bits)
        await fs.release(fh[0])
    assert not fs.writes_bypass_page_cache(12345)  # not a handle


async def test_an_ftruncate_leaves_no_staging_file_after_the_close(tmp_path: Path) -> None:
    """setattr(size, fh) took a count of the open file it never gave back: the file stayed
    open for the mount's life, its staging copy with it."""
    backend = MemoryBackend()
    await backend.write_bytes("f", b"0123456789", {})
    fs = make_fs(backend, tmp_path)
    ino = await resolve(fs, "f")
    fh, _ = await fs.open(ino, os.O_RDWR)
    await fs.setattr(ino, size=4, fh=fh)  # ftruncate(fd, 4)
    await fs.write(fh, 4, b"!")
    await fs.flush(fh)
    await fs.release(fh)
    assert backend.objects["f"][0] == b"0123!"
    assert fs.dirty_files == 0
    await emptied(tmp_path)  # the staging file went back to the pool, emptied
    fs.close()
