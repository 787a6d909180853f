"""Open files and their uploads: :class:`OpenFiles`, one per core.

It owns the open files (one :class:`~storagefs.fs.files.OpenFile` per open inode, by inode),
the file handles that share them (``Handle``, by handle number; directory handles take their
numbers from :meth:`OpenFiles.new_fh` too), the staging files (``StagingFiles``), the
readahead budget, the slots of streamed parts, and the nursery their background work runs
in. Every change of an open file's upload state (``OpenFile.state``) happens here or in
``files.py``, under the file's ``OpenFile.lock`` where an ``await`` separates a read of it
from the write that depends on it.

Who calls it: ``core.Filesystem`` (the POSIX operations on handles, and unlink/rename of a
name whose file is open) and ``links.HardLinks`` (through its ``OpenFileNeeds`` protocol:
``is_staged``, ``flush_for_copy``, ``keep_open_content``, ``lost_last_name``). It calls only
``known.StoreView`` (what an upload teaches the mount about the store) and the Backend; it
knows nothing of lookups, names or directories.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import trio

from storagefs import sizes
from storagefs.backends.base import Backend, BackendError, ObjectInfo
from storagefs.fs.attrs import inode_metadata
from storagefs.fs.errors import FSError, errno_for
from storagefs.fs.files import (
    Failed,
    Handle,
    OpenFile,
    ReadBudget,
    StagingFiles,
    check_same_file,
    same_file_or_reopened,
)
from storagefs.fs.inodes import InodeTable, Node
from storagefs.fs.known import StoreView
from storagefs.fs.options import FsOptions
from storagefs.fs.streaming import PartStream

log = logging.getLogger("storagefs.fs")

# A file unlinked while open only for reading keeps a local copy up to this size.
KEEP_OPEN_MAX = sizes.KEEP_OPEN_MAX
# Where the data of files whose upload failed goes when the mount gives up on them (unmount):
# below the staging directory, one file per abandoned upload, never deleted by the mount.
ABANDONED_DIR = "abandoned"


class OpenFiles:
    """The open files of one core, their handles, staging files and uploads."""

    def __init__(
        self, backend: Backend, options: FsOptions, inodes: InodeTable, known: StoreView
    ) -> None:
        self.backend = backend
        self.options = options
        self.inodes = inodes
        self.known = known
        self._open: dict[int, OpenFile] = {}  # by inode
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self.nursery: trio.Nursery | None = None
        self.read_budget = ReadBudget(options.read_budget)
        self._part_slots = trio.CapacityLimiter(options.stream_parallelism)
        options.staging_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.staging = StagingFiles(options.staging_dir)

    # --- lifecycle --------------------------------------------------------------------

    def attach(self, nursery: trio.Nursery) -> None:
        """A nursery for background work (readahead, streamed parts, staging files)."""
        self.nursery = nursery
        self.staging.attach(nursery)

    def close(self) -> None:
        for ofile in list(self._open.values()):
            if ofile.dirty and not ofile.unlinked and ofile.staging is not None:
                self.give_up(ofile)
            ofile.close_staging()
        self.staging.close()

    def __iter__(self) -> Iterator[OpenFile]:
        return iter(list(self._open.values()))

    def __len__(self) -> int:
        return len(self._open)

    @property
    def dirty_files(self) -> int:
        return sum(1 for f in self._open.values() if f.dirty and not f.unlinked)

    @property
    def failed_files(self) -> int:
        """Files whose last upload failed: their data waits in a staging file for a retry."""
        return sum(1 for f in self._open.values() if isinstance(f.state, Failed) and not f.unlinked)

    @property
    def abandoned_dir(self) -> Path:
        return self.options.staging_dir / ABANDONED_DIR

    @property
    def abandoned_uploads(self) -> int:
        """Uploads given up on (by this mount or an earlier one): their data is kept in
        :attr:`abandoned_dir` for someone to look at."""
        try:
            return sum(1 for _ in self.abandoned_dir.iterdir())
        except FileNotFoundError:
            return 0

    def give_up(self, ofile: OpenFile) -> None:
        """Stop trying to upload ``ofile``: keep its bytes under :attr:`abandoned_dir`, say so."""
        assert ofile.staging is not None
        # The name says which file it was (its end, within the 255-byte name limit).
        name = (ofile.node.path or "unlinked").replace("/", "%2F")[-180:]
        dest = self.abandoned_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{ofile.node.ino}-{name}"
        try:
            self.abandoned_dir.mkdir(mode=0o700, exist_ok=True)
            ofile.staging.rename(dest)
        except OSError as exc:
            log.error(
                "gave up uploading %s and could not keep its data (%s); it is in %s",
                ofile.node.path,
                exc,
                ofile.staging,
            )
            ofile.staging = None  # left where it is: the next mount's cleanup would delete it
            return
        ofile.staging = None
        log.error(
            "gave up uploading %s (last error: %s): its data is kept in %s",
            ofile.node.path,
            errno.errorcode.get(ofile.failed or errno.EIO, "?"),
            dest,
        )

    async def upload_all(self) -> None:
        """Upload every open file with changes, failed ones included (on unmount); failures
        are logged, and :meth:`close` gives up on what is still not uploaded."""
        for ofile in list(self._open.values()):
            try:
                await self.upload(ofile)
            except FSError:
                continue  # upload logged it
            if ofile.kept and ofile.handles == 0:
                self.drop_ofile(ofile)

    # --- handles ----------------------------------------------------------------------

    def new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def add_handle(self, handle: Handle) -> int:
        fh = self.new_fh()
        self._handles[fh] = handle
        return fh

    def handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise FSError(errno.EBADF) from None

    def find_handle(self, fh: int) -> Handle | None:
        return self._handles.get(fh)

    def pop_handle(self, fh: int) -> Handle | None:
        return self._handles.pop(fh, None)

    # --- open files -------------------------------------------------------------------

    def get(self, ino: int) -> OpenFile | None:
        return self._open.get(ino)

    def is_staged(self, node: Node) -> bool:
        """True while a staging copy makes the local node newer than anything on the store."""
        ofile = self._open.get(node.ino)
        return ofile is not None and ofile.staging is not None

    def ofile_for(self, node: Node) -> OpenFile:
        ofile = self._open.get(node.ino)
        if ofile is None:
            # A file with no name left (the kernel still knows its inode: an open or truncate
            # that raced an unlink) is opened as one unlinked while open: nothing uploads it.
            ofile = self._open[node.ino] = OpenFile(node, unlinked=not node.alive)
        ofile.handles += 1
        node.handles += 1
        return ofile

    def nothing_kept(self, node: Node) -> bool:
        """A file with no name left and no local copy of it: its content left with the name
        (unlinked before it was opened, or too big to keep, see keep_open_content)."""
        ofile = self._open.get(node.ino)
        return not node.alive and (ofile is None or ofile.fd is None)

    def release_ofile(self, ofile: OpenFile) -> None:
        ofile.handles -= 1
        # Changes that were never uploaded (the upload failed) outlive the last handle: the
        # staging file is their only copy. The kept file holds its node, so lookups and opens
        # see the local data, and the next flush, fsync or unmount tries the upload again.
        keep = (
            ofile.handles <= 0 and ofile.dirty and not ofile.unlinked and ofile.staging is not None
        )
        if keep and not ofile.kept:
            ofile.kept = True
            ofile.node.handles += 1
            log.warning(
                "%s closed with changes not uploaded; they are kept in %s for a retry",
                ofile.node.path,
                ofile.staging,
            )
        self.inodes.release_handle(ofile.node)
        if ofile.handles <= 0 and not keep:
            self.drop_ofile(ofile)

    def drop_ofile(self, ofile: OpenFile) -> None:
        """Forget an open file that has no handles: its staging file goes."""
        if ofile.kept:
            ofile.kept = False
            self.inodes.release_handle(ofile.node)
        ofile.close_staging(self.staging)
        self._open.pop(ofile.node.ino, None)

    def discard_kept(self, ofile: OpenFile | None) -> None:
        """A kept failed file was unlinked or replaced: its data is no longer wanted."""
        if ofile is not None and ofile.kept and ofile.handles == 0:
            self.drop_ofile(ofile)

    async def ensure_staging(self, ofile: OpenFile, truncate: bool = False) -> None:
        """A local copy of the file to change: empty if new/truncated, else downloaded."""
        if ofile.fd is not None:
            return
        fd, staging = self.staging.take()
        name = str(staging)
        try:
            if not truncate and ofile.node.attrs.size > 0:
                assert ofile.node.key is not None
                info = await self.backend.download(ofile.node.key, name)
                fd = same_file_or_reopened(fd, staging)
                ofile.node.etag = info.etag
        except BaseException:
            self.staging.give(fd, staging)
            raise
        ofile.fd = fd
        ofile.staging = staging

    # --- names going away -------------------------------------------------------------

    async def keep_open_content(self, node: Node) -> None:
        """A file about to lose its name while open keeps its data, as on a local disk
        (unlink(2), rename(2) over it): its descriptors read (and write) it until the last is
        closed. What the store holds goes with the name, so a file open only for reading is
        fetched into a staging file first; a file being written has one already. Nothing of
        it is uploaded again (``OpenFile.unlinked``)."""
        ofile = self._open.get(node.ino)
        if ofile is None or ofile.handles <= 0 or ofile.fd is not None:
            return
        if node.attrs.size > KEEP_OPEN_MAX:
            # An rm must not turn into a download of gigabytes: such a reader gets ENOENT on
            # its next read, as an object store would answer it.
            log.info("%s removed while open for reading; too big to keep a copy", node.path)
            return
        async with ofile.lock:
            try:
                await self.ensure_staging(ofile)
            except (BackendError, OSError) as exc:
                # The unlink itself must not fail for it: the name goes, and the descriptors
                # get the store's answer (ENOENT) on their next read, as before.
                log.warning("%s removed while open; its data could not be kept: %s", node.path, exc)

    def replaced(self, node: Node) -> None:
        """``node``'s name was renamed over: its open file is nameless, nothing uploads it."""
        ofile = self._open.get(node.ino)
        if ofile is not None:
            ofile.unlinked = True
            self.discard_kept(ofile)

    def lost_last_name(self, node: Node) -> None:
        """The last name of hard-linked ``node`` is gone, and its inode object with it."""
        ofile = self._open.get(node.ino)
        if ofile is not None:
            ofile.unlinked = True  # open handles keep working, nothing is uploaded again
            ofile.end_stream("the file was unlinked")
            self.discard_kept(ofile)

    # --- before a server-side copy of an open file --------------------------------------

    async def flush_for_copy(self, node: Node, why: str) -> None:
        """``node``'s object is about to be copied to another key (``why``): no stream may
        go on under the old key, and the store must hold the newest bytes."""
        ofile = self._open.get(node.ino)
        if ofile is not None:
            ofile.end_stream(why)  # its parts would go under the old key
            if ofile.dirty and not ofile.unlinked:
                await self.upload(ofile)

    async def before_rename(self, node: Node) -> bool:
        """Ready open file ``node`` for a rename of its name; True when nothing of it is on
        the store, so the rename only moves the pending upload (no copy)."""
        ofile = self._open.get(node.ino)
        if ofile is not None and ofile.stream is not None and ofile.stream.dispatched == 0:
            ofile.end_stream("the file was renamed")  # its parts would go under ``src``
        if ofile is not None and not ofile.stored and not ofile.unlinked:
            # A new file not uploaded yet (rsync's temporary name, an editor's save file): the
            # store has nothing at ``src``, so the rename moves the pending upload, which
            # happens once, under ``dst``, when the file is closed or fsync'd (whole: parts
            # streamed under ``src`` are dropped).
            ofile.end_stream("the file was renamed")
            await trio.lowlevel.checkpoint()
            return True
        if ofile is not None and ofile.dirty and not ofile.unlinked:
            await self.upload(ofile)  # the store must hold the newest bytes before the copy
        return False

    async def before_tree_rename(self, src: str) -> None:
        """Dirty open files below directory ``src`` are uploaded first so the copies carry
        their data; their streams end (their parts would go under ``src``)."""
        for ofile in list(self._open.values()):
            p = ofile.node.path
            if p is None or not p.startswith(src + "/"):
                continue
            if ofile.dirty and not ofile.unlinked:
                await self.upload(ofile)
            ofile.end_stream("its directory was renamed")  # its parts would go under ``src``

    # --- uploads ----------------------------------------------------------------------

    def start_stream(self, ofile: OpenFile) -> None:
        """Stream the (empty) staging file to the store as it is written, if it is."""
        ofile.end_stream("the file was truncated")
        if self.nursery is None or ofile.fd is None or ofile.node.path is None:
            return
        if ofile.node.link is not None:
            return  # uploaded whole: its inode object's count must not be lost to a stream
        node = ofile.node
        ofile.stream = PartStream(
            self.backend,
            ofile.node.path,
            ofile.fd,
            lambda: node.attrs,
            part_size=self.options.stream_part_size,
            limiter=self._part_slots,
            nursery=self.nursery,
        )

    async def _write_whole_or_streamed(
        self, ofile: OpenFile, path: str, meta: dict[str, str]
    ) -> ObjectInfo:
        """The file on the store: the streamed parts completed when there are any, else the
        staging file uploaded whole."""
        assert ofile.staging is not None
        if ofile.stream is not None and ofile.stream.dispatched == 0:
            # Nothing streamed yet (a small file, or a close of a dup'd descriptor right after
            # the open, as dd and shells do): write what there is, and keep streaming.
            return await self.backend.write(path, str(ofile.staging), meta)
        stream, ofile.stream = ofile.stream, None
        if stream is not None:
            info = await stream.finish(ofile.node.attrs.size)
            started = stream.started_with
            if info is not None and started is not None:
                attrs = ofile.node.attrs
                before = (started.mode, started.uid, started.gid, started.extra)
                if before != (attrs.mode, attrs.uid, attrs.gid, attrs.extra):
                    # A chmod/chown/setxattr while it was written: store the attributes of now.
                    return await self.backend.copy(path, path, meta)
                # The stored mtime is the one of when the upload started (a multipart upload
                # takes its metadata first); show that one, so a remount shows the same.
                attrs.mtime_ns = started.mtime_ns
                meta.update(attrs.to_metadata())
                return info
        return await self.backend.write(path, str(ofile.staging), meta)

    async def upload(self, ofile: OpenFile) -> None:
        async with ofile.lock:
            node = ofile.node
            key = node.key
            if not ofile.dirty or ofile.unlinked or ofile.staging is None or not node.alive:
                return
            assert key is not None
            version = ofile.version
            await self.known.learn_extra(node)  # new content keeps the object's other entries
            meta = (
                node.attrs.to_metadata()
                if node.link is None
                else inode_metadata(node.attrs, node.links)
            )
            if ofile.fd is not None:
                try:
                    check_same_file(ofile.fd, ofile.staging)  # the name is what gets sent
                except OSError as exc:
                    ofile.upload_failed(errno.EIO)
                    log.error("upload of %s refused: %s", node.path, exc.strerror)
                    raise FSError(errno.EIO, f"upload of {node.path}: {exc.strerror}") from exc
            ofile.upload_starts(version)
            try:
                info = await self._write_whole_or_streamed(ofile, key, meta)
            except BackendError as exc:
                # The errno the failure means (a full journal is ENOSPC, as promised), and the
                # file remembers it: its staging file is kept until an upload succeeds.
                err = errno_for(exc)
                ofile.upload_failed(err)
                log.error("upload of %s failed: %s", node.path, exc)  # logged here, once
                raise FSError(err, f"upload of {node.path} failed: {exc}") from exc
            finally:
                ofile.upload_ends()
            info = await self.known.with_etag(info)
            ofile.stored = True
            ofile.uploaded(version)
            node.etag = info.etag
            node.expires = self.known.expiry()
            self.known.remember_meta(info, meta)
            if node.link is not None:
                self.known.remember_inode_object(node.link, info, meta)
            elif node.path == key:
                # Not when the name was replaced or renamed while the upload was in flight:
                # the listing entry of ``key`` is no longer this file's.
                self.known.update_listing_entry(key, info)
