"""The lookup path: :class:`Lookup` finds names on the store, one per core.

It owns no state of its own: what it learns goes to ``known.StoreView`` (listings, metadata,
peeked contents) and ``inodes.InodeTable`` (the nodes). It decides how a name is found — the
parent's trusted listing; a small expired listing fetched again whole (:meth:`_relisted`);
else a peek of the key with the directory probe beside it when the peek is slow
(:meth:`resolve`) — and how a listing's entries become nodes (:meth:`entry_node`, with the
metadata a listing lacks fetched once, :meth:`fill_metadata`).

Who calls it: ``core.Filesystem`` (lookup, getattr, the name checks of every operation that
makes or removes a name, readdir). It calls ``known.StoreView``, ``links.HardLinks`` (the
pointers it meets: ``cached``, ``resolve``, ``entry_node``, ``fill``) and, of the open files,
only ``is_staged`` (a local staging copy is newer than any listing); never the other way: the
open files and hard links do not look names up.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping
from typing import Protocol

import trio

from storagefs.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    NotFound,
    ObjectInfo,
    TransientError,
    peek,
)
from storagefs.fs.attrs import Defaults, attrs_from_object, link_of
from storagefs.fs.dirs import LIST_PAGE, Entry, Listing, list_directory
from storagefs.fs.errors import FSError
from storagefs.fs.inodes import InodeTable, Node
from storagefs.fs.known import StoreView
from storagefs.fs.links import HardLinks
from storagefs.fs.names import check_new_name, child_path, dir_prefix, parent_and_name
from storagefs.fs.options import FsOptions

log = logging.getLogger("storagefs.fs")

# An expired listing this small is fetched again whole rather than probed name by name.
RELIST_MAX_ENTRIES = 2 * LIST_PAGE
# A lookup's HEAD that has not answered after this many seconds gets the directory probe
# beside it (see resolve): far above a HEAD's usual latency, far below a hedge of a hung store.
PROBE_DIR_AFTER = 0.25


class StagedFiles(Protocol):
    """What a lookup needs of the open files (``handles.OpenFiles`` provides it)."""

    def is_staged(self, node: Node) -> bool:
        """A local staging copy makes ``node`` newer than anything on the store."""
        ...


class Lookup:
    """How names are found on the store, and listings' entries made nodes."""

    def __init__(
        self,
        backend: Backend,
        options: FsOptions,
        defaults: Defaults,
        inodes: InodeTable,
        known: StoreView,
        links: HardLinks,
        files: StagedFiles,
    ) -> None:
        self.backend = backend
        self.options = options
        self.defaults = defaults
        self.inodes = inodes
        self.known = known
        self.links = links
        self.files = files

    def dir_node(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if not node.attrs.is_dir:
            raise FSError(errno.ENOTDIR)
        if node.path is None:
            raise FSError(errno.ENOENT)
        return node

    def new_path(self, parent_ino: int, name: str) -> tuple[Node, str, str]:
        """The directory, its path and the new path of a name about to be made in it (EINVAL,
        ENAMETOOLONG for a name no file may have; ENOTDIR, ENOENT for a parent that is none)."""
        parent = self.dir_node(parent_ino)
        check_new_name(name)
        assert parent.path is not None
        return parent, parent.path, child_path(parent.path, name)

    async def ensure_absent(self, path: str) -> None:
        existing = self.inodes.by_path(path)
        if existing is not None and self.files.is_staged(existing):
            raise FSError(errno.EEXIST)
        try:
            await self.resolve(path)
        except FSError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        raise FSError(errno.EEXIST)

    async def children(self, path: str) -> list[Entry]:
        """Current children of a directory, fresh from the store (for emptiness checks)."""
        listing = await list_directory(self.backend, path, self.known.expiry())
        self.known.dirs.put(path, listing)
        return list(listing.entries.values())

    async def listing(self, path: str) -> Listing:
        listing = self.known.dirs.get(path, self.known.now())
        if listing is None:
            listing = await list_directory(self.backend, path, self.known.expiry())
            await self.fill_metadata(path, listing)
            self.known.dirs.put(path, listing)
        return listing

    async def fill_metadata(self, path: str, listing: Listing) -> None:
        """Fetch the metadata a listing does not carry, for entries we have never seen.

        Listings give size and last-modified but not mode/owner/mtime. Objects this machine
        wrote or saw are remembered (MetadataCache); the rest are HEADed here, in parallel,
        once — so ``ls -l`` shows stored attributes even on a fresh machine, and a second
        listing costs no HEAD at all (unlike s3fs, which HEADs every entry sequentially)."""
        unknown: list[tuple[str, str | None, int | None]] = []  # (key, etag or "dir", mtime)
        for entry in listing.entries.values():
            if entry.is_dir:
                unknown.append((dir_prefix(child_path(path, entry.name)), "dir", None))
            else:
                assert entry.info is not None
                unknown.append((entry.info.key, entry.info.etag, entry.info.mtime_ns))
        known = self.known.meta.get_many(unknown)
        listing.meta = known
        missing = [(k, e) for k, e, _ in unknown if k not in known and e is not None]
        if missing and len(missing) <= self.options.listing_head_limit:
            await self._head_all(missing, known)
        await self.links.fill(known.values())  # hard-linked files' pointers: their inodes

    async def _head_all(
        self, missing: list[tuple[str, str]], known: dict[str, dict[str, str]]
    ) -> None:
        limiter = trio.CapacityLimiter(self.options.listing_head_parallelism)

        async def head(key: str, etag: str | None) -> None:
            mtime: int | None = None  # directory markers are remembered without a time
            async with limiter:
                try:
                    info = await self.backend.stat(key)
                except NotFound:  # an implicit directory: no marker, nothing stored
                    meta: Mapping[str, str] = {}
                except BackendError as exc:
                    log.debug("no metadata for %s: %s", key, exc)
                    return
                else:
                    meta = info.metadata or {}
                    if etag != "dir":
                        etag, mtime = info.etag, info.mtime_ns
            self.known.meta.put(key, etag, meta, mtime)
            known[key] = dict(meta)

        async with trio.open_nursery() as nursery:
            for key, etag in missing:
                nursery.start_soon(head, key, etag)

    def entry_node(
        self,
        path: str,
        entry: Entry,
        until: float,
        known: Mapping[str, dict[str, str]] | None = None,
    ) -> Node:
        """A node for a listing entry, using remembered metadata when the etag matches
        (``known``: the listing's batch of it, to spare one query per entry). It is trusted
        ``until`` the listing expires, not a full TTL from now: a name deleted elsewhere must
        not outlive the listing that still shows it (nor, through the kernel's entry timeout,
        the next one)."""
        if entry.is_dir:
            existing = self.inodes.by_path(path)
            if existing is not None and existing.attrs.is_dir:
                existing.expires = max(existing.expires, until)
                return existing
            key = path + "/"
            meta = known.get(key) if known is not None else self.known.meta.get(key, "dir", None)
            attrs = self.known.dir_attrs(path, attrs_from_object(None, True, self.defaults, meta))
            return self.inodes.upsert(path, attrs, None, until)
        info = entry.info
        assert info is not None
        existing = self.inodes.by_path(path)
        if existing is not None and self.files.is_staged(existing):
            return existing  # a local staging copy is newer than the listing
        if known is not None:
            meta = known.get(info.key)
        else:
            meta = self.known.meta.get(info.key, info.etag, info.mtime_ns)
        link_id = link_of(meta)
        if link_id is not None:  # a name of a hard-linked file: its inode object's node
            node = self.links.entry_node(path, link_id, until)
            if node is not None:
                return node
            if existing is not None and existing.link == link_id:
                return existing
            until = 0.0  # the pointer's own attributes, until a lookup finds its inode object
        same_object = existing is not None and existing.etag == info.etag
        if existing is not None and same_object and not existing.attrs.is_dir and meta is None:
            existing.expires = until  # same object as before: keep what a HEAD said
            return existing
        return self.inodes.upsert(
            path, attrs_from_object(info, False, self.defaults, meta), info.etag, until
        )

    async def _relisted(self, path: str) -> Listing | None:
        """The listing of directory ``path`` anew, when an expired one was small.

        ``cp -r``, ``rsync`` and ``tar`` look up every name they create, most of them absent:
        once the listing of the directory they fill has expired, a HEAD and a LIST per name
        would answer them; one LIST of the directory (one page or two) answers this lookup
        and every other one for ``metadata_ttl``. A big or never-listed directory keeps the
        per-name probes, which cost less than listing it whole."""
        size = self.known.dirs.expired_size(path, self.known.now())
        if size is None or size > RELIST_MAX_ENTRIES:
            return None
        try:
            listing = await list_directory(self.backend, path, self.known.expiry())
        except BackendError as exc:
            log.debug("relisting %r failed (%s); probing the name instead", path, exc)
            return None
        self.known.dirs.put(path, listing)
        return listing

    async def resolve(self, path: str) -> Node:
        """Find ``path`` on the store: answered by the parent's listing when fresh, else by a
        HEAD of the key, then (no file) a one-entry listing of ``path/`` (a directory)."""
        parent, name = parent_and_name(path)
        if self.known.absent(path) > 0:
            raise FSError(errno.ENOENT)
        cached = self.known.dirs.get(parent, self.known.now())
        if cached is None:
            cached = await self._relisted(parent)
        if cached is not None:
            entry = cached.entries.get(name)
            if entry is None:
                raise FSError(errno.ENOENT)
            info = entry.info
            known = (
                None if info is None else self.known.meta.get(info.key, info.etag, info.mtime_ns)
            )
            link_id = link_of(known)
            if link_id is not None and self.links.cached(link_id) is None:
                assert entry.info is not None
                return await self.links.resolve(path, entry.info, link_id, cached.expires)
            if entry.is_dir or known:
                return self.entry_node(path, entry, cached.expires)
        file_info: ObjectInfo | None = None
        content: bytes | None = None  # the whole body, when the peek got all of it
        dir_marker: ObjectInfo | None = None
        is_dir = False
        failures: list[BackendError] = []

        async def head() -> None:
            nonlocal file_info, content
            try:
                # Not a bare HEAD: a peek returns the same attributes plus the first bytes,
                # so the read that usually follows a cold lookup of a small file is free.
                file_info, first = await peek(self.backend, path, self.options.peek_bytes)
                if len(first) == file_info.size:
                    content = first
                if file_info.etag is not None and content is not None:
                    self.known.remember_content(path, file_info.etag, first)
            except NotFound:
                pass
            except BackendError as exc:
                failures.append(exc)

        async def probe_dir() -> None:
            nonlocal dir_marker, is_dir
            try:
                page = await self.backend.list(dir_prefix(path), delimiter="/", limit=1)
            except BackendError as exc:
                failures.append(exc)
                return
            if page.objects or page.prefixes:
                is_dir = True
                if page.objects and page.objects[0].key == dir_prefix(path):
                    dir_marker = page.objects[0]

        # A HEAD first: most names are files, and one request beats two in parallel on a
        # busy store. Only when it finds no file is "name/" listed to see a directory, or
        # when the HEAD is slow: a hung primary's "not found" takes its whole first-byte
        # timeout (the secondary's may not overrule it sooner), a directory does not wait
        # for it (found, it wins over a file of the same name, as in a listing).
        async with trio.open_nursery() as nursery:
            head_done = trio.Event()

            async def probe_when_needed() -> None:
                with trio.move_on_after(PROBE_DIR_AFTER):
                    await head_done.wait()
                if file_info is not None:
                    return
                await probe_dir()
                if is_dir:
                    nursery.cancel_scope.cancel()  # whatever the HEAD is still waiting for

            nursery.start_soon(probe_when_needed)
            await head()
            head_done.set()
            if file_info is not None:
                nursery.cancel_scope.cancel()  # a file: a probe the slow HEAD started ends
        # One answer is enough: when every remote is down the cache may know the directory
        # (from the files below it) but not the marker, or the file but not the listing.
        if is_dir:
            meta = None
            if dir_marker is not None:
                try:
                    meta = (await self.backend.stat(dir_marker.key)).metadata
                except BackendError:
                    meta = self.known.meta.get(dir_marker.key, "dir", None)
                if meta is not None:
                    self.known.memo(dir_marker.key, "dir", meta)
            # A marker whose metadata no one could give is unknown (None), not empty: a
            # chmod must then read it before rewriting the marker (_learn_extra).
            attrs = attrs_from_object(
                dir_marker, True, self.defaults, meta if dir_marker is not None else {}
            )
            return self.inodes.upsert(
                path, self.known.dir_attrs(path, attrs), None, self.known.expiry()
            )
        if file_info is None:
            unanswered = (BackendUnavailable, TransientError)
            for failure in failures:
                if not isinstance(failure, unanswered):
                    raise failure
            if failures:
                # No remote answers and neither the journal nor the cache knows the name:
                # treat it as absent, so new files can still be created (and journaled)
                # during a total outage. If it does exist remotely, the newer write wins.
                log.debug("no backend answers for %r; treating it as absent", path)
            else:
                self.known.remember_absent(path)  # every store answered: no such name
            raise FSError(errno.ENOENT)
        meta = file_info.metadata or {}
        self.known.remember_meta(file_info, meta, headed=True)
        link_id = link_of(meta)
        if link_id is not None:
            return await self.links.resolve(path, file_info, link_id, self.known.expiry())
        node = self.inodes.upsert(
            path,
            attrs_from_object(file_info, False, self.defaults, meta),
            file_info.etag,
            self.known.expiry(),
        )
        if node.attrs.is_link and content is not None:
            node.target = content
        return node
