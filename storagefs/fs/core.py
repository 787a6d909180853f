"""POSIX operations over a Backend: the whole filesystem, without FUSE.

Paths here are relative to the mount root without a leading slash ("" is the root); a file's
key is its path, a directory's marker key is its path plus "/". Every operation marked
:func:`~storagefs.fs.errors.posix_op` raises only FSError (an errno and a log level): backend
and local OS errors are converted where they leave the core, so the FUSE adapter knows
nothing of backends.

What it owns: the POSIX operations (lookup, getattr, setattr, mkdir, create, open, read,
write, flush, fsync, release, unlink, rmdir, rename, link, symlink, readlink, mknod,
opendir/readdir, statfs, the xattr calls) and the directory handles. Everything it remembers
lives in the collaborators it is given (:func:`build_filesystem` makes and wires them):

- ``known``  (fs/known.py, ``StoreView``): what the mount believes the store holds, and for
  how long;
- ``lookup_path`` (fs/lookup.py, ``Lookup``): how names are found on the store;
- ``files`` (fs/handles.py, ``OpenFiles``): open files, handles, staging files, uploads;
- ``links`` (fs/links.py, ``HardLinks``): hard-linked files' pointers and inode objects;
- ``inodes`` (fs/inodes.py, ``InodeTable``): the nodes the kernel knows.

Who may call whom: this module calls all of them; nothing calls this module but the adapter
(daemon/fuse_ops.py through fs/health_router.py) and the daemon (daemon/mount.py). Among the
collaborators calls go one way: lookup → links → files → known (and each → inodes).

Over 700 lines, on purpose: the POSIX operations are the one list a reader checks against
the man pages, so they stay together here; their helpers live in the collaborators.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

import trio

from storagefs.backends.base import (
    Backend,
    ObjectInfo,
    forget_unstored,
    make_durable,
    note_created,
)
from storagefs.fs import xattrs
from storagefs.fs.attrs import OBJECT_TYPES, Attrs, Defaults, inode_metadata, metadata_size
from storagefs.fs.dirs import Entry, Listing
from storagefs.fs.errors import FSError, posix_op
from storagefs.fs.files import ChunkReader, Handle, ReadBudget
from storagefs.fs.handles import OpenFiles
from storagefs.fs.inodes import ROOT_INODE, InodeTable, Node
from storagefs.fs.known import StoreView
from storagefs.fs.links import HardLinks
from storagefs.fs.lookup import Lookup
from storagefs.fs.metadata_cache import MetadataCache
from storagefs.fs.names import (
    check_new_name,
    check_room,
    child_path,
    dir_prefix,
    is_reserved,
    parent_and_name,
)
from storagefs.fs.options import FsOptions
from storagefs.fs.space import statvfs

__all__ = ["DirEntry", "Filesystem", "FsOptions", "build_filesystem"]

log = logging.getLogger("storagefs.fs")

T = TypeVar("T")

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# Server-side copies in flight while renaming a directory tree.
RENAME_PARALLELISM = 16
# The largest file the mount makes: S3's largest object (Azure's block blobs hold more). A
# truncate beyond it is EFBIG, not hours of uploading a sparse file the store then refuses.
MAX_FILE_SIZE = 5 * 1024**4


def _write_only(flags: int) -> bool:
    return flags & os.O_ACCMODE == os.O_WRONLY


@dataclasses.dataclass(frozen=True, slots=True)
class DirEntry:
    name: str
    node: Node
    next_id: int


class Filesystem:
    """The POSIX operations of the mount, over the collaborators it is given (see the module
    docstring, and :func:`build_filesystem` for the usual way to make one)."""

    def __init__(
        self,
        backend: Backend,
        options: FsOptions,
        *,
        inodes: InodeTable,
        known: StoreView,
        files: OpenFiles,
        links: HardLinks,
        lookup_path: Lookup,
        journal_room: Callable[[], int] | None = None,
    ) -> None:
        self.backend = backend
        self.options = options
        self.inodes = inodes
        self.known = known
        self.files = files
        self.links = links
        self.lookup_path = lookup_path
        self.journal_room = journal_room  # bytes the journal can still take (statfs)
        self._dir_handles: dict[
            int, tuple[str, list[Entry], dict[str, dict[str, str]] | None, float]
        ] = {}

    # --- lifecycle --------------------------------------------------------------------

    @posix_op
    def attach(self, nursery: trio.Nursery) -> None:
        """Give the core a nursery for background work (readahead, staging files)."""
        self.files.attach(nursery)

    @posix_op
    def close(self) -> None:
        self.files.close()
        self.known.close()

    @property
    def read_budget(self) -> ReadBudget:
        return self.files.read_budget

    @property
    def dirty_files(self) -> int:
        return self.files.dirty_files

    @property
    def failed_files(self) -> int:
        """Files whose last upload failed: their data waits in a staging file for a retry."""
        return self.files.failed_files

    @property
    def abandoned_dir(self) -> Path:
        return self.files.abandoned_dir

    @property
    def abandoned_uploads(self) -> int:
        """Uploads given up on (by this mount or an earlier one): their data is kept in
        :attr:`abandoned_dir` for someone to look at."""
        return self.files.abandoned_uploads

    @posix_op
    async def upload_all(self) -> None:
        """Upload every open file with changes, failed ones included (on unmount); failures
        are logged, and :meth:`close` gives up on what is still not uploaded."""
        await self.files.upload_all()

    # --- how long the kernel may keep answers -------------------------------------------

    @posix_op
    def trusted_for(self, node: Node) -> float:
        """Seconds the kernel may keep ``node``'s entry and attributes (StoreView decides)."""
        return self.known.trusted_for(node)

    @posix_op
    def absent_for(self, parent_ino: int, name: str | None = None) -> float:
        """Seconds the kernel may remember that ``name`` is not in directory ``parent_ino``
        (StoreView decides; 0 for an inode that is no longer known)."""
        try:
            parent = self.inodes.get(parent_ino)
        except FSError:
            return 0.0
        return self.known.absent_for(parent, name)

    def _check_room(self, key: str) -> None:
        check_room(key, self.options.max_key_bytes)

    def _check_writable(self) -> None:
        if self.options.read_only:
            raise FSError(errno.EROFS)

    def _new_attrs(
        self, parent: Node, kind: int, mode: int, uid: int, gid: int, size: int = 0
    ) -> Attrs:
        """Attributes of a new entry in ``parent`` made by ``uid``/``gid``. A setgid directory
        hands its group to new entries, and its setgid bit to new subdirectories."""
        perm = stat.S_IMODE(mode)
        if parent.attrs.mode & stat.S_ISGID:
            gid = parent.attrs.gid
            if kind == stat.S_IFDIR:
                perm |= stat.S_ISGID
        now = time.time_ns()
        return Attrs(kind | perm, uid, gid, size, now, now, now)

    # --- metadata operations ----------------------------------------------------------

    @posix_op
    async def lookup(self, parent_ino: int, name: str) -> Node:
        parent = self.lookup_path.dir_node(parent_ino)
        if name == ".":
            node = parent
        elif name == "..":
            assert parent.path is not None
            up = self.inodes.by_path(parent_and_name(parent.path)[0]) if parent.path else parent
            if up is None:
                up = await self.lookup_path.resolve(parent_and_name(parent.path)[0])
            node = up
        else:
            check_new_name(name)
            assert parent.path is not None
            path = child_path(parent.path, name)
            if is_reserved(path):
                raise FSError(errno.ENOENT)  # the mount's own objects: not a name in it
            node_or_none = self.inodes.by_path(path)
            if node_or_none is not None and (
                node_or_none.expires > self.known.now() or self.files.is_staged(node_or_none)
            ):
                node = node_or_none
            else:
                node = await self.lookup_path.resolve(path)
        node.lookups += 1
        return node

    @posix_op
    def forget(self, ino: int, count: int) -> None:
        self.inodes.forget(ino, count)

    @posix_op
    def add_lookup(self, node: Node) -> None:
        node.lookups += 1

    @posix_op
    async def getattr(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if not node.alive or node.ino == ROOT_INODE or self.files.is_staged(node):
            return node
        if node.expires <= self.known.now():
            if node.link is not None:
                return await self.links.refresh(node)
            assert node.path is not None
            try:
                return await self.lookup_path.resolve(node.path)
            except FSError as exc:
                if exc.errno == errno.ENOENT:
                    self.inodes.detach(node.path)
                raise
        return node

    @posix_op
    async def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        fh: int | None = None,
        caller: int | None = None,
    ) -> Node:
        """Change attributes; ``caller`` is the uid asking (None: trusted, e.g. tests)."""
        self._check_writable()
        node = self.inodes.get(ino)
        attrs = dataclasses.replace(node.attrs)
        if uid is not None or gid is not None:
            check_chown(node.attrs, uid, caller)
            if mode is None and not attrs.is_dir:
                attrs.mode = without_setid(attrs.mode)
        if mode is not None:
            attrs.mode = stat.S_IFMT(attrs.mode) | stat.S_IMODE(mode)
        if uid is not None:
            attrs.uid = uid
        if gid is not None:
            attrs.gid = gid
        if mtime_ns is not None:
            attrs.mtime_ns = mtime_ns
        if atime_ns is not None:
            attrs.atime_ns = atime_ns
        attrs.ctime_ns = time.time_ns()
        if size is not None:
            if attrs.is_dir:
                raise FSError(errno.EISDIR)
            if size > MAX_FILE_SIZE:
                raise FSError(errno.EFBIG)
            ofile = self.files.ofile_for(node)
            try:
                async with ofile.lock:
                    # Checked under the lock: an unlink may have taken the name (and with it
                    # the data a truncate would keep) while this waited for it.
                    nameless = self.files.nothing_kept(node)
                    await self.files.ensure_staging(ofile, truncate=size == 0 or nameless)
                    assert ofile.fd is not None
                    ofile.end_stream("the file was truncated")
                    os.ftruncate(ofile.fd, size)
                    ofile.changed()
                    attrs.size = size
                    if mtime_ns is None:
                        attrs.mtime_ns = time.time_ns()
                    node.attrs = attrs
                if fh is None:  # truncate(2) by path: nothing will flush it later
                    await self.files.upload(ofile)
            finally:
                # The count _ofile_for took, with or without a handle (an ftruncate's handle
                # holds its own): a leaked one kept the staging file for the mount's life.
                self.files.release_ofile(ofile)
            return node
        current = self.files.get(node.ino)
        node.attrs = attrs
        if attrs.is_dir and node.path is not None:
            # Times set explicitly replace the ones this mount gave the directory.
            self.known.set_dir_times(node.path, attrs.mtime_ns, attrs.ctime_ns)
        if current is not None and current.dirty:
            # The upload of the changed staging file (flush, fsync or release) carries the
            # new metadata. A clean open file is not uploaded again: store it now.
            current.changed()
            return node
        if not node.alive:
            # Unlinked (fchmod of an open file, or a chmod that raced the unlink): a local
            # disk changes the orphaned inode; nothing names it on the store, so the change
            # lives with the node for as long as the file does.
            return node
        await self._store_metadata(node)
        return node

    async def _store_metadata(self, node: Node) -> None:
        await self.known.learn_extra(node)
        if node.link is not None:
            await self.links.store(node)
            return
        assert node.path is not None
        meta = node.attrs.to_metadata()
        if node.attrs.is_dir:
            if node.ino == ROOT_INODE:
                return  # the root has no marker object
            key = dir_prefix(node.path)
            await self.backend.write_bytes(key, b"", meta)
            self.known.memo(key, "dir", meta)
            return
        info = await self.backend.copy(node.path, node.path, meta)
        info = await self.known.with_etag(info)
        node.etag = info.etag
        self.known.remember_meta(info, meta)
        self.known.update_listing_entry(node.path, info)

    # --- directories ------------------------------------------------------------------

    @posix_op
    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Node:
        self._check_writable()
        parent, where, path = self.lookup_path.new_path(parent_ino, name)
        self._check_room(dir_prefix(path))
        await self.lookup_path.ensure_absent(path)
        attrs = self._new_attrs(parent, stat.S_IFDIR, mode, uid, gid)
        meta = attrs.to_metadata()
        await self.backend.write_bytes(dir_prefix(path), b"", meta)
        self.known.memo(dir_prefix(path), "dir", meta)
        self.known.dirs.add(where, Entry(name, True, None))
        self.known.dirs.put(path, Listing({}, None, self.known.expiry()))
        self.known.forget_dir_times(path)  # a new directory: its own times, not a former one's
        node = self.inodes.upsert(path, attrs, None, self.known.expiry())
        node.lookups += 1
        self.known.made(path)
        self.known.touch_dir(where)
        return node

    @posix_op
    async def symlink(self, parent_ino: int, name: str, target: bytes, uid: int, gid: int) -> Node:
        """A symbolic link: an object whose body is the target, mode S_IFLNK|0777 (s3fs's
        format, so s3fs and storagefs read each other's links)."""
        return await self._make_object(parent_ino, name, stat.S_IFLNK | 0o777, uid, gid, target)

    @posix_op
    async def mknod(
        self, parent_ino: int, name: str, mode: int, rdev: int, uid: int, gid: int
    ) -> Node:
        """A FIFO, socket, device node (or empty regular file): a zero-byte object whose
        stored mode carries the type, and rdev for devices (s3fs's format). Who may make a
        device node is the kernel's check (CAP_MKNOD)."""
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in OBJECT_TYPES:
            raise FSError(errno.EINVAL, f"cannot make a node of type {kind:o}")
        return await self._make_object(parent_ino, name, mode | kind, uid, gid, b"", rdev)

    async def _make_object(
        self, parent_ino: int, name: str, mode: int, uid: int, gid: int, body: bytes, rdev: int = 0
    ) -> Node:
        self._check_writable()
        parent, where, path = self.lookup_path.new_path(parent_ino, name)
        self._check_room(path)
        await self.lookup_path.ensure_absent(path)
        attrs = self._new_attrs(parent, stat.S_IFMT(mode), mode, uid, gid, len(body))
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            attrs.rdev = rdev
        meta = attrs.to_metadata()
        info = await self.known.with_etag(await self.backend.write_bytes(path, body, meta))
        self.known.remember_meta(info, meta)
        self.known.update_listing_entry(path, info)
        node = self.inodes.upsert(path, attrs, info.etag, self.known.expiry())
        if attrs.is_link:
            node.target = body
        node.lookups += 1
        self.known.made(path)
        self.known.touch_dir(where)
        return node

    @posix_op
    async def readlink(self, ino: int) -> bytes:
        node = self.inodes.get(ino)
        if not node.attrs.is_link:
            raise FSError(errno.EINVAL)
        if node.target is None:
            if not node.alive or node.key is None:
                raise FSError(errno.ENOENT)
            data = self.known.peeked_content(node)
            if data is None:
                data = await self.backend.read(node.key, 0, max(node.attrs.size, 1))
            node.target = data
        return node.target

    @posix_op
    async def link(self, ino: int, new_parent_ino: int, new_name: str) -> Node:
        """A hard link: one more name of a file (storagefs/fs/links.py, docs/SEMANTICS.md).
        EPERM for directories, as on Linux."""
        self._check_writable()
        node = self.inodes.get(ino)
        if node.attrs.is_dir:
            raise FSError(errno.EPERM, "hard links to directories are not allowed")
        if not node.alive:
            raise FSError(errno.ENOENT)
        _, where, path = self.lookup_path.new_path(new_parent_ino, new_name)
        self._check_room(path)
        await self.lookup_path.ensure_absent(path)
        return await self.links.link(node, where, path)

    @posix_op
    async def rmdir(self, parent_ino: int, name: str) -> None:
        self._check_writable()
        parent = self.lookup_path.dir_node(parent_ino)
        assert parent.path is not None
        path = child_path(parent.path, name)
        node = await self.lookup(parent_ino, name)
        node.lookups -= 1
        if not node.attrs.is_dir:
            raise FSError(errno.ENOTDIR)
        if await self.lookup_path.children(path):
            raise FSError(errno.ENOTEMPTY)
        await self.backend.delete(dir_prefix(path))
        self.known.memo(dir_prefix(path), None, None)
        self.known.dirs.remove(parent.path, name)
        self.known.dirs.drop_tree(path)
        self.inodes.detach(path)
        self.known.forget_dir_times(path)
        self.known.touch_dir(parent.path)

    @posix_op
    async def opendir(self, ino: int) -> int:
        node = self.lookup_path.dir_node(ino)
        assert node.path is not None
        listing = await self.lookup_path.listing(node.path)
        dh = self.files.new_fh()
        self._dir_handles[dh] = (node.path, listing.sorted_entries(), listing.meta, listing.expires)
        return dh

    @posix_op
    def readdir(self, dh: int, start: int) -> list[DirEntry]:
        """Entries from ``start`` on; the adapter calls add_lookup for each one it sends."""
        try:
            path, entries, known, until = self._dir_handles[dh]
        except KeyError:
            raise FSError(errno.EBADF) from None
        return [
            DirEntry(
                e.name,
                self.lookup_path.entry_node(child_path(path, e.name), e, until, known),
                index + 1,
            )
            for index, e in enumerate(entries[start:], start)
        ]

    @posix_op
    def releasedir(self, dh: int) -> None:
        self._dir_handles.pop(dh, None)

    # --- files ------------------------------------------------------------------------

    @posix_op
    async def create(
        self, parent_ino: int, name: str, mode: int, flags: int, uid: int, gid: int
    ) -> tuple[int, Node]:
        self._check_writable()
        parent, where, path = self.lookup_path.new_path(parent_ino, name)
        self._check_room(path)
        existing = self.inodes.by_path(path)
        if existing is not None and self.files.is_staged(existing) and flags & os.O_EXCL:
            raise FSError(errno.EEXIST)
        attrs = self._new_attrs(parent, stat.S_IFREG, mode, uid, gid)
        now = attrs.mtime_ns
        known = existing is not None  # seen before: perhaps on the store, so not "new"
        if not known:
            note_created(self.backend, path)
        node = self.inodes.upsert(path, attrs, None, self.known.expiry())
        node.lookups += 1
        ofile = self.files.ofile_for(node)
        ofile.stored = ofile.stored and known
        async with ofile.lock:
            if ofile.fd is not None:
                # The name's file is still open (the kernel took the name for absent): it is
                # the new file, empty, and its other handles see that, as after O_TRUNC. Under
                # the lock, so an upload in flight never reads a staging file cut short.
                os.ftruncate(ofile.fd, 0)
            else:
                await self.files.ensure_staging(ofile, truncate=True)
            ofile.changed()  # an empty new file is still a file to upload
            self.files.start_stream(ofile)
        fh = self.files.add_handle(Handle(ofile, writable=True, write_only=_write_only(flags)))
        self.known.dirs.add(where, Entry(name, False, ObjectInfo(path, 0, now)))
        self.known.made(path)
        self.known.touch_dir(where)
        return fh, node

    @posix_op
    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """A file handle and whether the kernel may keep its page cache for this file."""
        node = self.inodes.get(ino)
        if node.attrs.is_dir:
            raise FSError(errno.EISDIR)
        accmode = flags & os.O_ACCMODE
        writable = accmode in (os.O_WRONLY, os.O_RDWR)
        if writable or flags & os.O_TRUNC:
            self._check_writable()
        nameless = self.files.nothing_kept(node)
        if nameless and not (flags & os.O_TRUNC or accmode == os.O_WRONLY or not node.attrs.size):
            # Unlinked after the kernel found it (open(2) looks the name up, then opens the
            # inode): a local disk opens the orphaned inode. Its data left with the name, so
            # only an open that needs none of it succeeds; a reader would find nothing.
            raise FSError(errno.ENOENT)
        ofile = self.files.ofile_for(node)
        try:
            if nameless:
                async with ofile.lock:  # an empty file that nothing names: nothing to fetch
                    await self.files.ensure_staging(ofile, truncate=True)
                    node.attrs.size = 0
            if flags & os.O_TRUNC and writable:
                async with ofile.lock:
                    if ofile.fd is not None:
                        os.ftruncate(ofile.fd, 0)
                    else:
                        await self.files.ensure_staging(ofile, truncate=True)
                    ofile.changed()
                    node.attrs.size = 0
                    node.attrs.mtime_ns = node.attrs.ctime_ns = time.time_ns()
                    await self.known.learn_extra(node)  # a stream takes its metadata first
                    self.files.start_stream(ofile)
        except BaseException:
            self.files.release_ofile(ofile)
            raise
        fh = self.files.add_handle(Handle(ofile, writable, write_only=_write_only(flags)))
        # Clean and unchanged since the kernel last cached it: let the page cache serve it.
        keep = ofile.staging is None and node.etag is not None and node.expires > self.known.now()
        return fh, keep

    @posix_op
    def writes_bypass_page_cache(self, fh: int) -> bool:
        """Whether the kernel should hand this handle's writes straight to the daemon
        (FOPEN_DIRECT_IO) instead of copying them into its page cache first.

        Yes for a write-only handle (cp, tar, dd of= and shells' ``>`` open so): it never reads
        back what it writes, and the page-cache copy of a large file costs a copy and as much
        fresh memory, which on a VM is not free (256 MiB written with ``cp`` took ~0.3 s less
        of CPU, docs/BENCHMARKS.md). Another handle's reads stay cached; the kernel drops the
        pages a direct write overwrites. Not for a file with setuid or setgid bits: on the
        direct path the kernel leaves clearing them on a write by an unprivileged user to the
        daemon (a write flag pyfuse3 does not pass on), on the cached path it clears them."""
        handle = self.files.find_handle(fh)
        if handle is None or not handle.write_only:
            return False
        return not handle.ofile.node.attrs.mode & (stat.S_ISUID | stat.S_ISGID)

    @posix_op
    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self.files.handle(fh)
        ofile = handle.ofile
        if ofile.fd is not None:
            # Local disk: cheaper inline than a hop to a worker thread.
            return os.pread(ofile.fd, size, offset)
        if handle.content is None and handle.reader is None:
            handle.content = self.known.peeked_content(ofile.node)
        if handle.content is not None:
            return handle.content[offset : offset + size]
        if handle.reader is None:
            node = ofile.node
            nursery = self.files.nursery
            assert nursery is not None, "Filesystem.attach() was not called"
            if not node.alive or node.key is None:
                raise FSError(errno.ENOENT)
            reader = await ChunkReader.open(
                nursery,
                self.backend,
                node.key,
                node.attrs.size,
                self.options.read_chunk_size,
                self.options.readahead_chunks,
                self.read_budget,
            )
            if self.files.find_handle(fh) is not handle or handle.reader is not None:
                reader.close()  # released, or a parallel read made one, while this one started
            else:
                handle.reader = reader
            if handle.reader is None:
                raise FSError(errno.EBADF)
        return await handle.reader.read(offset, size)

    @posix_op
    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.files.handle(fh)
        if not handle.writable:
            raise FSError(errno.EBADF)
        ofile = handle.ofile
        if ofile.fd is None:
            async with ofile.lock:
                # Checked under the lock, which an unlink holds while it takes the name.
                if not self.files.nothing_kept(ofile.node):
                    await self.files.ensure_staging(ofile)
            if ofile.fd is None:
                # Unlinked while open, and too big (or unreadable) to keep a copy of: nothing
                # can ever read these bytes, so they go nowhere (as on a local disk, where
                # no name leads to them either); its readers get ENOENT, as before.
                return len(data)
        stream = ofile.stream
        if stream is not None and not stream.ended:
            written = stream.write(offset, data)
        else:
            written = os.pwrite(ofile.fd, data, offset)
        ofile.changed()
        attrs = ofile.node.attrs
        attrs.size = max(attrs.size, offset + written)
        attrs.mtime_ns = attrs.ctime_ns = time.time_ns()
        if ofile.stream is not None:
            ofile.stream.wrote(offset, attrs.size)
        return written

    @posix_op
    async def flush(self, fh: int) -> None:
        await self.files.upload(self.files.handle(fh).ofile)

    @posix_op
    async def fsync(self, fh: int) -> None:
        await self.files.upload(self.files.handle(fh).ofile)
        await make_durable(self.backend)

    @posix_op
    async def release(self, fh: int) -> None:
        handle = self.files.pop_handle(fh)
        if handle is None:
            return
        if handle.reader is not None:
            handle.reader.close()  # its readahead stops here
        ofile = handle.ofile
        try:
            if ofile.handles == 1 and ofile.dirty:
                await self.files.upload(ofile)  # a writer that never flushed (mmap, fsync-less)
        except FSError:
            pass  # already logged; release cannot report errors to anyone
        finally:
            self.files.release_ofile(ofile)

    # --- removal and renames ----------------------------------------------------------

    @posix_op
    async def unlink(self, parent_ino: int, name: str) -> None:
        self._check_writable()
        parent = self.lookup_path.dir_node(parent_ino)
        assert parent.path is not None
        node = await self.lookup(parent_ino, name)
        node.lookups -= 1
        if node.attrs.is_dir:
            raise FSError(errno.EISDIR)
        path = child_path(parent.path, name)
        if node.link is None:
            await self.files.keep_open_content(node)
        # An upload of the file may be in flight (a close on another descriptor), or begin
        # while the name is deleted (a process that looked the name up before opens it now):
        # the delete must come after it, or the upload would put the name back on the store
        # (or forget_unstored miss its journal entry). So the unlink holds the open file,
        # made if need be (an open meanwhile shares it), and its lock, and marks it unlinked
        # with the delete: no upload of it starts after that.
        ofile = self.files.ofile_for(node) if node.link is None else None
        try:
            async with ofile.lock if ofile is not None else contextlib.nullcontext():
                if not await forget_unstored(self.backend, path):
                    await self.backend.delete(path)
                if ofile is not None:
                    ofile.unlinked = True  # open handles keep working, nothing is uploaded again
                    ofile.end_stream("the file was unlinked")
            self.known.memo(path, None, None)
            self.known.dirs.remove(parent.path, name)
            if self.inodes.by_path(path) is node:  # not a file created there meanwhile
                self.inodes.detach(path)
        finally:
            if ofile is not None:
                self.files.release_ofile(ofile)  # the last handle: a kept failed file goes too
        self.known.touch_dir(parent.path)
        if node.link is not None:
            await self.links.name_removed(node)  # the pointer is gone: one name less

    @posix_op
    async def rename(
        self,
        old_parent_ino: int,
        old_name: str,
        new_parent_ino: int,
        new_name: str,
        flags: int = 0,
    ) -> None:
        self._check_writable()
        if flags & RENAME_EXCHANGE:
            raise FSError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        old_parent = self.lookup_path.dir_node(old_parent_ino)
        new_parent = self.lookup_path.dir_node(new_parent_ino)
        check_new_name(new_name)
        assert old_parent.path is not None and new_parent.path is not None
        src = child_path(old_parent.path, old_name)
        dst = child_path(new_parent.path, new_name)
        node = await self.lookup(old_parent_ino, old_name)
        node.lookups -= 1
        self._check_room(dir_prefix(dst) if node.attrs.is_dir else dst)
        if src == dst:
            return
        if node.attrs.is_dir and (dst + "/").startswith(src + "/"):
            raise FSError(errno.EINVAL, "cannot move a directory into itself")
        target: Node | None
        try:
            target = await self.lookup(new_parent_ino, new_name)
            target.lookups -= 1
        except FSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            target = None
        if target is node:
            # Two names of one hard-linked file: rename(2) does nothing, successfully.
            await trio.lowlevel.checkpoint()
            return
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FSError(errno.EEXIST)
            if node.attrs.is_dir and not target.attrs.is_dir:
                raise FSError(errno.ENOTDIR)
            if not node.attrs.is_dir and target.attrs.is_dir:
                raise FSError(errno.EISDIR)
            if target.attrs.is_dir and await self.lookup_path.children(dst):
                raise FSError(errno.ENOTEMPTY)
        node.attrs.ctime_ns = time.time_ns()  # rename changes the moved entry's ctime
        if target is not None and not target.attrs.is_dir and target.link is None:
            await self.files.keep_open_content(target)
        entry_info: ObjectInfo | None = None
        if node.attrs.is_dir:
            await self._rename_tree(src, dst, node)  # an empty target's marker is replaced
        elif node.link is not None:
            entry_info = await self.links.rename_pointer(src, dst, node)
        else:
            await self._rename_file(src, dst, node)
            entry_info = ObjectInfo(dst, node.attrs.size, time.time_ns(), node.etag)
        if target is not None:
            if target.link is None:
                self.files.replaced(target)
            self.inodes.detach(dst)
            if target.link is not None:
                await self.links.name_removed(target)  # its pointer was replaced
        self.inodes.move(src, dst, tree=node.attrs.is_dir)
        self.known.move_dir_times(src, dst, node)
        self.known.made(dst, tree=node.attrs.is_dir)
        self.known.touch_dir(old_parent.path)
        self.known.touch_dir(new_parent.path)
        self.known.dirs.remove(old_parent.path, old_name)
        self.known.dirs.drop_tree(src)
        self.known.dirs.drop_tree(dst)
        self.known.dirs.add(new_parent.path, Entry(new_name, node.attrs.is_dir, entry_info))
        node.expires = 0.0  # re-read attributes (and etag) at the new name

    async def _rename_file(self, src: str, dst: str, node: Node) -> None:
        if await self.files.before_rename(node):
            return  # nothing on the store yet: the pending upload moves with the name
        await self.known.learn_extra(node)
        meta = node.attrs.to_metadata()
        info = await self.backend.copy(src, dst, meta)
        if not await forget_unstored(self.backend, src):
            await self.backend.delete(src)
        self.known.memo(src, None, None)
        info = await self.known.with_etag(info)
        node.etag = info.etag
        self.known.remember_meta(info, meta)

    async def _rename_tree(self, src: str, dst: str, node: Node) -> None:
        """Copy every key below ``src/`` to ``dst/``, then delete the sources, deepest first.

        Object stores have no directory rename; this is O(objects) server-side copies, done in
        parallel. Dirty open files below are uploaded first so the copies carry their data."""
        await self.files.before_tree_rename(src)
        objects: list[ObjectInfo] = []
        token: str | None = None
        prefix = src + "/"
        while True:
            page = await self.backend.list(prefix, delimiter=None, token=token, limit=1000)
            objects.extend(page.objects)
            if page.token is None:
                break
            token = page.token
        keys = [o.key for o in objects]
        # Every key below gets longer by the same amount: one that would no longer fit the
        # stores fails the rename now, before anything is copied, rather than halfway.
        for key in keys:
            self._check_room(dst + "/" + key[len(prefix) :])
        limiter = trio.CapacityLimiter(RENAME_PARALLELISM)

        async def copy_one(obj: ObjectInfo) -> None:
            new_key = dst + "/" + obj.key[len(prefix) :]
            is_marker = obj.key.endswith("/")
            # Directory markers are remembered under the etag "dir", with no time.
            etag, mtime = ("dir", None) if is_marker else (obj.etag, obj.mtime_ns)
            meta = self.known.meta.get(obj.key, etag, mtime)
            async with limiter:
                info = await self.backend.copy(obj.key, new_key)
            if meta is not None:  # the copy keeps the metadata: so does our memory of it
                etag, mtime = ("dir", None) if is_marker else (info.etag, info.mtime_ns)
                self.known.memo(new_key, etag, meta, mtime)

        await run_all(copy_one, objects)
        if prefix not in keys:
            # An implicit source directory: give the target a marker so it survives emptying.
            await self.backend.write_bytes(dst + "/", b"", node.attrs.to_metadata())

        async def delete_one(key: str) -> None:
            async with limiter:
                await self.backend.delete(key)

        # Files first (in parallel), then markers deepest first, so a crash midway never leaves
        # a directory that looks empty while its files still exist only at the old name.
        files = [k for k in keys if not k.endswith("/")]
        markers = sorted((k for k in keys if k.endswith("/")), key=len, reverse=True)
        await run_all(delete_one, files)
        for key in markers:
            await self.backend.delete(key)
        for key in keys:
            self.known.memo(key, None, None)

    # --- extended attributes (storagefs/fs/xattrs.py) -----------------------------------

    async def _xattr_node(self, ino: int) -> tuple[Node, dict[str, bytes]]:
        """The node (attributes fresh, as for a stat) and every attribute it stores."""
        node = await self.getattr(ino)
        await self.known.learn_extra(node, strict=True)
        return node, xattrs.decode(node.attrs.extra)

    @posix_op
    async def getxattr(self, ino: int, name: bytes) -> bytes:
        key = xattrs.user_name(name)  # other namespaces: EOPNOTSUPP before any request
        _, values = await self._xattr_node(ino)
        try:
            return values[key]
        except KeyError:
            raise FSError(errno.ENODATA) from None

    @posix_op
    async def listxattr(self, ino: int) -> list[bytes]:
        # Free when the metadata is known (after any stat or listing that carried it), so
        # ls -l and cp -a, which ask for every file, cost no request.
        _, values = await self._xattr_node(ino)
        return xattrs.listed(values)

    @posix_op
    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        key = xattrs.user_name(name)
        self._check_writable()
        if len(value) > xattrs.VALUE_MAX:
            raise FSError(errno.E2BIG)
        node, values = await self._xattr_node(ino)
        if flags & xattrs.XATTR_CREATE and key in values:
            raise FSError(errno.EEXIST)
        if flags & xattrs.XATTR_REPLACE and key not in values:
            raise FSError(errno.ENODATA)
        await self._store_xattrs(node, values | {key: value})

    @posix_op
    async def removexattr(self, ino: int, name: bytes) -> None:
        key = xattrs.user_name(name)
        self._check_writable()
        node, values = await self._xattr_node(ino)
        if key not in values:
            raise FSError(errno.ENODATA)
        await self._store_xattrs(node, {k: v for k, v in values.items() if k != key})

    async def _store_xattrs(self, node: Node, values: dict[str, bytes]) -> None:
        """Give ``node`` these attributes: with its next upload when it is being written,
        else a metadata rewrite, as chmod does. ENOSPC beyond what the stores hold."""
        if not node.alive:
            raise FSError(errno.ENOENT)
        if node.ino == ROOT_INODE:
            raise FSError(errno.EOPNOTSUPP, "the root has no object to hold attributes")
        assert node.attrs.extra is not None  # _xattr_node learnt it
        attrs = dataclasses.replace(node.attrs, extra=xattrs.with_values(node.attrs.extra, values))
        attrs.ctime_ns = time.time_ns()
        meta = attrs.to_metadata() if node.link is None else inode_metadata(attrs, node.links)
        room = self.options.max_metadata_bytes
        if room is not None and metadata_size(meta) > room:
            raise FSError(errno.ENOSPC, f"user metadata over the stores' {room} bytes")
        before, node.attrs = node.attrs, attrs
        current = self.files.get(node.ino)
        if current is not None and current.dirty:
            current.changed()  # the upload of the staging file carries them
            return
        try:
            await self._store_metadata(node)
        except BaseException:
            # Not stored (a local filesystem's xattr space is full: ENOSPC): the file keeps
            # what it had, or every later rewrite of it would fail the same way.
            if node.attrs is attrs:
                node.attrs = before
            raise

    # --- misc -------------------------------------------------------------------------

    @posix_op
    def statfs(self) -> dict[str, int]:
        # Real figures for df (storagefs/fs/space.py); journal_room is set by the daemon.
        room = self.journal_room() if self.journal_room is not None else None
        return statvfs((node.attrs for node in self.inodes), room)


