"""Hard links: one file under several names, on stores that know only keys.

A hard-linked file's content and attributes live in one hidden *inode object* at
``.storagefs/links/<id>`` (:func:`~storagefs.fs.names.inode_key`; the root's ``.storagefs`` is
reserved: never listed, never found, never made by users). Each of its names is a small
*pointer* object whose only metadata entry names the id (``attrs.pointer_metadata``). The
inode object's metadata carries the usual attributes and the count of names
(``storagefs-nlink``). A plain file becomes hard-linked on its first ``link()``: its object is
copied (server-side) to a new inode object and replaced by a pointer; it stays hard-linked
(a pointer) when its count falls back to 1, and the last unlink deletes the inode object.

Within a mount every name of one inode object is one :class:`~storagefs.fs.inodes.Node`
(``Node.link``; ``Node.key`` is the inode object's key, where reads, writes, uploads and
attribute changes go). Everything goes through the core's Backend, so the journal, its replay
and failover treat these objects like any other.

The steps are ordered so that a crash between two of them leaves a count too high (an inode
object that outlives its last name, invisible), never too low: the count is raised before a
new pointer is written and lowered after a pointer is deleted.
"""

from __future__ import annotations

import collections
import errno
import logging
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import trio

from storagefs.backends.base import BackendError, NotFound, ObjectInfo, forget_unstored, peek
from storagefs.fs.attrs import META_NLINK, attrs_from_object, link_of, nlink_of, pointer_metadata
from storagefs.fs.errors import FSError
from storagefs.fs.inodes import Node
from storagefs.fs.names import inode_key

if TYPE_CHECKING:
    from storagefs.fs.core import Filesystem

log = logging.getLogger("storagefs.links")

LINK_MAX = 65_000  # names of one file, as on ext4: one more link() is EMLINK
# Inode objects' attributes kept (for listings of pointers); the oldest go first.
INODE_OBJECTS_MAX = 10_000


