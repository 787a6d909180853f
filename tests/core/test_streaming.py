"""Sequential writes are uploaded in parts while the file is written (storagefs/fs/streaming.py);
anything else falls back to uploading the staging file whole. Counted in backend requests."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import trio

from storagefs.backends.base import ObjectInfo, StoreBase, TransientError
from storagefs.fs import direct_io
from storagefs.fs.core import Filesystem
from storagefs.fs.inodes import ROOT_INODE
from tests.core.conftest import make_fs, read_file
from tests.fakes import MemoryBackend
from tests.test_chain import running

PART = 64 * 1024


class StreamingMemory(StoreBase, MemoryBackend):
    """The in-memory store with streaming uploads (S3's multipart, in miniature)."""

    @property
    def streams(self) -> bool:
        return True

    def __init__(self) -> None:
        super().__init__()
        self.fail_part: int | None = None

    async def start_upload(self, key: str, metadata: Mapping[str, str]) -> _Upload:
        self.calls.append(("start_upload", key))
        await trio.lowlevel.checkpoint()
        return _Upload(self, key, dict(metadata))


class _Upload:
    def __init__(self, store: StreamingMemory, key: str, metadata: dict[str, str]) -> None:
        self.store, self.key, self.metadata = store, key, metadata
        self.parts: dict[int, bytes] = {}
        self.buffers: list[bytes | bytearray] = []  # each part's buffer, as handed over

    async def put_part(self, number: int, data: bytes | bytearray) -> None:
        self.store.calls.append(("upload_part", str(number)))
        await trio.lowlevel.checkpoint()
        if number == self.store.fail_part:
            raise TransientError("part refused")
        self.parts[number] = bytes(data)  # the caller reuses its buffer
        self.buffers.append(data)

    async def complete(self) -> ObjectInfo:
        self.store.calls.append(("complete", self.key))
        await trio.lowlevel.checkpoint()
        data = b"".join(self.parts[n] for n in sorted(self.parts))
        self.store.objects[self.key] = (data, self.metadata, time.time_ns())
        return self.store._info(self.key)

    async def abort(self) -> None:
        self.store.calls.append(("abort", self.key))
        await trio.lowlevel.checkpoint()


def ops(backend: MemoryBackend) -> list[str]:
    return [op for op, _ in backend.calls if op not in ("stat", "list", "read")]


async def until(condition: Callable[[], bool]) -> None:
    """Background parts read the staging file in worker threads: poll, with a bound."""
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110 (worker threads set no event to wait on)
            await trio.sleep(0.01)


@pytest.fixture
async def streaming(tmp_path: Path, nursery: trio.Nursery) -> tuple[Filesystem, StreamingMemory]:
    backend = StreamingMemory()
    fs = make_fs(backend, tmp_path, stream_part_size=PART, stream_parallelism=2)
    fs.attach(nursery)
    return fs, backend


async def write_sequentially(fs: Filesystem, fh: int, data: bytes, step: int = 16 * 1024) -> None:
    for offset in range(0, len(data), step):
        await fs.write(fh, offset, data[offset : offset + step])


async def test_a_sequential_writer_streams_parts_before_close(
    streaming: tuple[Filesystem, StreamingMemory],
) -> None:
    fs, backend = streaming
    data = os.urandom(4 * PART + 1000)
    fh, _ = await fs.create(ROOT_INODE, "big", 0o640, os.O_WRONLY, 0, 0)
    await write_sequentially(fs, fh, data)
    await until(lambda: ops(backend).count("upload_part") == 4)
    # Four full parts are on the store before anything asked for the file to be uploaded.
    assert ops(backend) == ["start_upload"] + ["upload_part"] * 4
    await fs.flush(fh)
    await fs.release(fh)
    assert ops(backend)[5:] == ["upload_part", "complete"]  # the tail, then one assembly
    stored, meta, _ = backend.objects["big"]
    assert stored == data and meta["mode"] == str(0o100640)
    assert await read_file(fs, "big") == data


async def test_parts_reuse_the_buffers_of_parts_already_stored(
    streaming: tuple[Filesystem, StreamingMemory],
) -> None:
    """Fresh memory for every part is what a long write would pay per part (page faults):
    with two parts at a time, eight parts go through at most two buffers, and every part
    still reaches the store with its own bytes."""
    fs, backend = streaming
    data = os.urandom(8 * PART)
    fh, _ = await fs.create(ROOT_INODE, "big", 0o644, os.O_WRONLY, 0, 0)
    uploads: list[_Upload] = []
    start = backend.start_upload

    async def recorded(key: str, metadata: Mapping[str, str]) -> _Upload:
        uploads.append(await start(key, metadata))
        return uploads[-1]

    backend.start_upload = recorded  # type: ignore[method-assign]
    await write_sequentially(fs, fh, data)
    await fs.flush(fh)
    await fs.release(fh)
    assert backend.objects["big"][0] == data
    (upload,) = uploads
    assert len(upload.buffers) == 8
    assert len({id(b) for b in upload.buffers}) <= 2  # the list keeps each alive: ids differ


async def test_a_close_right_after_create_keeps_streaming(
    streaming: tuple[Filesystem, StreamingMemory],
) -> None:
    """dd and shells open, dup and close the descriptor before writing: that flush uploads
    the empty file and the writes that follow still stream."""
    fs, backend = streaming
    fh, _ = await fs.create(ROOT_INODE, "f", 0o644, os.O_WRONLY, 0, 0)
    await fs.flush(fh)
    data = os.urandom(2 * PART)
    await write_sequentially(fs, fh, data)
    await fs.flush(fh)
    await fs.release(fh)
    assert ops(backend) == ["write", "start_upload", "upload_part", "upload_part", "complete"]
    assert backend.objects["f"][0] == data


async def test_a_small_file_is_one_upload(streaming: tuple[Filesystem, StreamingMemory]) -> None:
    fs, backend = streaming
    fh, _ = await fs.create(ROOT_INODE, "small", 0o644, os.O_WRONLY, 0, 0)
    await fs.write(fh, 0, b"x" * (PART - 1))
    await fs.flush(fh)
    await fs.release(fh)
    assert ops(backend) == ["write"]


async def test_a_writer_that_seeks_back_falls_back_to_the_staging_file(
    streaming: tuple[Filesystem, StreamingMemory],
) -> None:
    fs, backend = streaming
    data = bytearray(os.urandom(3 * PART))
    fh, _ = await fs.create(ROOT_INODE, "f", 0o644, os.O_RDWR, 0, 0)
    await write_sequentially(fs, fh, bytes(data))
    await until(lambda: ops(backend).count("upload_part") == 3)
    await fs.write(fh, 10, b"HEADER")  # e.g. a length patched in at the end
    data[10:16] = b"HEADER"
    await fs.flush(fh)
    await fs.release(fh)
    await until(lambda: "abort" in ops(backend))
    assert ops(backend).count("complete") == 0
    assert ops(backend).count("abort") == 1  # the parts already sent are dropped
    assert "write" in ops(backend)
    assert backend.objects["f"][0] == bytes(data)


async def test_a_failed_part_falls_back_to_the_staging_file(
    streaming: tuple[Filesystem, StreamingMemory],
) -> None:
    fs, backend = streaming
    backend.fail_part = 2
    data = os.urandom(3 * PART + 5)
    fh, _ = await fs.create(ROOT_INODE, "f", 0o644, os.O_WRONLY, 0, 0)
    await write_sequentially(fs, fh, data)
    await fs.flush(fh)
    await fs.release(fh)
    await until(lambda: "abort" in ops(backend))
    assert "complete" not in ops(backend)
    assert backend.objects["f"][0] == data


async def test_a_chmod_while_streaming_is_stored(
    streaming: tuple[Filesystem, StreamingMemory],
) -> None:
    fs, backend = streaming
    fh, node = await fs.create(ROOT_INODE, "f", 0o644, os.O_WRONLY, 0, 0)
    await write_sequentially(fs, fh, bytes(2 * PART))
    await until(lambda: ops(backend).count("upload_part") == 2)  # started with mode 0644
    await fs.setattr(node.ino, mode=0o600, fh=fh)
    await fs.flush(fh)
    await fs.release(fh)
    assert backend.objects["f"][1]["mode"] == str(0o100600)
    assert ops(backend)[-2:] == ["complete", "copy"]


async def test_a_renamed_file_streams_nothing_under_its_old_name(
    streaming: tuple[Filesystem, StreamingMemory],
) -> None:
    fs, backend = streaming
    fh, _ = await fs.create(ROOT_INODE, "old", 0o644, os.O_WRONLY, 0, 0)
    await fs.write(fh, 0, b"head")
    await fs.flush(fh)  # on the store as "old": a rename must move it
    await fs.rename(ROOT_INODE, "old", ROOT_INODE, "new")
    data = b"head" + os.urandom(3 * PART)
    for offset in range(4, len(data), PART):
        await fs.write(fh, offset, data[offset : offset + PART])
    await fs.flush(fh)
    await fs.release(fh)
    assert ("start_upload", "old") not in backend.calls
    assert set(backend.objects) == {"new"}
    assert backend.objects["new"][0] == data


async def test_a_file_hard_linked_while_it_streams_ends_up_whole_in_its_inode_object(
    streaming: tuple[Filesystem, StreamingMemory],
) -> None:
    """link() ends the stream (its parts would go under the old key): what was written is
    uploaded, copied to the inode object, and the rest is uploaded whole there at close."""
    fs, backend = streaming
    data = os.urandom(3 * PART)
    fh, node = await fs.create(ROOT_INODE, "big", 0o644, os.O_WRONLY, 0, 0)
    await write_sequentially(fs, fh, data[: 2 * PART])
    await until(lambda: ops(backend).count("upload_part") == 2)
    await fs.link(node.ino, ROOT_INODE, "other")
    await fs.write(fh, 2 * PART, data[2 * PART :])
    await fs.release(fh)
    [key] = [k for k in backend.objects if k.startswith(".storagefs/links/")]
    assert backend.objects[key][0] == data
    assert backend.objects[key][1]["storagefs-nlink"] == "2"
    link_id = key.rsplit("/", 1)[1]
    assert backend.objects["big"][1] == backend.objects["other"][1] == {"storagefs-link": link_id}
    assert await read_file(fs, "big") == await read_file(fs, "other") == data


def cached_pages(path: Path, offset: int, length: int) -> int:
    """How many pages of a file's range are in the page cache (mincore(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    with path.open("rb") as f:
        mapped = mmap.mmap(f.fileno(), length, offset=offset, access=mmap.ACCESS_COPY)
    pages = (length + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vector = (ctypes.c_ubyte * pages)()
    start = ctypes.c_char.from_buffer(mapped)
    try:
        if libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(length), vector):
            raise OSError(ctypes.get_errno(), "mincore")
    finally:
        del start
        mapped.close()
    return sum(v & 1 for v in vector)


def has_direct_io(directory: Path) -> bool:
    probe = directory / "probe"
    fd = os.open(probe, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        direct = direct_io.open_direct(fd)
        if direct is not None:
            os.close(direct)
        return direct is not None
    finally:
        os.close(fd)
        probe.unlink()


async def test_a_big_sequential_write_goes_around_the_page_cache(
    streaming: tuple[Filesystem, StreamingMemory], tmp_path: Path
) -> None:
    """Past the first part, aligned writes reach the staging file without the page cache
    (storagefs/fs/direct_io.py: fresh page-cache memory costs more than the copy), yet every
    byte is in the staging file when write() returns: it stays the source of truth."""
    fs, backend = streaming
    data = os.urandom(5 * PART)
    fh, node = await fs.create(ROOT_INODE, "big", 0o644, os.O_WRONLY, 0, 0)
    await write_sequentially(fs, fh, data)
    staging = fs.files.get(node.ino).staging
    assert staging is not None
    past_first = cached_pages(staging, PART, 4 * PART)
    # The first part goes through the cache: a file that stays small is read back from it.
    assert cached_pages(staging, 0, PART) == PART // mmap.PAGESIZE
    if has_direct_io(staging.parent):
        assert past_first == 0
    else:  # the file system has none (tmpfs before Linux 6.6): the page cache, as before
        assert past_first == 4 * PART // mmap.PAGESIZE
    assert staging.read_bytes() == data
    await until(lambda: ops(backend).count("upload_part") == 5)
    await fs.flush(fh)
    await fs.release(fh)
    assert backend.objects["big"][0] == data


async def test_unaligned_writes_among_direct_ones_reach_the_store_in_order(
    streaming: tuple[Filesystem, StreamingMemory],
) -> None:
    """A writer whose writes are not all block-aligned (a last short write, then more) mixes
    direct and cached writes in one staging file; the parts read back must see both."""
    fs, backend = streaming
    data = os.urandom(4 * PART + 3000)
    fh, _ = await fs.create(ROOT_INODE, "mixed", 0o644, os.O_WRONLY, 0, 0)
    # Two parts of aligned writes (the second one direct), then 1,000 bytes and 3,096 more
    # (through the cache, and so is the rest), aligned again, and an unaligned tail: the
    # parts read back must see the direct and the cached bytes alike.
    steps = [16 * 1024] * (2 * PART // (16 * 1024)) + [1000, 3096] + [16 * 1024] * 8
    offset = 0
    for step in [*steps, len(data)]:
        await fs.write(fh, offset, data[offset : offset + step])
        offset = min(offset + step, len(data))
    await fs.flush(fh)
    await fs.release(fh)
    assert backend.objects["mixed"][0] == data


async def test_direct_io_refused_once_is_not_tried_again_and_loses_nothing(
    streaming: tuple[Filesystem, StreamingMemory], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that opens O_DIRECT but refuses the I/O (EINVAL): that write and the
    rest of the stream go through the page cache, and the store gets every byte."""
    fs, backend = streaming
    tries: list[int] = []

    def refuse(fd: int, data: bytes, offset: int) -> int:
        tries.append(offset)
        raise OSError(errno.EINVAL, "refused")

    monkeypatch.setattr(direct_io, "pwrite", refuse)
    data = os.urandom(4 * PART + 100)
    fh, _ = await fs.create(ROOT_INODE, "f", 0o644, os.O_WRONLY, 0, 0)
    await write_sequentially(fs, fh, data)
    await fs.flush(fh)
    await fs.release(fh)
    assert tries == [PART]
    assert backend.objects["f"][0] == data


class SlowToAssemble(StreamingMemory):
    """Completing takes a while, as it does on S3 (and s3rver) for a big object."""

    async def start_upload(self, key: str, metadata: Mapping[str, str]) -> _Upload:
        upload = await super().start_upload(key, metadata)
        complete = upload.complete

        async def slow_complete() -> ObjectInfo:
            await trio.sleep(0.6)
            return await complete()

        upload.complete = slow_complete  # type: ignore[method-assign]
        return upload


async def test_a_streamed_upload_has_the_time_its_size_needs_to_complete(
    tmp_path: Path,
) -> None:
    # Through the chain, whose streaming calls are bounded like a direct write of as many
    # bytes (the write deadline plus 1 s per MiB): completing 2 MiB gets ~2.3 s, not 0.3 s.
    # Cut at the deadline, the writer would upload the whole file a second time.
    primary = SlowToAssemble()
    async with running(tmp_path, (primary,), write_deadline=0.3) as chain:
        upload = await chain.start_upload("big", {})
        assert upload is not None
        await upload.put_part(1, b"a" * (1 << 20))
        await upload.put_part(2, b"b" * (1 << 20))
        info = await upload.complete()
    assert info.size == 2 << 20
    assert primary.objects["big"][0] == b"a" * (1 << 20) + b"b" * (1 << 20)
    assert [op for op, _ in primary.calls].count("complete") == 1
