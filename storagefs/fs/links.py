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

Owns: nothing of its own; the inode objects' stat results it relies on are remembered by
``known.StoreView`` (``inode_object``). Who calls it: ``core.Filesystem`` (link, unlink and
rename of a pointer, getattr and attribute changes of a linked file) and ``lookup.Lookup``
(the pointers a lookup or listing meets). It calls the Backend, ``inodes.InodeTable``,
``known.StoreView``, and the open files only through :class:`OpenFileNeeds` (so it imports
nothing of core.py or handles.py); the name checks of ``link()`` are its caller's.
"""

from __future__ import annotations

import errno
import logging
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Protocol

import trio

from storagefs.backends.base import (
    Backend,
    BackendError,
    NotFound,
    ObjectInfo,
    forget_unstored,
    peek,
)
from storagefs.fs.attrs import (
    META_NLINK,
    Defaults,
    attrs_from_object,
    inode_metadata,
    link_of,
    nlink_of,
    pointer_metadata,
)
from storagefs.fs.errors import FSError
from storagefs.fs.inodes import InodeTable, Node
from storagefs.fs.known import StoreView
from storagefs.fs.names import inode_key
from storagefs.fs.options import FsOptions

log = logging.getLogger("storagefs.links")

LINK_MAX = 65_000  # names of one file, as on ext4: one more link() is EMLINK


class OpenFileNeeds(Protocol):
    """What hard links need of the open files (``handles.OpenFiles`` provides it)."""

    def is_staged(self, node: Node) -> bool:
        """A local staging copy of ``node`` is newer than its inode object."""
        ...

    async def flush_for_copy(self, node: Node, why: str) -> None:
        """No stream of ``node`` goes on, and the store holds its newest bytes."""
        ...

    async def keep_open_content(self, node: Node) -> None:
        """``node`` is about to lose its content on the store: its open handles keep it."""
        ...

    def lost_last_name(self, node: Node) -> None:
        """``node`` has no name left: nothing of its open file is uploaded again."""
        ...


class HardLinks:
    """The hard-link operations of one core (``core.Filesystem``)."""

    def __init__(
        self,
        backend: Backend,
        options: FsOptions,
        defaults: Defaults,
        inodes: InodeTable,
        known: StoreView,
        files: OpenFileNeeds,
    ) -> None:
        self.backend = backend
        self.options = options
        self.defaults = defaults
        self.inodes = inodes
        self.known = known
        self.files = files

    # --- the inode objects' attributes ----------------------------------------------------

    def cached(self, link_id: str) -> ObjectInfo | None:
        return self.known.inode_object(link_id)

    async def _stat(self, link_id: str) -> ObjectInfo:
        """The inode object as the store has it now (NotFound when gone)."""
        info = await self.backend.stat(inode_key(link_id))
        self.known.remember_inode_object(link_id, info)
        return info

    def _node(self, path: str, link_id: str, info: ObjectInfo, until: float) -> Node:
        """The node of inode object ``link_id`` (stat'ed as ``info``), found as ``path``."""
        node = self.inodes.by_link(link_id)
        if node is not None and self.files.is_staged(node):
            # A local staging copy is newer than the store: keep it, learn the name.
            if self.inodes.by_path(path) is not node:
                self.inodes.detach(path)
                self.inodes.add_name(node, path)
            return node
        attrs = attrs_from_object(info, False, self.defaults, info.metadata)
        links = nlink_of(info.metadata)
        return self.inodes.upsert(path, attrs, info.etag, until, link=link_id, links=links)

    def entry_node(self, path: str, link_id: str, until: float) -> Node | None:
        """The node for a listing's pointer, when its inode object is known (else None:
        a lookup finds it)."""
        info = self.cached(link_id)
        return None if info is None else self._node(path, link_id, info, until)

    async def resolve(self, path: str, pointer: ObjectInfo, link_id: str, until: float) -> Node:
        """The node of the pointer ``pointer`` found at ``path``."""
        info = self.cached(link_id)
        if info is None:
            key = inode_key(link_id)
            try:
                # A peek, as for any cold lookup: a small file's first read is then free.
                info, first = await peek(self.backend, key, self.options.peek_bytes)
            except NotFound:
                # Its inode object is gone (deleted by another tool): the one-line file it is.
                log.warning("%s names the hard-link object %s, which is gone", path, key)
                attrs = attrs_from_object(pointer, False, self.defaults, pointer.metadata or {})
                return self.inodes.upsert(path, attrs, pointer.etag, until)
            self.known.remember_inode_object(link_id, info)
            if info.etag is not None and len(first) == info.size:
                self.known.remember_content(key, info.etag, first)
        return self._node(path, link_id, info, until)

    async def refresh(self, node: Node) -> Node:
        """``node``'s attributes and count anew from its inode object (getattr)."""
        assert node.link is not None
        try:
            info = await self._stat(node.link)
        except NotFound:
            node.links = 0
            for name in list(node.names):
                self.inodes.detach(name)
            raise FSError(errno.ENOENT) from None
        if node.etag != info.etag:
            node.target = None
        node.attrs = attrs_from_object(info, False, self.defaults, info.metadata)
        node.links = nlink_of(info.metadata)
        node.etag = info.etag
        node.expires = self.known.expiry()
        return node

    async def fill(self, metas: Iterable[Mapping[str, str]]) -> None:
        """Stat, in parallel, the inode objects a listing's pointers name and nothing knows,
        so ``ls -l`` shows their sizes and attributes (within the listing's HEAD limit)."""
        wanted = {i for i in map(link_of, metas) if i is not None and self.cached(i) is None}
        if not wanted or len(wanted) > self.options.listing_head_limit:
            return
        limiter = trio.CapacityLimiter(self.options.listing_head_parallelism)

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
        await self.known.learn_extra(node)  # the copy replaces all its metadata: keep the rest
        meta = inode_metadata(node.attrs, node.links)
        key = inode_key(node.link)
        info = await self.known.with_etag(await self.backend.copy(key, key, meta))
        node.etag = info.etag
        self.known.remember_meta(info, meta)
        self.known.remember_inode_object(node.link, info, meta)

    async def link(self, node: Node, where: str, path: str) -> Node:
        """link(2): ``path`` (a name in directory ``where``, checked absent and storable by
        the caller) is one more name of file ``node``."""
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
        self.inodes.add_name(node, path)
        node.lookups += 1
        node.expires = self.known.expiry()
        self.known.made(path)
        self.known.touch_dir(where)
        return node

    async def _make_linked(self, node: Node, now: int) -> None:
        """Move a plain file's content and attributes to a new inode object with a count of
        2 (for the link being made), and turn its name into a pointer to it."""
        assert node.path is not None
        src = node.path
        await self.files.flush_for_copy(node, "the file was hard-linked")
        link_id = secrets.token_hex(8)
        node.attrs.ctime_ns = now
        await self.known.learn_extra(node)  # other tools' entries and xattrs go with the content
        meta = node.attrs.to_metadata()
        meta[META_NLINK] = "2"
        info = await self.known.with_etag(await self.backend.copy(src, inode_key(link_id), meta))
        self.known.remember_meta(info, meta)
        self.known.remember_inode_object(link_id, info, meta)
        # Only once its name points there is the file the inode object's: if this write
        # fails, the file stays what it was (and the copy an invisible orphan).
        await self._write_pointer(src, link_id)
        self.known.forget_content(src)
        self.inodes.set_link(node, link_id, 2)
        node.etag = info.etag

    async def _write_pointer(self, path: str, link_id: str) -> None:
        meta = pointer_metadata(link_id)
        body = pointer_body(link_id)
        info = await self.known.with_etag(await self.backend.write_bytes(path, body, meta))
        self.known.remember_meta(info, meta)
        self.known.update_listing_entry(path, info)

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
        if not self.files.is_staged(node):
            node.attrs = attrs_from_object(info, False, self.defaults, info.metadata)
            node.etag = info.etag
        return nlink_of(info.metadata)

    async def name_removed(self, node: Node) -> None:
        """One name of ``node`` is gone (its pointer deleted or replaced): one less in the
        count; the last name takes the inode object with it (an open file keeps its data,
        as for any unlink while open)."""
        assert node.link is not None
        count = max(await self._count(node) - 1, 0)
        node.links = count
        node.attrs.ctime_ns = time.time_ns()
        if count > 0:
            await self.store(node)
            return
        await self.files.keep_open_content(node)
        await self.backend.delete(inode_key(node.link))
        self.known.memo(inode_key(node.link), None, None)
        self.known.forget_inode_object(node.link)
        for name in list(node.names):  # names this mount still had (gone elsewhere)
            self.inodes.detach(name)
        self.files.lost_last_name(node)

    async def rename_pointer(self, src: str, dst: str, node: Node) -> ObjectInfo:
        """Move one name of a hard-linked file: only its pointer moves; the inode object
        takes the new ctime."""
        assert node.link is not None
        info = await self.known.with_etag(await self.backend.copy(src, dst))
        self.known.remember_meta(info, pointer_metadata(node.link))
        if not await forget_unstored(self.backend, src):
            await self.backend.delete(src)
        self.known.memo(src, None, None)
        await self.store(node)
        return info


def pointer_body(link_id: str) -> bytes:
    """What a pointer holds: a line saying where the file is, for people and other tools.
    Not empty: every empty object has the same etag (S3's is the MD5 of nothing), and the
    metadata cache, keyed by etag, would then take one pointer (or an empty file that was
    there before) for another."""
    return f"storagefs hard link: {inode_key(link_id)}\n".encode()
