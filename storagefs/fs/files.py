"""Open files: local staging copies for writing, and ranged reads with readahead.

Writes never go to the store byte by byte: the first write (or truncate) of a file fills a local
staging file — empty for new or truncated files, a full download otherwise — and flush/fsync
upload it whole. Reads of a clean file are ranged GETs of ``chunk`` bytes; a sequential reader
gets the next ``ahead`` chunks fetched in parallel, and chunks behind it are dropped, so memory
per reader stays at (ahead + 2) chunks whatever the file size.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from pathlib import Path

import trio

from storagefs.backends.base import Backend
from storagefs.fs.inodes import Node
from storagefs.fs.streaming import PartStream


class FileState(enum.Enum):
    """Where an open file's changes are (the states mountpoint-s3's write handles go through)."""

    OPEN = "open"  # nothing to upload: unchanged, or every change is on the store/journal
    DIRTY = "dirty"  # changes only in the staging file
    UPLOADING = "uploading"  # an upload of the staging file is under way
    FAILED = "failed"  # the last upload failed (``OpenFile.failed``: its errno); data kept


@dataclasses.dataclass(eq=False)
class OpenFile:
    """What all handles of one inode share while any is open."""

    node: Node
    staging: Path | None = None
    fd: int | None = None
    version: int = 0  # bumped by every change to the staging file
    uploaded_version: int = 0
    unlinked: bool = False
    handles: int = 0
    lock: trio.Lock = dataclasses.field(default_factory=trio.Lock)
    # The errno of the last upload when it failed; cleared by the next successful one. A failed
    # file outlives its handles (``kept``): its staging file is the only copy of its data.
    failed: int | None = None
    kept: bool = False
    uploading: bool = False
    # False for a file made by create() until an upload succeeds: nothing of it is on the
    # store (or in the journal), so a rename just moves the pending upload to the new name.
    stored: bool = True
    stream: PartStream | None = None  # parts uploaded while the file is written sequentially

    @property
    def dirty(self) -> bool:
        return self.version != self.uploaded_version

    @property
    def state(self) -> FileState:
        if self.uploading:
            return FileState.UPLOADING
        if self.failed is not None:
            return FileState.FAILED
        return FileState.DIRTY if self.dirty else FileState.OPEN

    def end_stream(self, why: str) -> None:
        if self.stream is not None:
            self.stream.end(why)
            self.stream = None

    def close_staging(self) -> None:
        self.end_stream("the file is closed")
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.staging is not None:
            self.staging.unlink(missing_ok=True)
            self.staging = None


class _Chunk:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.data = b""
        self.error: BaseException | None = None


class ChunkReader:
    """Ranged reads of one object with sequential readahead."""

    def __init__(
        self,
        backend: Backend,
        key: str,
        size: int,
        chunk: int,
        ahead: int,
        nursery: trio.Nursery,
    ) -> None:
        self._backend = backend
        self._key = key
        self._size = size
        self._chunk = chunk
        self._ahead = ahead
        self._nursery = nursery
        self._chunks: dict[int, _Chunk] = {}
        self._next_offset = 0

    def _start(self, index: int) -> _Chunk:
        chunk = self._chunks.get(index)
        if chunk is None:
            chunk = self._chunks[index] = _Chunk()
            self._nursery.start_soon(self._fetch, index, chunk)
        return chunk

    async def _fetch(self, index: int, chunk: _Chunk) -> None:
        try:
            chunk.data = await self._backend.read(self._key, index * self._chunk, self._chunk)
        except Exception as exc:  # handed to the reader that waits for this chunk
            chunk.error = exc
        finally:
            chunk.done.set()

    async def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self._size)
        if offset >= end:
            return b""
        first, last = offset // self._chunk, (end - 1) // self._chunk
        sequential = offset == self._next_offset
        needed = [self._start(i) for i in range(first, last + 1)]
        if sequential:
            max_index = (self._size - 1) // self._chunk
            for i in range(last + 1, min(last + self._ahead, max_index) + 1):
                self._start(i)
        parts = []
        for i, chunk in zip(range(first, last + 1), needed, strict=True):
            await chunk.done.wait()
            if chunk.error is not None:
                self._chunks.pop(i, None)  # let a later read try again
                raise chunk.error
            base = i * self._chunk
            parts.append(chunk.data[max(offset - base, 0) : end - base])
        self._next_offset = end
        # Drop what a sequential reader has passed; keep one chunk back for small re-reads.
        for i in [i for i in self._chunks if i < first - 1]:
            del self._chunks[i]
        if len(self._chunks) > self._ahead + 4:  # random access: bound memory
            for i in sorted(self._chunks, key=lambda i: abs(i - first))[self._ahead + 4 :]:
                if self._chunks[i].done.is_set():
                    del self._chunks[i]
        return b"".join(parts)


@dataclasses.dataclass(eq=False)
class Handle:
    ofile: OpenFile
    writable: bool
    reader: ChunkReader | None = None
    content: bytes | None = None  # a small file's whole content, fetched by its lookup