async def run_all(fn: Callable[[T], Awaitable[None]], items: Iterable[T]) -> None:
    """``fn(item)`` for every item concurrently; the first failure is raised as itself (not
    wrapped in an ExceptionGroup), after every call has ended."""
    failures: list[Exception] = []

    async def one(item: T) -> None:
        try:
            await fn(item)
        except Exception as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        for item in items:
            nursery.start_soon(one, item)
    if failures:
        raise failures[0]


def check_chown(attrs: Attrs, uid: int | None, caller: int | None) -> None:
    """chown(2): only root gives a file away; only the owner (or root) changes its group.
    (Membership of the new group is checked by the kernel with default_permissions.)"""
    if caller is None or caller == 0:
        return
    if caller != attrs.uid or (uid is not None and uid != attrs.uid):
        raise FSError(errno.EPERM, "only the owner may change the group, only root the owner")


def without_setid(mode: int) -> int:
    """The mode after a chown or a write by someone else: setuid goes, and setgid too when the
    group may execute (setgid without group-exec marks mandatory locking, kept as Linux does)."""
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode


def build_filesystem(
    backend: Backend, options: FsOptions, *, journal_room: Callable[[], int] | None = None
) -> Filesystem:
    """A core with its collaborators made and wired (the daemon's and the tests' way): one
    inode table and one StoreView shared by all, the open files, then the hard links (which
    need the open files) and the lookup path (which needs both)."""
    defaults = Defaults(options.uid, options.gid, options.file_mode, options.dir_mode)
    now = time.time_ns()
    root = Attrs(stat.S_IFDIR | options.dir_mode, options.uid, options.gid, 0, now, now, now)
    inodes = InodeTable(root)
    known = StoreView(backend, options, inodes, MetadataCache(options.metadata_cache))
    files = OpenFiles(backend, options, inodes, known)
    links = HardLinks(backend, options, defaults, inodes, known, files)
    lookup_path = Lookup(backend, options, defaults, inodes, known, links, files)
    return Filesystem(
        backend,
        options,
        inodes=inodes,
        known=known,
        files=files,
        links=links,
        lookup_path=lookup_path,
        journal_room=journal_room,
    )
