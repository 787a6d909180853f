"""What the mount believes the store holds: :class:`StoreView`, one per core.

It owns every memory of the store's answers and the decision how long each is trusted:

- the directory listings (``dirs``, a :class:`~storagefs.fs.dirs.DirCache`) and the metadata
  remembered per object (``meta``, a :class:`~storagefs.fs.metadata_cache.MetadataCache`),
  kept consistent by :meth:`StoreView.memo` / :meth:`StoreView.remember_meta`;
- the small files' contents peeked by lookups (:meth:`remember_content`,
  :meth:`peeked_content`), by key with their ETag;
- the times of directories whose entries changed in this mount (:meth:`touch_dir`,
  :meth:`dir_attrs`), which the store has no object to hold;
- the hard-linked files' inode objects' stat results (:meth:`inode_object`), by id;
- the clock and the expiry decisions (:meth:`now`, :meth:`expiry`, :meth:`trusted_for`,
  :meth:`absent_for`).

Its two requests complete what it knows without changing the store: :meth:`with_etag` (one
stat for a write's missing ETag) and :meth:`learn_extra` (one HEAD for metadata not ours).

Who calls it: ``core.Filesystem``, ``lookup.Lookup``, ``handles.OpenFiles`` and
``links.HardLinks``, all through the public methods below. It calls nothing of theirs (it
imports only the stores it wraps, ``inodes`` and ``attrs``), and it decides nothing about
POSIX: no errno comes from here.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Mapping

from storagefs.backends.base import Backend, BackendError, NotFound, ObjectInfo
from storagefs.fs.attrs import Attrs, extra_metadata
from storagefs.fs.dirs import DirCache, Entry, Listing
from storagefs.fs.inodes import ROOT_INODE, InodeTable, Node
from storagefs.fs.metadata_cache import MetadataCache
from storagefs.fs.names import child_path, dir_prefix, parent_and_name
from storagefs.fs.options import FsOptions

log = logging.getLogger("storagefs.fs")

# Directories whose changed times the mount keeps (see touch_dir).
DIR_TIMES_MAX = 100_000
# Small files whose content a lookup fetched, kept until their first read (bounded memory:
# at most PEEKED_FILES x peek_bytes).
PEEKED_FILES = 256
# Inode objects' attributes kept (for listings of pointers); the oldest go first.
INODE_OBJECTS_MAX = 10_000
# Names a lookup found on no store, remembered for the metadata TTL; the oldest go first.
ABSENT_MAX = 100_000


class StoreView:
    """The mount's memory of the store, and how long each piece of it is trusted."""

    def __init__(
        self,
        backend: Backend,
        options: FsOptions,
        inodes: InodeTable,
        meta: MetadataCache,
        dirs: DirCache | None = None,
    ) -> None:
        self.backend = backend
        self.options = options
        self.inodes = inodes
        self.meta = meta
        self.dirs = dirs if dirs is not None else DirCache()
        # Small files' contents fetched by lookups (peek), by path: (etag, bytes).
        self._peeked: collections.OrderedDict[str, tuple[str, bytes]] = collections.OrderedDict()
        # mtime/ctime of directories whose entries changed in this mount, by path. A store has
        # no directory object to touch on every create/unlink (that would double the requests
        # of each), so these live for the mount's life and win over older stored times.
        # Bounded: the oldest go first, and those directories show stored times again.
        self._dir_times: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()
        # Paths the store answered "no such name" for, by path: when that stops being trusted.
        # A cp/tar/mkdir looks the same new name up three or four times (the stat, the
        # create's own check, the kernel's revalidation); each answer from the store costs a
        # HEAD and a one-entry listing (issue #23: 8 requests for one new directory).
        self._absent: collections.OrderedDict[str, float] = collections.OrderedDict()
        # Inode objects' stat results (with metadata), by id, trusted until their expiry.
        self._inode_objects: collections.OrderedDict[str, tuple[ObjectInfo, float]] = (
            collections.OrderedDict()
        )

    def close(self) -> None:
        self.meta.close()

    # --- the clock and trust ------------------------------------------------------------

    def now(self) -> float:
        # The OS clock, not trio's: expiry times must compare across event loops (tests run
        # one loop per step) and MockClock jumps must not expire caches.
        return time.monotonic()

    def expiry(self) -> float:
        return self.now() + self.options.metadata_ttl

    def trusted_for(self, node: Node) -> float:
        """Seconds the kernel may keep ``node``'s entry and attributes: as long as this mount
        trusts them, never longer (an entry from a listing near its end must not be cached
        for a whole TTL more)."""
        return min(self.options.metadata_ttl, max(0.0, node.expires - self.now()))

    def absent_for(self, parent: Node, name: str | None = None) -> float:
        """Seconds the kernel may remember that ``name`` is not in directory ``parent``: as
        long as the cached listing or the remembered answer that said so is trusted; 0 when
        neither is."""
        if parent.path is None:
            return 0.0
        listing = self.dirs.get(parent.path, self.now())
        seen = 0.0 if listing is None else listing.expires - self.now()
        if name is not None:
            path = child_path(parent.path, name)
            seen = max(seen, self.absent(path))
        return max(0.0, min(self.options.metadata_ttl, seen))

    def remember_absent(self, path: str) -> None:
        """The store said ``path`` is no name: trusted for the metadata TTL, unless the
        mount makes the name (a node for it then answers first, see :meth:`absent`)."""
        self._absent[path] = self.expiry()
        self._absent.move_to_end(path)
        while len(self._absent) > ABSENT_MAX:
            self._absent.popitem(last=False)

    def absent(self, path: str) -> float:
        """Seconds ``path`` is still known to be no name (0: ask). Never while this mount
        knows a node of that name: one it created since, or found another way."""
        until = self._absent.get(path)
        if until is None:
            return 0.0
        left = until - self.now()
        if left <= 0 or self.inodes.by_path(path) is not None:
            del self._absent[path]
            return 0.0
        return left

    def made(self, path: str, tree: bool = False) -> None:
        """This mount made ``path`` a name (created it, or renamed something to it; ``tree``:
        a directory, so names below it may exist now too). Whatever the store said about it
        before no longer holds, even once the kernel forgets the new node: the node check in
        :meth:`absent` ends with the node, and a stale "no such name" would then hide a file
        this mount acknowledged (a renamed directory after ``drop_caches``)."""
        self._absent.pop(path, None)
        if tree:
            prefix = path + "/" if path else ""
            for below in [p for p in self._absent if p.startswith(prefix)]:
                del self._absent[below]

    def listing(self, path: str) -> Listing | None:
        """The cached listing of directory ``path`` while it is trusted."""
        return self.dirs.get(path, self.now())

    # --- peeked contents ----------------------------------------------------------------

    def remember_content(self, key: str, etag: str, data: bytes) -> None:
        self._peeked[key] = (etag, data)
        self._peeked.move_to_end(key)
        while len(self._peeked) > PEEKED_FILES:
            self._peeked.popitem(last=False)

    def forget_content(self, key: str) -> None:
        self._peeked.pop(key, None)

    def peeked_content(self, node: Node) -> bytes | None:
        """The whole content a lookup already fetched, if it is still this object's."""
        if node.key is None:
            return None
        found = self._peeked.pop(node.key, None)
        if found is None or node.etag is None or found[0] != node.etag:
            return None
        return found[1] if len(found[1]) == node.attrs.size else None

    # --- remembered metadata ------------------------------------------------------------

    def remember_meta(
        self, info: ObjectInfo, metadata: Mapping[str, str], *, headed: bool = False
    ) -> None:
        """Remember what ``info`` carries: the answer to a HEAD (``headed``: its time is the
        store's) or the result of a write or copy (its time may be this machine's)."""
        self.memo(info.key, info.etag, metadata, info.mtime_ns, local_time=not headed)

    def memo(
        self,
        key: str,
        etag: str | None,
        metadata: Mapping[str, str] | None,
        mtime: int | None = None,
        *,
        local_time: bool = True,
    ) -> None:
        """Remember (None: forget) an object's metadata, here and in its cached listing."""
        if metadata is None:
            self.meta.forget(key)
        else:
            self.meta.put(key, etag, metadata, mtime, local_time=local_time)
        parent = parent_and_name(key.rstrip("/"))[0]
        listing = self.dirs.get(parent, self.now())
        if listing is not None and listing.meta is not None:
            if metadata is None:
                listing.meta.pop(key, None)
            else:
                listing.meta[key] = dict(metadata)

    def update_listing_entry(self, path: str, info: ObjectInfo) -> None:
        parent, name = parent_and_name(path)
        self.dirs.add(parent, Entry(name, False, info))

    async def with_etag(self, info: ObjectInfo) -> ObjectInfo:
        if info.etag is None:  # e.g. multipart uploads: ask once, so listings can match it
            try:
                return await self.backend.stat(info.key)
            except NotFound:
                return info
        return info

    async def learn_extra(self, node: Node, *, strict: bool = False) -> None:
        """Make sure ``node.attrs.extra`` holds what its object stores that is not ours
        (another tool's metadata, extended attributes) before a rewrite replaces the
        object's metadata: S3's copy with REPLACE keeps only what it is given. Known from any
        HEAD, download or remembered metadata; unknown after a listing that carried none:
        then the metadata cache, else one HEAD. If no store answers, the rewrite keeps only
        our own entries (logged), unless ``strict`` (extended-attribute calls): the error."""
        if node.attrs.extra is not None:
            return
        if node.ino == ROOT_INODE or node.key is None:
            node.attrs.extra = {}  # no object: the root has no marker, an unlinked file no key
            return
        key = dir_prefix(node.key) if node.attrs.is_dir else node.key
        meta = self.meta.get(key, "dir" if node.attrs.is_dir else node.etag, None)
        if meta is None:
            try:
                meta = dict((await self.backend.stat(key)).metadata or {})
            except NotFound:
                meta = {}  # nothing stored yet (or an implicit directory): nothing to keep
            except BackendError as exc:
                if strict:
                    raise
                log.warning("metadata of %s unknown (%s): other tools' entries are lost", key, exc)
                return
        if node.attrs.extra is None:  # unless something newer came in meanwhile
            node.attrs.extra = extra_metadata(meta)

    # --- directory times ----------------------------------------------------------------

    def dir_attrs(self, path: str, attrs: Attrs) -> Attrs:
        """A directory's attributes with the times its changes in this mount gave it."""
        times = self._dir_times.get(path)
        if times is not None:
            attrs.mtime_ns = max(attrs.mtime_ns, times[0])
            attrs.ctime_ns = max(attrs.ctime_ns, times[1])
        return attrs

    def touch_dir(self, path: str) -> None:
        """An entry of directory ``path`` was added, removed or renamed: mtime and ctime."""
        now = time.time_ns()
        self._dir_times[path] = (now, now)
        self._dir_times.move_to_end(path)
        if len(self._dir_times) > DIR_TIMES_MAX:
            self._dir_times.popitem(last=False)
        node = self.inodes.by_path(path)
        if node is not None:
            node.attrs.mtime_ns = node.attrs.ctime_ns = now

    def set_dir_times(self, path: str, mtime_ns: int, ctime_ns: int) -> None:
        """Times set explicitly (rsync -a, tar, touch -d) replace the ones this mount gave
        the directory when its entries changed; otherwise those, being newer, would win."""
        self._dir_times[path] = (mtime_ns, ctime_ns)
        self._dir_times.move_to_end(path)

    def forget_dir_times(self, path: str) -> None:
        self._dir_times.pop(path, None)

    def move_dir_times(self, src: str, dst: str, node: Node) -> None:
        if not node.attrs.is_dir:
            return
        prefix = src + "/"
        for path in [p for p in self._dir_times if p == dst or p.startswith(dst + "/")]:
            del self._dir_times[path]
        for path in [p for p in self._dir_times if p == src or p.startswith(prefix)]:
            self._dir_times[dst + path[len(src) :]] = self._dir_times.pop(path)
        # The moved directory keeps its mtime; its ctime (set above) outlives the re-read.
        self._dir_times[dst] = (node.attrs.mtime_ns, node.attrs.ctime_ns)

    # --- hard links' inode objects (storagefs/fs/links.py) --------------------------------

    def inode_object(self, link_id: str) -> ObjectInfo | None:
        """The inode object ``link_id`` as last stat'ed, while that is trusted."""
        found = self._inode_objects.get(link_id)
        if found is None or found[1] <= self.now():
            return None
        return found[0]

    def remember_inode_object(
        self, link_id: str, info: ObjectInfo, meta: Mapping[str, str] | None = None
    ) -> None:
        """Remember inode object ``link_id`` as ``info`` (with ``meta``, when it was written)."""
        if meta is not None:
            info = ObjectInfo(info.key, info.size, info.mtime_ns, info.etag, dict(meta))
        self._inode_objects[link_id] = (info, self.expiry())
        self._inode_objects.move_to_end(link_id)
        while len(self._inode_objects) > INODE_OBJECTS_MAX:
            self._inode_objects.popitem(last=False)

    def forget_inode_object(self, link_id: str) -> None:
        self._inode_objects.pop(link_id, None)
