"""Open files: local staging copies for writing, and ranged reads with readahead.

Writes never go to the store byte by byte: the first write (or truncate) of a file fills a local
staging file — empty for new or truncated files, a full download otherwise — and flush/fsync
upload it whole (a new file written sequentially is uploaded in parts while it is written:
storagefs/fs/streaming.py). Reads of a clean file are ranged GETs of ``chunk`` bytes; a
sequential reader gets the next ``ahead`` chunks fetched in parallel, and chunks behind it are
dropped, so memory per reader stays at (ahead + 2) chunks whatever the file size.

The types of one open file (``OpenFile`` with its upload state :data:`UploadState`, ``Handle``)
and the pieces they use (``StagingFiles``, ``ChunkReader``, ``ReadBudget``); who holds them
and changes their state is ``handles.OpenFiles`` (and ``core.Filesystem``'s read/write paths).
This module calls nothing of the core.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import tempfile
from pathlib import Path

import trio

from storagefs.backends.base import Backend
from storagefs.fs.inodes import Node
from storagefs.fs.streaming import PartStream

log = logging.getLogger("storagefs.fs")


@dataclasses.dataclass(frozen=True, slots=True)
class Clean:
    """Nothing to upload: unchanged, or every change is on the store (or in the journal)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Dirty:
    """Changes only in the staging file."""


@dataclasses.dataclass(frozen=True, slots=True)
class Failed:
    """The last upload failed with ``errno``; the staging file, the only copy of the data,
    is kept (the open file outlives its handles, ``OpenFile.kept``) for a retry."""

    errno: int


@dataclasses.dataclass(frozen=True, slots=True)
class Uploading:
    """An upload of the staging file as of change ``version`` is under way. Changes that
    land meanwhile (a write does not wait for the upload) leave the file Dirty after it;
    an upload that ends without an answer (cancelled) leaves it as it was ``before``."""

    version: int
    before: Dirty | Failed


# Where an open file's changes are (mountpoint-s3's UploadState, with a failure keeping its
# errno): Clean -> Dirty (a change) -> Uploading -> Clean (or Dirty: changed meanwhile) or
# Failed(errno) -> Uploading (a retry: flush, fsync, release, unmount) -> ...
UploadState = Clean | Dirty | Uploading | Failed


@dataclasses.dataclass(eq=False)
class OpenFile:
    """What all handles of one inode share while any is open.

    ``state`` says where its changes are (:data:`UploadState`); the other fields are its
    life, independent of that: ``unlinked`` (no name left: nothing uploads it again),
    ``kept`` (a file whose changes are not on the store outlives its last handle),
    ``stored`` (False for a file made by create() until an upload succeeds: nothing of it is
    on the store, so a rename just moves the pending upload to the new name)."""

    node: Node
    staging: Path | None = None
    fd: int | None = None
    # Changes to the staging file so far; an upload remembers which one it sends.
    version: int = 0
    state: UploadState = Clean()
    unlinked: bool = False
    handles: int = 0
    lock: trio.Lock = dataclasses.field(default_factory=trio.Lock)
    kept: bool = False
    stored: bool = True
    stream: PartStream | None = None  # parts uploaded while the file is written sequentially

    @property
    def dirty(self) -> bool:
        """Some change is not on the store (Dirty, Uploading or Failed)."""
        return not isinstance(self.state, Clean)

    @property
    def failed(self) -> int | None:
        """The errno of the last upload, while it is a failure no upload has undone."""
        state = self.state
        if isinstance(state, Uploading):
            state = state.before
        return state.errno if isinstance(state, Failed) else None

    def changed(self) -> None:
        """The staging file (or the attributes its upload carries) changed."""
        self.version += 1
        if isinstance(self.state, Clean):
            self.state = Dirty()

    def upload_starts(self, version: int) -> None:
        """An upload of change ``version`` begins (the caller holds ``lock``)."""
        state = self.state
        assert isinstance(state, Dirty | Failed), state
        self.state = Uploading(version, state)

    def upload_ends(self) -> None:
        """The upload ended with no verdict (its answer is handled by the caller, or it
        was cancelled): the file is as it was before it."""
        if isinstance(self.state, Uploading):
            self.state = self.state.before

    def upload_failed(self, err: int) -> None:
        self.state = Failed(err)

    def uploaded(self, version: int) -> None:
        """Change ``version`` is on the store; later ones still wait for the next upload."""
        self.state = Clean() if self.version == version else Dirty()

    def end_stream(self, why: str) -> None:
        if self.stream is not None:
            self.stream.end(why)
            self.stream = None

    def close_staging(self, pool: StagingFiles | None = None) -> None:
        """Let the staging file go: back to ``pool`` for another file, else deleted."""
        self.end_stream("the file is closed")
        fd, path = self.fd, self.staging
        self.fd = self.staging = None
        if fd is not None and path is not None and pool is not None:
            pool.give(fd, path)
            return
        if fd is not None:
            os.close(fd)
        if path is not None:
            path.unlink(missing_ok=True)