class HardLinks:
    """The hard-link operations of one :class:`~storagefs.fs.core.Filesystem`."""

    def __init__(self, fs: Filesystem) -> None:
        self.fs = fs
        # Inode objects' stat results (with metadata), by id, trusted until their expiry.
        self._objects: collections.OrderedDict[str, tuple[ObjectInfo, float]] = (
            collections.OrderedDict()
        )

    # --- the inode objects' attributes ----------------------------------------------------

    def cached(self, link_id: str) -> ObjectInfo | None:
        found = self._objects.get(link_id)
        if found is None or found[1] <= self.fs._now():
            return None
        return found[0]

    def _remember(self, link_id: str, info: ObjectInfo) -> None:
        self._objects[link_id] = (info, self.fs._expiry())
        self._objects.move_to_end(link_id)
        while len(self._objects) > INODE_OBJECTS_MAX:
            self._objects.popitem(last=False)

    async def _stat(self, link_id: str) -> ObjectInfo:
        """The inode object as the store has it now (NotFound when gone)."""
        info = await self.fs.backend.stat(inode_key(link_id))
        self._remember(link_id, info)
        return info

    def _staged(self, node: Node) -> bool:
        """A local staging copy of ``node`` is newer than its inode object (core.path_is_open)."""
        ofile = self.fs._open.get(node.ino)
        return ofile is not None and ofile.staging is not None

    def metadata(self, node: Node) -> dict[str, str]:
        """What the inode object of ``node`` stores: its attributes and its count."""
        meta = node.attrs.to_metadata()
        meta[META_NLINK] = str(node.links)
        return meta

    def _node(self, path: str, link_id: str, info: ObjectInfo, until: float) -> Node:
        """The node of inode object ``link_id`` (stat'ed as ``info``), found as ``path``."""
        fs = self.fs
        node = fs.inodes.by_link(link_id)
        if node is not None and self._staged(node):
            # A local staging copy is newer than the store: keep it, learn the name.
            if fs.inodes.by_path(path) is not node:
                fs.inodes.detach(path)
                fs.inodes.add_name(node, path)
            return node
        attrs = attrs_from_object(info, False, fs.defaults, info.metadata)
        links = nlink_of(info.metadata)
        return fs.inodes.upsert(path, attrs, info.etag, until, link=link_id, links=links)

    def entry_node(self, path: str, link_id: str, until: float) -> Node | None:
        """The node for a listing's pointer, when its inode object is known (else None:
        a lookup finds it)."""
        info = self.cached(link_id)
        return None if info is None else self._node(path, link_id, info, until)

    async def resolve(self, path: str, pointer: ObjectInfo, link_id: str, until: float) -> Node:
        """The node of the pointer ``pointer`` found at ``path``."""
        fs = self.fs
        info = self.cached(link_id)
        if info is None:
            key = inode_key(link_id)
            try:
                # A peek, as for any cold lookup: a small file's first read is then free.
                info, first = await peek(fs.backend, key, fs.options.peek_bytes)
            except NotFound:
                # Its inode object is gone (deleted by another tool): the one-line file it is.
                log.warning("%s names the hard-link object %s, which is gone", path, key)
                attrs = fs._file_attrs(pointer, pointer.metadata or {})
                return fs.inodes.upsert(path, attrs, pointer.etag, until)
            self._remember(link_id, info)
            if info.etag is not None and len(first) == info.size:
                fs._remember_content(key, info.etag, first)
        return self._node(path, link_id, info, until)

    async def refresh(self, node: Node) -> Node:
        """``node``'s attributes and count anew from its inode object (getattr)."""
        assert node.link is not None
        try:
            info = await self._stat(node.link)
        except NotFound:
            node.links = 0
            for name in list(node.names):
                self.fs.inodes.detach(name)
            raise FSError(errno.ENOENT) from None
        if node.etag != info.etag:
            node.target = None
        node.attrs = attrs_from_object(info, False, self.fs.defaults, info.metadata)
        node.links = nlink_of(info.metadata)
        node.etag = info.etag
        node.expires = self.fs._expiry()
        return node

    async def fill(self, metas: Iterable[Mapping[str, str]]) -> None:
        """Stat, in parallel, the inode objects a listing's pointers name and nothing knows,
        so ``ls -l`` shows their sizes and attributes (within the listing's HEAD limit)."""
        fs = self.fs
        wanted = {i for i in map(link_of, metas) if i is not None and self.cached(i) is None}
        if not wanted or len(wanted) > fs.options.listing_head_limit:
            return
        limiter = trio.CapacityLimiter(fs.options.listing_head_parallelism)

        async def one(link_id: str) -> None:
            async with limiter:
                try:
                    await self._stat(link_id)
                except BackendError as exc:
                    log.debug("no attributes for hard-link object %s: %s", link_id, exc)

        async with trio.open_nursery() as nursery:
            for link_id in wanted:
                nursery.start_soon(one, link_id)

    # --- changes ----------------------------------------------------------------------------

    async def store(self, node: Node) -> None:
        """Write ``node``'s attributes and count to its inode object."""
        assert node.link is not None
        fs = self.fs
        await fs._learn_extra(node)  # the copy replaces all its metadata: keep what is not ours
        meta = self.metadata(node)
        key = inode_key(node.link)
        info = await fs._with_etag(await fs.backend.copy(key, key, meta))
        node.etag = info.etag
        fs._remember_meta(info, meta)
        self._remember(node.link, _with_metadata(info, meta))

    def uploaded(self, node: Node, info: ObjectInfo, meta: Mapping[str, str]) -> None:
        """``node``'s content was uploaded to its inode object as ``info``."""
        assert node.link is not None
        self._remember(node.link, _with_metadata(info, meta))

    async def link(self, ino: int, new_parent_ino: int, new_name: str) -> Node:
        """link(2): ``new_name`` in ``new_parent_ino`` is one more name of file ``ino``."""
        fs = self.fs
        node = fs.inodes.get(ino)
        if node.attrs.is_dir:
            raise FSError(errno.EPERM, "hard links to directories are not allowed")
        if not node.alive:
            raise FSError(errno.ENOENT)
        _, where, path = fs._new_path(new_parent_ino, new_name)
        fs._check_room(path)
        await fs._ensure_absent(path)
        now = time.time_ns()
        if node.link is None:
            await self._make_linked(node, now)
        else:
            count = await self._count(node)
            if count >= LINK_MAX:
                raise FSError(errno.EMLINK)
            node.links = count + 1
            node.attrs.ctime_ns = now
            await self.store(node)
        assert node.link is not None
        await self._write_pointer(path, node.link)
        fs.inodes.add_name(node, path)
        node.lookups += 1
        node.expires = fs._expiry()
        fs._touch_dir(where)
        return node

    async def _make_linked(self, node: Node, now: int) -> None:
        """Move a plain file's content and attributes to a new inode object with a count of
        2 (for the link being made), and turn its name into a pointer to it."""
        fs = self.fs
        assert node.path is not None
        src = node.path
        ofile = fs._open.get(node.ino)
        if ofile is not None:
            ofile.end_stream("the file was hard-linked")  # its parts would go under ``src``
            if ofile.dirty and not ofile.unlinked:
                await fs._upload(ofile)  # the store must hold the newest bytes before the copy
        link_id = secrets.token_hex(8)
        node.attrs.ctime_ns = now
        await fs._learn_extra(node)  # other tools' entries and xattrs go with the content
        meta = node.attrs.to_metadata()
        meta[META_NLINK] = "2"
        info = await fs._with_etag(await fs.backend.copy(src, inode_key(link_id), meta))
        fs._remember_meta(info, meta)
        self._remember(link_id, _with_metadata(info, meta))
        # Only once its name points there is the file the inode object's: if this write
        # fails, the file stays what it was (and the copy an invisible orphan).
        await self._write_pointer(src, link_id)
        fs._peeked.pop(src, None)
        fs.inodes.set_link(node, link_id, 2)
        node.etag = info.etag

    async def _write_pointer(self, path: str, link_id: str) -> None:
        fs = self.fs
        meta = pointer_metadata(link_id)
        info = await fs._with_etag(await fs.backend.write_bytes(path, pointer_body(link_id), meta))
        fs._remember_meta(info, meta)
        fs._update_listing_entry(path, info)

    async def _count(self, node: Node) -> int:
        """The count of ``node``'s inode object now, whoever changed it since (0 when it is
        gone); its stored attributes too, unless a local copy being written is newer."""
        assert node.link is not None
        try:
            info = await self._stat(node.link)
        except NotFound:
            return 0
        except BackendError as exc:
            # No store answers (nor the journal or cache): the count this mount knows. An
            # unlink whose pointer is already deleted must not fail for it.
            log.warning("count of %s unknown (%s); using %d", node.key, exc, node.links)
            return node.links
        if not self._staged(node):
            node.attrs = attrs_from_object(info, False, self.fs.defaults, info.metadata)
            node.etag = info.etag
        return nlink_of(info.metadata)

    async def name_removed(self, node: Node) -> None:
        """One name of ``node`` is gone (its pointer deleted or replaced): one less in the
        count; the last name takes the inode object with it (an open file keeps its data,
        as for any unlink while open)."""
        assert node.link is not None
        fs = self.fs
        count = max(await self._count(node) - 1, 0)
        node.links = count
        node.attrs.ctime_ns = time.time_ns()
        if count > 0:
            await self.store(node)
            return
        await fs._keep_open_content(node)
        await fs.backend.delete(inode_key(node.link))
        fs._memo(inode_key(node.link), None, None)
        self._objects.pop(node.link, None)
        for name in list(node.names):  # names this mount still had (gone elsewhere)
            fs.inodes.detach(name)
        ofile = fs._open.get(node.ino)
        if ofile is not None:
            ofile.unlinked = True  # open handles keep working, nothing is uploaded again
            ofile.end_stream("the file was unlinked")
            fs._discard_kept(ofile)

    async def rename_pointer(self, src: str, dst: str, node: Node) -> ObjectInfo:
        """Move one name of a hard-linked file: only its pointer moves; the inode object
        takes the new ctime."""
        assert node.link is not None
        fs = self.fs
        info = await fs._with_etag(await fs.backend.copy(src, dst))
        fs._remember_meta(info, pointer_metadata(node.link))
        if not await forget_unstored(fs.backend, src):
            await fs.backend.delete(src)
        fs._memo(src, None, None)
        await self.store(node)
        return info


def pointer_body(link_id: str) -> bytes:
    """What a pointer holds: a line saying where the file is, for people and other tools.
    Not empty: every empty object has the same etag (S3's is the MD5 of nothing), and the
    metadata cache, keyed by etag, would then take one pointer (or an empty file that was
    there before) for another."""
    return f"storagefs hard link: {inode_key(link_id)}\n".encode()


def _with_metadata(info: ObjectInfo, meta: Mapping[str, str]) -> ObjectInfo:
    return ObjectInfo(info.key, info.size, info.mtime_ns, info.etag, dict(meta))
