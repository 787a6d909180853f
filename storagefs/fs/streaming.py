"""Uploading a file while it is written sequentially, part by part (as mountpoint-s3 and rclone
do), so that close() costs little more than the last part instead of the whole upload.

A new or truncated file gets a :class:`PartStream`. The staging file stays the source of truth:
every write goes there first (:meth:`PartStream.write`: past the first part, aligned writes go
around the page cache, see storagefs/fs/direct_io.py, and the parts are read back that way).
While each write lands at or after the bytes already handed to the uploader, every full part
of the staging file is put in the background as soon as it is complete (at most ``limiter``
parts at a time across all files, which also bounds the memory: one part in memory per slot).
close()/fsync() then put the tail and complete the upload. A file smaller than one part never
starts an upload: it is written whole, in one request, as before.

Anything else ends the stream and the file is uploaded whole at close from the staging file,
as before: a write behind the streamed bytes (the writer seeked back), a truncate, a rename, a
failed part, a store without streaming uploads (Azure, local directories), or a chain that
would journal the write (a secondary, write-back, the primary not answering: see
:meth:`storagefs.chain.fallback.FallbackChain.start_upload`). An ended stream's upload is aborted.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
from collections.abc import Awaitable, Callable

import trio

from storagefs.backends.base import Backend, BackendError, ObjectInfo, Upload, start_upload
from storagefs.fs import direct_io
from storagefs.fs.attrs import Attrs

log = logging.getLogger("storagefs.fs.streaming")


class PartStream:
    def __init__(
        self,
        backend: Backend,
        key: str,
        fd: int,
        attrs: Callable[[], Attrs],
        *,
        part_size: int,
        limiter: trio.CapacityLimiter,
        nursery: trio.Nursery,
    ) -> None:
        self.key = key
        self.dispatched = 0  # bytes [0, dispatched) are handed to part uploads
        self.started_with: Attrs | None = None  # the attributes the object is stored with
        self.ended = False  # no more parts: finish() declines, the file is uploaded whole
        self._backend = backend
        self._fd = fd
        self._attrs = attrs
        self._part_size = part_size
        self._limiter = limiter
        self._nursery = nursery
        self._upload: Upload | None = None
        self._start_lock = trio.Lock()
        self._next_number = 1
        self._done = 0  # parts the store has taken
        self._running = 0
        self._idle = trio.Event()
        self._idle.set()
        # Buffers of parts the store has taken, for the next parts: fresh memory is not free
        # (page faults, and on a VM the host backing it), a reused buffer is. At most as many
        # as this stream had in flight at once; dropped with the stream.
        self._spare: list[bytearray] = []
        # Past the first part (a file this big is a big one), aligned writes go to the staging
        # file around the page cache and parts are read back the same way, until a write there
        # goes through the cache (see _cached_writes). Opened by the first such write; None
        # before, after the stream, or where the file system has no direct I/O.
        self._direct: int | None = None
        self._direct_tried = False
        # A write past the first part went through the page cache (unaligned, or direct I/O
        # refused): the rest of the stream uses the cache too, writes and part reads (a
        # direct read would first have to wait for the kernel to write those pages back).
        self._cached_writes = False

    def write(self, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` of the staging file; the bytes written."""
        direct = not self._cached_writes and offset >= self._part_size
        if direct and direct_io.aligned(offset, len(data)):
            fd = self._direct_fd()
            if fd is not None:
                try:
                    done = direct_io.pwrite(fd, data, offset)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    # The file system opened it but refuses this I/O (an alignment it wants
                    # larger, say): the page cache, below, for the rest of this stream.
                    log.debug("%s: no direct I/O for the staging file: %s", self.key, exc)
                    done = 0
                if done == len(data):
                    return done
                # A full disk takes fewer: the page cache path says so with its own error.
                offset, data = offset + done, data[done:]
        if offset + len(data) > self._part_size:
            self._cached_writes = True
        return os.pwrite(self._fd, data, offset)

    def _direct_fd(self) -> int | None:
        if self.ended:
            return None
        if not self._direct_tried:
            self._direct_tried = True
            self._direct = direct_io.open_direct(self._fd)
        return self._direct

    def _close_direct(self) -> None:
        """Close the direct descriptor once no part is reading through it."""
        if self._direct is not None and self._running == 0:
            os.close(self._direct)
            self._direct = None

    def _read_part(self, buffer: bytearray, offset: int) -> int:
        fd = self._direct
        if fd is not None and not self._cached_writes and offset >= self._part_size:
            return direct_io.preadinto(fd, buffer, offset)
        return os.preadv(self._fd, [buffer], offset)

    def wrote(self, offset: int, size: int) -> None:
        """A write at ``offset`` left the file ``size`` bytes long: put the parts now full."""
        if self.ended:
            return
        if offset < self.dispatched:
            self.end("a write behind the bytes already streamed")
            return
        while size - self.dispatched >= self._part_size:
            self._dispatch(self._part_size)

    def end(self, why: str) -> None:
        """No streaming for this file any more; its upload (if any) is aborted."""
        if self.ended:
            return
        self.ended = True
        self._spare.clear()
        self._close_direct()  # or the last part in flight does
        log.debug("%s: streaming upload ended: %s", self.key, why)
        self._soon(self._abort)

    def _soon(self, fn: Callable[[], Awaitable[None]]) -> bool:
        try:
            self._nursery.start_soon(fn)
        except RuntimeError:  # the mount is ending: its background nursery is closed
            return False
        return True

    async def finish(self, size: int) -> ObjectInfo | None:
        """Put the tail and complete the upload of the first ``size`` bytes; None when there
        is no upload to complete (a small file, an ended stream, a failure): the caller then
        uploads the staging file whole."""
        await self._idle.wait()
        upload = self._upload
        # Every part dispatched must be on the store (a part cancelled with the mount's
        # nursery did not fail, it just never happened): never complete a shorter object.
        complete = self._done == self._next_number - 1
        if upload is None or self.ended or not complete or size < self.dispatched:
            self.end("nothing to complete")
            return None
        self.ended = True
        self._spare.clear()
        self._close_direct()  # every part is done (idle): the tail is read through the cache
        try:
            if size > self.dispatched:
                offset, length = self.dispatched, size - self.dispatched
                data = await trio.to_thread.run_sync(os.pread, self._fd, length, offset)
                await upload.put_part(self._next_number, data)
            return await upload.complete()
        except (BackendError, OSError) as exc:
            log.warning("%s: streaming upload failed (%s); uploading the file whole", self.key, exc)
            await self._abort()
            return None
        finally:
            self._upload = None

    # --- the parts --------------------------------------------------------------------

    def _dispatch(self, length: int) -> None:
        number, offset = self._next_number, self.dispatched
        self._next_number += 1
        self.dispatched += length
        if self._running == 0:
            self._idle = trio.Event()
        self._running += 1
        if not self._soon(lambda: self._put(number, offset, length)):
            self._running -= 1
            if self._running == 0:
                self._idle.set()
            self.end("the mount is ending")

    async def _put(self, number: int, offset: int, length: int) -> None:
        try:
            async with self._limiter:
                upload = await self._started()
                if upload is None or self.ended:
                    return
                data = self._spare.pop() if self._spare else bytearray(length)
                got = await trio.to_thread.run_sync(self._read_part, data, offset)
                if got != length:
                    raise OSError(f"staging file shorter than part {number} ({got} bytes)")
                await upload.put_part(number, data)
                self._done += 1
                # Only a part the store took hands its buffer on: a failed or cancelled call
                # may still be sending it. (A late attempt that did send other bytes would not
                # match the ETag the completion names, and the store refuses that.)
                if not self.ended:
                    self._spare.append(data)
        except (BackendError, OSError) as exc:  # the file is then uploaded whole at close
            self.end(f"part {number} failed: {exc}")
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()
                if self.ended:
                    self._close_direct()

    async def _started(self) -> Upload | None:
        async with self._start_lock:
            if self._upload is None and not self.ended:
                attrs = dataclasses.replace(self._attrs())
                upload = await start_upload(self._backend, self.key, attrs.to_metadata())
                if upload is None:
                    self.end("the store takes this write whole")
                    return None
                self._upload, self.started_with = upload, attrs
                if self._has_ended():  # ended while it started: finish() will not complete it
                    self._soon(self._abort)
            return self._upload

    def _has_ended(self) -> bool:
        return self.ended  # read anew after an await (mypy keeps the narrowed value)

    async def _abort(self) -> None:
        await self._idle.wait()  # parts in flight finish (or fail) first
        async with self._start_lock:
            upload, self._upload = self._upload, None
        if upload is None:
            return
        try:
            await upload.abort()
        except BackendError as exc:
            # The store keeps the parts until its lifecycle rule for incomplete uploads runs.
            log.warning("%s: could not abort a streaming upload: %s", self.key, exc)