def same_file_or_reopened(fd: int, path: Path) -> int:
    """``fd`` while it still is the file named ``path``; else a descriptor of the file named
    so now, the old one closed.

    Called after a download into ``path``: the backends write in place (the contract), but a
    download that renamed a temporary file over ``path`` would leave the handle writing into
    an unlinked file while every upload reads the name, and each change would vanish with
    success returned (issue #21). Two local stats are the price of never meeting that again."""
    if _same_file(fd, path):
        return fd
    log.warning("the download replaced staging file %s: reopened", path.name)
    new = os.open(path, os.O_RDWR)
    os.close(fd)
    return new


def check_same_file(fd: int, path: Path) -> None:
    """Raise unless ``fd`` is the file named ``path`` (what an upload by name will send)."""
    if not _same_file(fd, path):
        raise OSError(errno.EIO, f"staging file {path.name} is not the open file any more")


def _same_file(fd: int, path: Path) -> bool:
    held, named = os.fstat(fd), path.stat()
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


class StagingFiles:
    """Empty staging files, made and recycled off the request path.

    Creating a file costs ~0.6 ms on this machine's ext4, and truncating a used one about as
    much — together as much as the rest of a FUSE create. Once :meth:`attach` gave it a
    nursery, a short-lived task (in a worker thread) keeps a few empty files ready and
    truncates returned ones for reuse, so ``cp -r`` of many small files finds a file ready
    while it waits for the last upload. No task lingers when there is nothing to do."""

    def __init__(self, directory: Path, keep: int = 8) -> None:
        self.directory = directory
        self.keep = keep
        self._ready: list[tuple[int, Path]] = []
        self._used: list[tuple[int, Path]] = []
        self._nursery: trio.Nursery | None = None
        self._busy = False
        self._closed = False

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._kick()

    def take(self) -> tuple[int, Path]:
        found = self._ready.pop() if self._ready else None
        self._kick()  # make another
        if found is not None:
            return found
        fd, name = tempfile.mkstemp(dir=self.directory, prefix="stage-")
        return fd, Path(name)

    def give(self, fd: int, path: Path) -> None:
        """Take back a staging file no one uses any more (emptied before reuse)."""
        if self._nursery is not None and not self._closed:
            self._used.append((fd, path))
            self._kick()
            return
        os.close(fd)
        path.unlink(missing_ok=True)

    def _kick(self) -> None:
        if self._nursery is None or self._busy or self._closed:
            return
        if self._used or len(self._ready) < self.keep:
            self._busy = True
            self._nursery.start_soon(self._refill)

    async def _refill(self) -> None:
        try:
            while not self._closed and (self._used or len(self._ready) < self.keep):
                used, self._used = self._used, []
                want = self.keep - len(self._ready)
                ready = await trio.to_thread.run_sync(self._prepare, used, want)
                self._ready.extend(ready)
        finally:
            self._busy = False
            if self._closed:  # closed while they were being made
                self.close()

    def _prepare(self, used: list[tuple[int, Path]], want: int) -> list[tuple[int, Path]]:
        ready: list[tuple[int, Path]] = []
        for fd, path in used:
            if len(ready) < want:
                try:
                    os.ftruncate(fd, 0)  # nothing of the last file's data is left in it
                except OSError:
                    pass
                else:
                    ready.append((fd, path))
                    continue
            os.close(fd)
            path.unlink(missing_ok=True)
        while len(ready) < want:
            fd, name = tempfile.mkstemp(dir=self.directory, prefix="stage-")
            ready.append((fd, Path(name)))
        return ready

    def close(self) -> None:
        self._closed = True
        files = self._ready + self._used
        self._ready, self._used = [], []
        for fd, path in files:
            os.close(fd)
            path.unlink(missing_ok=True)


class ReadBudget:
    """Bytes of read chunks held or in flight, across every open file of the mount.

    Without it each reader holds (ahead + 2) chunks, so 100 readers would hold 100 times the
    readahead. Prefetch only happens while the shared budget has room; a read that finds the
    budget spent fetches a small range outside it (``SPILL_BYTES`` or one chunk if smaller,
    the one buffer such a reader keeps), so memory stays bounded by the budget plus a small
    buffer per reader, whatever the number of readers.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0  # the most ever held at once (for tests and /.health)

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        self.peak = max(self.peak, self.used)
        return True

    def give(self, n: int) -> None:
        self.used -= n
        assert self.used >= 0, "read budget given back twice"


# What a reader over budget fetches per request and keeps: small next to a readahead window
# (ahead x chunk = 32 MiB by default), large enough that the next kernel reads (128 KiB each)
# are served without a request each.
SPILL_BYTES = 1024 * 1024


class _Chunk:
    def __init__(self, charged: int) -> None:
        self.done = trio.Event()
        self.data = b""
        self.error: BaseException | None = None
        self.charged = charged  # bytes taken from the budget, given back when dropped


class ChunkReader:
    """Ranged reads of one object with sequential readahead, for one open handle.

    Its fetches run in a nursery of its own (hosted by the core's), so ``close()`` — called
    when the handle is released — cancels whatever is still in flight or queued: no request is
    made for a file nobody reads any more, and its chunks go back to the shared budget.
    """

    def __init__(
        self,
        backend: Backend,
        key: str,
        size: int,
        chunk: int,
        ahead: int,
        budget: ReadBudget,
    ) -> None:
        self._backend = backend
        self._key = key
        self._size = size
        self._chunk = chunk
        self._ahead = ahead
        self._budget = budget
        self._chunks: dict[int, _Chunk] = {}
        self._next_offset = 0
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._spill: tuple[int, bytes] = (0, b"")  # (offset, bytes) fetched over budget

    @classmethod
    async def open(
        cls,
        host: trio.Nursery,
        backend: Backend,
        key: str,
        size: int,
        chunk: int,
        ahead: int,
        budget: ReadBudget,
    ) -> ChunkReader:
        reader = cls(backend, key, size, chunk, ahead, budget)
        await host.start(reader._run)
        return reader

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()  # until close() cancels this nursery

    def close(self) -> None:
        """Cancel every fetch of this reader and give its chunks back to the budget."""
        if self._closed:
            return
        self._closed = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        for index in list(self._chunks):
            self._drop(index)
        self._spill = (0, b"")

    def _drop(self, index: int) -> None:
        chunk = self._chunks.pop(index)
        self._budget.give(chunk.charged)
        chunk.charged = 0

    def _start(self, index: int) -> _Chunk | None:
        chunk = self._chunks.get(index)
        if chunk is not None:
            return chunk
        if self._closed:
            raise trio.ClosedResourceError("the file was released")
        size = min(self._chunk, self._size - index * self._chunk)
        if not self._budget.take(size):
            return None  # the budget is spent: no prefetch, and a read fetches just its bytes
        chunk = self._chunks[index] = _Chunk(size)
        assert self._nursery is not None, "ChunkReader.open() was not used"
        self._nursery.start_soon(self._fetch, index, chunk)
        return chunk

    async def _fetch(self, index: int, chunk: _Chunk) -> None:
        try:
            chunk.data = await self._backend.read(self._key, index * self._chunk, self._chunk)
        except Exception as exc:  # handed to the reader that waits for this chunk
            chunk.error = exc
        finally:
            chunk.done.set()

    async def _read_over_budget(self, offset: int, end: int) -> bytes:
        """Serve a read outside the budget from one small buffer, refilled as the reader goes."""
        base, data = self._spill
        if not (base <= offset and end <= base + len(data)):
            length = max(end - offset, min(SPILL_BYTES, self._chunk))
            data = await self._backend.read(self._key, offset, min(length, self._size - offset))
            base = offset
            self._spill = (base, data)
        return data[offset - base : end - base]

    async def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self._size)
        if offset >= end:
            return b""
        first, last = offset // self._chunk, (end - 1) // self._chunk
        # The kernel's readahead sends several reads at once and they can reach us out of
        # order (each FUSE request is its own task): a read within a chunk of where the last
        # one ended still counts as sequential, or that read would start no readahead.
        sequential = abs(offset - self._next_offset) <= self._chunk
        needed = [self._start(i) for i in range(first, last + 1)]
        if any(chunk is None for chunk in needed):
            self._next_offset = end
            return await self._read_over_budget(offset, end)
        if sequential:
            max_index = (self._size - 1) // self._chunk
            for i in range(last + 1, min(last + self._ahead, max_index) + 1):
                if self._start(i) is None:
                    break
        parts = []
        for i, chunk in zip(range(first, last + 1), needed, strict=True):
            assert chunk is not None
            await chunk.done.wait()
            if chunk.error is not None:
                if self._chunks.get(i) is chunk:
                    self._drop(i)  # let a later read try again
                raise chunk.error
            base = i * self._chunk
            parts.append(chunk.data[max(offset - base, 0) : end - base])
        # A read that arrived late must not move the reader back.
        self._next_offset = max(self._next_offset, end) if sequential else end
        # Drop what a sequential reader has passed; keep one chunk back for small re-reads.
        for i in [i for i in self._chunks if i < first - 1]:
            self._drop(i)
        if len(self._chunks) > self._ahead + 4:  # random access: bound memory
            for i in sorted(self._chunks, key=lambda i: abs(i - first))[self._ahead + 4 :]:
                if self._chunks[i].done.is_set():
                    self._drop(i)
        return b"".join(parts)


@dataclasses.dataclass(eq=False)
class Handle:
    ofile: OpenFile
    writable: bool
    write_only: bool = False  # opened O_WRONLY: it never reads back what it writes
    reader: ChunkReader | None = None
    content: bytes | None = None  # a small file's whole content, fetched by its lookup
