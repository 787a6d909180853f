"""POSIX operations over a Backend: the whole filesystem, without FUSE.

Paths here are relative to the mount root without a leading slash ("" is the root); a file's
key is its path, a directory's marker key is its path plus "/". Every public method raises
only FSError (an errno and a log level): backend and local OS errors are converted where they
leave the core (:func:`_errors_converted`), so the FUSE adapter knows nothing of backends.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import functools
import inspect
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import trio

from storagefs import sizes
from storagefs.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    NotFound,
    ObjectInfo,
    TransientError,
    forget_unstored,
    make_durable,
    note_created,
    peek,
)
from storagefs.fs import xattrs
from storagefs.fs.attrs import (
    META_NLINK,
    OBJECT_TYPES,
    Attrs,
    Defaults,
    attrs_from_object,
    extra_metadata,
    link_of,
    metadata_size,
)
from storagefs.fs.dirs import LIST_PAGE, DirCache, Entry, Listing, list_directory
from storagefs.fs.errors import FSError, as_fs_error, errno_for, first_failure
from storagefs.fs.files import (
    ChunkReader,
    FileState,
    Handle,
    OpenFile,
    ReadBudget,
    StagingFiles,
    check_same_file,
    same_file_or_reopened,
)
from storagefs.fs.inodes import ROOT_INODE, InodeTable, Node
from storagefs.fs.links import HardLinks
from storagefs.fs.metadata_cache import MetadataCache
from storagefs.fs.names import (
    check_new_name,
    child_path,
    dir_prefix,
    encode_name,
    is_reserved,
    parent_and_name,
)
from storagefs.fs.space import statvfs
from storagefs.fs.streaming import PartStream

log = logging.getLogger("storagefs.fs")

T = TypeVar("T")
C = TypeVar("C", bound=type)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# Server-side copies in flight while renaming a directory tree.
RENAME_PARALLELISM = 16
# The largest file the mount makes: S3's largest object (Azure's block blobs hold more). A
# truncate beyond it is EFBIG, not hours of uploading a sparse file the store then refuses.
MAX_FILE_SIZE = 5 * 1024**4
# Directories whose changed times the mount keeps (see _touch_dir).
DIR_TIMES_MAX = 100_000
# A file unlinked while open only for reading keeps a local copy up to this size.
KEEP_OPEN_MAX = sizes.KEEP_OPEN_MAX
# An expired listing this small is fetched again whole rather than probed name by name.
RELIST_MAX_ENTRIES = 2 * LIST_PAGE
# Small files whose content a lookup fetched, kept until their first read (bounded memory:
# at most PEEKED_FILES x peek_bytes).
PEEKED_FILES = 256
# A lookup's HEAD that has not answered after this many seconds gets the directory probe
# beside it (see _resolve): far above a HEAD's usual latency, far below a hedge of a hung store.
PROBE_DIR_AFTER = 0.25
# Where the data of files whose upload failed goes when the mount gives up on them (unmount):
# below the staging directory, one file per abandoned upload, never deleted by the mount.
ABANDONED_DIR = "abandoned"


@dataclasses.dataclass(frozen=True)
class FsOptions:
    staging_dir: Path
    metadata_ttl: float = 5.0
    read_only: bool = False
    read_chunk_size: int = sizes.READ_CHUNK
    readahead_chunks: int = 8
    # Read chunks held or in flight across all open files together (see ReadBudget).
    read_budget: int = 128 * 1024 * 1024
    # The longest key (below the URLs' prefixes) every remote can store; see key_room().
    max_key_bytes: int = 1024
    # Owner and modes of objects that carry no stored attributes (and of the root).
    uid: int = dataclasses.field(default_factory=os.getuid)
    gid: int = dataclasses.field(default_factory=os.getgid)
    file_mode: int = 0o644
    dir_mode: int = 0o755
    metadata_cache: Path | None = None  # None: in memory only
    # Listings with more never-seen entries than this show listing attributes (size, store
    # mtime, default mode) instead of paying one HEAD per entry; see docs/SEMANTICS.md.
    listing_head_limit: int = 256
    listing_head_parallelism: int = 32
    # A cold lookup reads this many bytes with the attributes; files up to this size are then
    # read without another request.
    peek_bytes: int = sizes.PEEK_BYTES
    # Files written sequentially are uploaded in parts of this size while they are written
    # (storagefs/fs/streaming.py), at most stream_parallelism parts at a time in all.
    stream_part_size: int = sizes.MULTIPART_CHUNK
    stream_parallelism: int = 8
    # Bytes of user metadata (names and values) every remote takes on one object: S3 2 KiB,
    # Azure 8 KiB; None: no limit known (a local directory: its filesystem's own answer).
    max_metadata_bytes: int | None = None


_CONVERTED = (FSError, BackendError, OSError)


def _write_only(flags: int) -> bool:
    return flags & os.O_ACCMODE == os.O_WRONLY


def _converted(exc: BaseException) -> FSError | None:
    leaf = first_failure(exc)
    return as_fs_error(leaf) if isinstance(leaf, _CONVERTED) else None


@contextlib.contextmanager
def _at_the_edge() -> Iterator[None]:
    """FSError for what leaves the core as a backend error, an OSError or a group of them."""
    try:
        yield
    except FSError:
        raise
    except (*_CONVERTED, BaseExceptionGroup) as exc:
        converted = _converted(exc)
        if converted is None:
            raise
        raise converted from exc


def _convert_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def call_async(*args: Any, **kwargs: Any) -> Any:
            with _at_the_edge():
                return await fn(*args, **kwargs)

        return call_async

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with _at_the_edge():
            return fn(*args, **kwargs)

    return call


def _errors_converted(cls: C) -> C:
    """The core's edge: every public method of ``cls`` raises FSError for backend errors,
    local OS errors (staging files) and groups of them (the first one counts); anything
    else is a bug and passes through for the adapter to log."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member):
            setattr(cls, name, _convert_errors(member))
    return cls


@dataclasses.dataclass(frozen=True, slots=True)
class DirEntry:
    name: str
    node: Node
    next_id: int


@_errors_converted
class Filesystem:
    def __init__(self, backend: Backend, options: FsOptions) -> None:
        self.backend = backend
        self.options = options
        self.defaults = Defaults(options.uid, options.gid, options.file_mode, options.dir_mode)
        now = time.time_ns()
        root = Attrs(stat.S_IFDIR | options.dir_mode, options.uid, options.gid, 0, now, now, now)
        self.inodes = InodeTable(root)
        self.dirs = DirCache()
        self.meta = MetadataCache(options.metadata_cache)
        self._open: dict[int, OpenFile] = {}  # by inode
        self._handles: dict[int, Handle] = {}
        self._dir_handles: dict[
            int, tuple[str, list[Entry], dict[str, dict[str, str]] | None, float]
        ] = {}
        self._next_fh = 1
        self._nursery: trio.Nursery | None = None
        self.read_budget = ReadBudget(options.read_budget)
        self._part_slots = trio.CapacityLimiter(options.stream_parallelism)
        # Small files' contents fetched by lookups (peek), by path: (etag, bytes).
        self._peeked: collections.OrderedDict[str, tuple[str, bytes]] = collections.OrderedDict()
        # mtime/ctime of directories whose entries changed in this mount, by path. A store has
        # no directory object to touch on every create/unlink (that would double the requests
        # of each), so these live for the mount's life and win over older stored times.
        # Bounded: the oldest go first, and those directories show stored times again.
        self._dir_times: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()
        self.journal_room: Callable[[], int] | None = None  # bytes the journal can still take
        options.staging_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.staging = StagingFiles(options.staging_dir)
        self.links = HardLinks(self)

    # --- lifecycle --------------------------------------------------------------------

    def attach(self, nursery: trio.Nursery) -> None:
        """Give the core a nursery for background work (readahead, staging files)."""
        self._nursery = nursery
        self.staging.attach(nursery)

    def close(self) -> None:
        for ofile in list(self._open.values()):
            if ofile.dirty and not ofile.unlinked and ofile.staging is not None:
                self._give_up(ofile)
            ofile.close_staging()
        self.staging.close()
        self.meta.close()

    @property
    def dirty_files(self) -> int:
        return sum(1 for f in self._open.values() if f.dirty and not f.unlinked)

    @property
    def failed_files(self) -> int:
        """Files whose last upload failed: their data waits in a staging file for a retry."""
        return sum(1 for f in self._open.values() if f.state is FileState.FAILED and not f.unlinked)

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

    def _give_up(self, ofile: OpenFile) -> None:
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

    def _remember_content(self, key: str, etag: str, data: bytes) -> None:
        self._peeked[key] = (etag, data)
        self._peeked.move_to_end(key)
        while len(self._peeked) > PEEKED_FILES:
            self._peeked.popitem(last=False)

    def _peeked_content(self, node: Node) -> bytes | None:
        """The whole content a lookup already fetched, if it is still this object's."""
        if node.key is None:
            return None
        found = self._peeked.pop(node.key, None)
        if found is None or node.etag is None or found[0] != node.etag:
            return None
        return found[1] if len(found[1]) == node.attrs.size else None

    async def upload_all(self) -> None:
        """Upload every open file with changes, failed ones included (on unmount); failures
        are logged, and :meth:`close` gives up on what is still not uploaded."""
        for ofile in list(self._open.values()):
            try:
                await self._upload(ofile)
            except FSError:
                continue  # _upload logged it
            if ofile.kept and ofile.handles == 0:
                self._drop_ofile(ofile)

    # --- helpers ----------------------------------------------------------------------

    def _now(self) -> float:
        # The OS clock, not trio's: expiry times must compare across event loops (tests run
        # one loop per step) and MockClock jumps must not expire caches.
        return time.monotonic()

    def _expiry(self) -> float:
        return self._now() + self.options.metadata_ttl

    def trusted_for(self, node: Node) -> float:
        """Seconds the kernel may keep ``node``'s entry and attributes: as long as this mount
        trusts them, never longer (an entry from a listing near its end must not be cached
        for a whole TTL more)."""
        return min(self.options.metadata_ttl, max(0.0, node.expires - self._now()))

    def absent_for(self, parent_ino: int) -> float:
        """Seconds the kernel may remember that a name it looked up is not in directory
        ``parent_ino``: as long as the cached listing that said so is trusted; 0 when no
        listing is (the store was asked, and nothing bounds that answer but a new question)."""
        try:
            parent = self.inodes.get(parent_ino)
        except FSError:
            return 0.0
        listing = None if parent.path is None else self.dirs.get(parent.path, self._now())
        if listing is None:
            return 0.0
        return min(self.options.metadata_ttl, listing.expires - self._now())

    def _check_room(self, key: str) -> None:
        """A new name whose key the stores cannot hold is ENAMETOOLONG now, not EIO at close
        (S3 and Azure take keys of at most 1,024 bytes, the URL's prefix included)."""
        if is_reserved(key):
            # The mount's own objects (hard links' inode objects) live there.
            raise FSError(errno.EPERM, "the root's .storagefs is reserved")
        if len(encode_name(key)) > self.options.max_key_bytes:
            limit = self.options.max_key_bytes
            raise FSError(errno.ENAMETOOLONG, f"a key longer than {limit} bytes")

    def _check_writable(self) -> None:
        if self.options.read_only:
            raise FSError(errno.EROFS)

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _dir_node(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if not node.attrs.is_dir:
            raise FSError(errno.ENOTDIR)
        if node.path is None:
            raise FSError(errno.ENOENT)
        return node

    def _file_attrs(self, info: ObjectInfo, metadata: Mapping[str, str] | None) -> Attrs:
        return attrs_from_object(info, False, self.defaults, metadata)

    def _remember_meta(
        self, info: ObjectInfo, metadata: Mapping[str, str], *, headed: bool = False
    ) -> None:
        """Remember what ``info`` carries: the answer to a HEAD (``headed``: its time is the
        store's) or the result of a write or copy (its time may be this machine's)."""
        self._memo(info.key, info.etag, metadata, info.mtime_ns, local_time=not headed)

    def _memo(
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
        listing = self.dirs.get(parent, self._now())
        if listing is not None and listing.meta is not None:
            if metadata is None:
                listing.meta.pop(key, None)
            else:
                listing.meta[key] = dict(metadata)

    async def _listing(self, path: str) -> Listing:
        listing = self.dirs.get(path, self._now())
        if listing is None:
            listing = await list_directory(self.backend, path, self._expiry())
            await self._fill_metadata(path, listing)
            self.dirs.put(path, listing)
        return listing

    async def _fill_metadata(self, path: str, listing: Listing) -> None:
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
        known = self.meta.get_many(unknown)
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
            self.meta.put(key, etag, meta, mtime)
            known[key] = dict(meta)

        async with trio.open_nursery() as nursery:
            for key, etag in missing:
                nursery.start_soon(head, key, etag)

    def _entry_node(
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
            meta = known.get(key) if known is not None else self.meta.get(key, "dir", None)
            attrs = self._dir_attrs(path, attrs_from_object(None, True, self.defaults, meta))
            return self.inodes.upsert(path, attrs, None, until)
        info = entry.info
        assert info is not None
        existing = self.inodes.by_path(path)
        if existing is not None and path_is_open(self, existing):
            return existing  # a local staging copy is newer than the listing
        if known is not None:
            meta = known.get(info.key)
        else:
            meta = self.meta.get(info.key, info.etag, info.mtime_ns)
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
        return self.inodes.upsert(path, self._file_attrs(info, meta), info.etag, until)

    async def _relisted(self, path: str) -> Listing | None:
        """The listing of directory ``path`` anew, when an expired one was small.

        ``cp -r``, ``rsync`` and ``tar`` look up every name they create, most of them absent:
        once the listing of the directory they fill has expired, a HEAD and a LIST per name
        would answer them; one LIST of the directory (one page or two) answers this lookup
        and every other one for ``metadata_ttl``. A big or never-listed directory keeps the
        per-name probes, which cost less than listing it whole."""
        size = self.dirs.expired_size(path, self._now())
        if size is None or size > RELIST_MAX_ENTRIES:
            return None
        try:
            listing = await list_directory(self.backend, path, self._expiry())
        except BackendError as exc:
            log.debug("relisting %r failed (%s); probing the name instead", path, exc)
            return None
        self.dirs.put(path, listing)
        return listing

    async def _resolve(self, path: str) -> Node:
        """Find ``path`` on the store: answered by the parent's listing when fresh, else by a
        HEAD of the key, then (no file) a one-entry listing of ``path/`` (a directory)."""
        parent, name = parent_and_name(path)
        cached = self.dirs.get(parent, self._now())
        if cached is None:
            cached = await self._relisted(parent)
        if cached is not None:
            entry = cached.entries.get(name)
            if entry is None:
                raise FSError(errno.ENOENT)
            info = entry.info
            known = None if info is None else self.meta.get(info.key, info.etag, info.mtime_ns)
            link_id = link_of(known)
            if link_id is not None and self.links.cached(link_id) is None:
                assert entry.info is not None
                return await self.links.resolve(path, entry.info, link_id, cached.expires)
            if entry.is_dir or known:
                return self._entry_node(path, entry, cached.expires)
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
                    self._remember_content(path, file_info.etag, first)
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
                    meta = self.meta.get(dir_marker.key, "dir", None)
                if meta is not None:
                    self._memo(dir_marker.key, "dir", meta)
            # A marker whose metadata no one could give is unknown (None), not empty: a
            # chmod must then read it before rewriting the marker (_learn_extra).
            attrs = attrs_from_object(
                dir_marker, True, self.defaults, meta if dir_marker is not None else {}
            )
            return self.inodes.upsert(path, self._dir_attrs(path, attrs), None, self._expiry())
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
            raise FSError(errno.ENOENT)
        meta = file_info.metadata or {}
        self._remember_meta(file_info, meta, headed=True)
        link_id = link_of(meta)
        if link_id is not None:
            return await self.links.resolve(path, file_info, link_id, self._expiry())
        node = self.inodes.upsert(
            path, self._file_attrs(file_info, meta), file_info.etag, self._expiry()
        )
        if node.attrs.is_link and content is not None:
            node.target = content
        return node

    def _dir_attrs(self, path: str, attrs: Attrs) -> Attrs:
        """A directory's attributes with the times its changes in this mount gave it."""
        times = self._dir_times.get(path)
        if times is not None:
            attrs.mtime_ns = max(attrs.mtime_ns, times[0])
            attrs.ctime_ns = max(attrs.ctime_ns, times[1])
        return attrs

    def _touch_dir(self, path: str) -> None:
        """An entry of directory ``path`` was added, removed or renamed: mtime and ctime."""
        now = time.time_ns()
        self._dir_times[path] = (now, now)
        self._dir_times.move_to_end(path)
        if len(self._dir_times) > DIR_TIMES_MAX:
            self._dir_times.popitem(last=False)
        node = self.inodes.by_path(path)
        if node is not None:
            node.attrs.mtime_ns = node.attrs.ctime_ns = now

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

    async def lookup(self, parent_ino: int, name: str) -> Node:
        parent = self._dir_node(parent_ino)
        if name == ".":
            node = parent
        elif name == "..":
            assert parent.path is not None
            up = self.inodes.by_path(parent_and_name(parent.path)[0]) if parent.path else parent
            if up is None:
                up = await self._resolve(parent_and_name(parent.path)[0])
            node = up
        else:
            check_new_name(name)
            assert parent.path is not None
            path = child_path(parent.path, name)
            if is_reserved(path):
                raise FSError(errno.ENOENT)  # the mount's own objects: not a name in it
            node_or_none = self.inodes.by_path(path)
            if node_or_none is not None and (
                node_or_none.expires > self._now() or path_is_open(self, node_or_none)
            ):
                node = node_or_none
            else:
                node = await self._resolve(path)
        node.lookups += 1
        return node

    def forget(self, ino: int, count: int) -> None:
        self.inodes.forget(ino, count)

    def add_lookup(self, node: Node) -> None:
        node.lookups += 1

    async def getattr(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if not node.alive or node.ino == ROOT_INODE or path_is_open(self, node):
            return node
        if node.expires <= self._now():
            if node.link is not None:
                return await self.links.refresh(node)
            assert node.path is not None
            try:
                return await self._resolve(node.path)
            except FSError as exc:
                if exc.errno == errno.ENOENT:
                    self.inodes.detach(node.path)
                raise
        return node

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
            ofile = self._ofile_for(node)
            try:
                async with ofile.lock:
                    # Checked under the lock: an unlink may have taken the name (and with it
                    # the data a truncate would keep) while this waited for it.
                    nameless = self._nothing_kept(node)
                    await self._ensure_staging(ofile, truncate=size == 0 or nameless)
                    assert ofile.fd is not None
                    ofile.end_stream("the file was truncated")
                    os.ftruncate(ofile.fd, size)
                    ofile.version += 1
                    attrs.size = size
                    if mtime_ns is None:
                        attrs.mtime_ns = time.time_ns()
                    node.attrs = attrs
                if fh is None:  # truncate(2) by path: nothing will flush it later
                    await self._upload(ofile)
            finally:
                # The count _ofile_for took, with or without a handle (an ftruncate's handle
                # holds its own): a leaked one kept the staging file for the mount's life.
                self._release_ofile(ofile)
            return node
        current = self._open.get(node.ino)
        node.attrs = attrs
        if attrs.is_dir and node.path is not None:
            # Times set explicitly (rsync -a, tar, touch -d) replace the ones this mount gave
            # the directory when its entries changed; otherwise those, being newer, would win.
            self._dir_times[node.path] = (attrs.mtime_ns, attrs.ctime_ns)
            self._dir_times.move_to_end(node.path)
        if current is not None and current.dirty:
            # The upload of the changed staging file (flush, fsync or release) carries the
            # new metadata. A clean open file is not uploaded again: store it now.
            current.version += 1
            return node
        if not node.alive:
            # Unlinked (fchmod of an open file, or a chmod that raced the unlink): a local
            # disk changes the orphaned inode; nothing names it on the store, so the change
            # lives with the node for as long as the file does.
            return node
        await self._store_metadata(node)
        return node

    async def _learn_extra(self, node: Node, *, strict: bool = False) -> None:
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

    async def _store_metadata(self, node: Node) -> None:
        await self._learn_extra(node)
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
            self._memo(key, "dir", meta)
            return
        info = await self.backend.copy(node.path, node.path, meta)
        info = await self._with_etag(info)
        node.etag = info.etag
        self._remember_meta(info, meta)
        self._update_listing_entry(node.path, info)

    async def _with_etag(self, info: ObjectInfo) -> ObjectInfo:
        if info.etag is None:  # e.g. multipart uploads: ask once, so listings can match it
            try:
                return await self.backend.stat(info.key)
            except NotFound:
                return info
        return info

    def _update_listing_entry(self, path: str, info: ObjectInfo) -> None:
        parent, name = parent_and_name(path)
        self.dirs.add(parent, Entry(name, False, info))

    # --- directories ------------------------------------------------------------------

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Node:
        self._check_writable()
        parent, where, path = self._new_path(parent_ino, name)
        self._check_room(dir_prefix(path))
        await self._ensure_absent(path)
        attrs = self._new_attrs(parent, stat.S_IFDIR, mode, uid, gid)
        meta = attrs.to_metadata()
        await self.backend.write_bytes(dir_prefix(path), b"", meta)
        self._memo(dir_prefix(path), "dir", meta)
        self.dirs.add(where, Entry(name, True, None))
        self.dirs.put(path, Listing({}, None, self._expiry()))
        self._dir_times.pop(path, None)  # a new directory: its own times, not a former one's
        node = self.inodes.upsert(path, attrs, None, self._expiry())
        node.lookups += 1
        self._touch_dir(where)
        return node

    async def symlink(self, parent_ino: int, name: str, target: bytes, uid: int, gid: int) -> Node:
        """A symbolic link: an object whose body is the target, mode S_IFLNK|0777 (s3fs's
        format, so s3fs and storagefs read each other's links)."""
        return await self._make_object(parent_ino, name, stat.S_IFLNK | 0o777, uid, gid, target)

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
        parent, where, path = self._new_path(parent_ino, name)
        self._check_room(path)
        await self._ensure_absent(path)
        attrs = self._new_attrs(parent, stat.S_IFMT(mode), mode, uid, gid, len(body))
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            attrs.rdev = rdev
        meta = attrs.to_metadata()
        info = await self._with_etag(await self.backend.write_bytes(path, body, meta))
        self._remember_meta(info, meta)
        self._update_listing_entry(path, info)
        node = self.inodes.upsert(path, attrs, info.etag, self._expiry())
        if attrs.is_link:
            node.target = body
        node.lookups += 1
        self._touch_dir(where)
        return node

    async def readlink(self, ino: int) -> bytes:
        node = self.inodes.get(ino)
        if not node.attrs.is_link:
            raise FSError(errno.EINVAL)
        if node.target is None:
            if not node.alive or node.key is None:
                raise FSError(errno.ENOENT)
            data = self._peeked_content(node)
            if data is None:
                data = await self.backend.read(node.key, 0, max(node.attrs.size, 1))
            node.target = data
        return node.target

    async def link(self, ino: int, new_parent_ino: int, new_name: str) -> Node:
        """A hard link: one more name of a file (storagefs/fs/links.py, docs/SEMANTICS.md).
        EPERM for directories, as on Linux."""
        self._check_writable()
        return await self.links.link(ino, new_parent_ino, new_name)

    def _new_path(self, parent_ino: int, name: str) -> tuple[Node, str, str]:
        """The directory, its path and the new path of a name about to be made in it (EINVAL,
        ENAMETOOLONG for a name no file may have; ENOTDIR, ENOENT for a parent that is none)."""
        parent = self._dir_node(parent_ino)
        check_new_name(name)
        assert parent.path is not None
        return parent, parent.path, child_path(parent.path, name)

    async def _ensure_absent(self, path: str) -> None:
        existing = self.inodes.by_path(path)
        if existing is not None and path_is_open(self, existing):
            raise FSError(errno.EEXIST)
        try:
            await self._resolve(path)
        except FSError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        raise FSError(errno.EEXIST)

    async def _children(self, path: str) -> list[Entry]:
        """Current children of a directory, fresh from the store (for emptiness checks)."""
        listing = await list_directory(self.backend, path, self._expiry())
        self.dirs.put(path, listing)
        return list(listing.entries.values())

    async def rmdir(self, parent_ino: int, name: str) -> None:
        self._check_writable()
        parent = self._dir_node(parent_ino)
        assert parent.path is not None
        path = child_path(parent.path, name)
        node = await self.lookup(parent_ino, name)
        node.lookups -= 1
        if not node.attrs.is_dir:
            raise FSError(errno.ENOTDIR)
        if await self._children(path):
            raise FSError(errno.ENOTEMPTY)
        await self.backend.delete(dir_prefix(path))
        self._memo(dir_prefix(path), None, None)
        self.dirs.remove(parent.path, name)
        self.dirs.drop_tree(path)
        self.inodes.detach(path)
        self._dir_times.pop(path, None)
        self._touch_dir(parent.path)

    async def opendir(self, ino: int) -> int:
        node = self._dir_node(ino)
        assert node.path is not None
        listing = await self._listing(node.path)
        dh = self._new_fh()
        self._dir_handles[dh] = (node.path, listing.sorted_entries(), listing.meta, listing.expires)
        return dh

    def readdir(self, dh: int, start: int) -> list[DirEntry]:
        """Entries from ``start`` on; the adapter calls add_lookup for each one it sends."""
        try:
            path, entries, known, until = self._dir_handles[dh]
        except KeyError:
            raise FSError(errno.EBADF) from None
        return [
            DirEntry(e.name, self._entry_node(child_path(path, e.name), e, until, known), index + 1)
            for index, e in enumerate(entries[start:], start)
        ]

    def releasedir(self, dh: int) -> None:
        self._dir_handles.pop(dh, None)

    # --- files ------------------------------------------------------------------------

    def _ofile_for(self, node: Node) -> OpenFile:
        ofile = self._open.get(node.ino)
        if ofile is None:
            # A file with no name left (the kernel still knows its inode: an open or truncate
            # that raced an unlink) is opened as one unlinked while open: nothing uploads it.
            ofile = self._open[node.ino] = OpenFile(node, unlinked=not node.alive)
        ofile.handles += 1
        node.handles += 1
        return ofile

    def _nothing_kept(self, node: Node) -> bool:
        """A file with no name left and no local copy of it: its content left with the name
        (unlinked before it was opened, or too big to keep, see _keep_open_content)."""
        ofile = self._open.get(node.ino)
        return not node.alive and (ofile is None or ofile.fd is None)

    def _release_ofile(self, ofile: OpenFile) -> None:
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
            self._drop_ofile(ofile)

    def _drop_ofile(self, ofile: OpenFile) -> None:
        """Forget an open file that has no handles: its staging file goes."""
        if ofile.kept:
            ofile.kept = False
            self.inodes.release_handle(ofile.node)
        ofile.close_staging(self.staging)
        self._open.pop(ofile.node.ino, None)

    def _discard_kept(self, ofile: OpenFile | None) -> None:
        """A kept failed file was unlinked or replaced: its data is no longer wanted."""
        if ofile is not None and ofile.kept and ofile.handles == 0:
            self._drop_ofile(ofile)

    async def _ensure_staging(self, ofile: OpenFile, truncate: bool = False) -> None:
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

    async def create(
        self, parent_ino: int, name: str, mode: int, flags: int, uid: int, gid: int
    ) -> tuple[int, Node]:
        self._check_writable()
        parent, where, path = self._new_path(parent_ino, name)
        self._check_room(path)
        existing = self.inodes.by_path(path)
        if existing is not None and path_is_open(self, existing) and flags & os.O_EXCL:
            raise FSError(errno.EEXIST)
        attrs = self._new_attrs(parent, stat.S_IFREG, mode, uid, gid)
        now = attrs.mtime_ns
        known = existing is not None  # seen before: perhaps on the store, so not "new"
        if not known:
            note_created(self.backend, path)
        node = self.inodes.upsert(path, attrs, None, self._expiry())
        node.lookups += 1
        ofile = self._ofile_for(node)
        ofile.stored = ofile.stored and known
        async with ofile.lock:
            if ofile.fd is not None:
                # The name's file is still open (the kernel took the name for absent): it is
                # the new file, empty, and its other handles see that, as after O_TRUNC. Under
                # the lock, so an upload in flight never reads a staging file cut short.
                os.ftruncate(ofile.fd, 0)
            else:
                await self._ensure_staging(ofile, truncate=True)
            ofile.version += 1  # an empty new file is still a file to upload
            self._start_stream(ofile)
        fh = self._new_fh()
        self._handles[fh] = Handle(ofile, writable=True, write_only=_write_only(flags))
        self.dirs.add(where, Entry(name, False, ObjectInfo(path, 0, now)))
        self._touch_dir(where)
        return fh, node

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """A file handle and whether the kernel may keep its page cache for this file."""
        node = self.inodes.get(ino)
        if node.attrs.is_dir:
            raise FSError(errno.EISDIR)
        accmode = flags & os.O_ACCMODE
        writable = accmode in (os.O_WRONLY, os.O_RDWR)
        if writable or flags & os.O_TRUNC:
            self._check_writable()
        nameless = self._nothing_kept(node)
        if nameless and not (flags & os.O_TRUNC or accmode == os.O_WRONLY or not node.attrs.size):
            # Unlinked after the kernel found it (open(2) looks the name up, then opens the
            # inode): a local disk opens the orphaned inode. Its data left with the name, so
            # only an open that needs none of it succeeds; a reader would find nothing.
            raise FSError(errno.ENOENT)
        ofile = self._ofile_for(node)
        try:
            if nameless:
                async with ofile.lock:  # an empty file that nothing names: nothing to fetch
                    await self._ensure_staging(ofile, truncate=True)
                    node.attrs.size = 0
            if flags & os.O_TRUNC and writable:
                async with ofile.lock:
                    if ofile.fd is not None:
                        os.ftruncate(ofile.fd, 0)
                    else:
                        await self._ensure_staging(ofile, truncate=True)
                    ofile.version += 1
                    node.attrs.size = 0
                    node.attrs.mtime_ns = node.attrs.ctime_ns = time.time_ns()
                    await self._learn_extra(node)  # a stream takes its metadata first
                    self._start_stream(ofile)
        except BaseException:
            self._release_ofile(ofile)
            raise
        fh = self._new_fh()
        self._handles[fh] = Handle(ofile, writable, write_only=_write_only(flags))
        # Clean and unchanged since the kernel last cached it: let the page cache serve it.
        keep = ofile.staging is None and node.etag is not None and node.expires > self._now()
        return fh, keep

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
        handle = self._handles.get(fh)
        if handle is None or not handle.write_only:
            return False
        return not handle.ofile.node.attrs.mode & (stat.S_ISUID | stat.S_ISGID)

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise FSError(errno.EBADF) from None

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self._handle(fh)
        ofile = handle.ofile
        if ofile.fd is not None:
            # Local disk: cheaper inline than a hop to a worker thread.
            return os.pread(ofile.fd, size, offset)
        if handle.content is None and handle.reader is None:
            handle.content = self._peeked_content(ofile.node)
        if handle.content is not None:
            return handle.content[offset : offset + size]
        if handle.reader is None:
            node = ofile.node
            assert self._nursery is not None, "Filesystem.attach() was not called"
            if not node.alive or node.key is None:
                raise FSError(errno.ENOENT)
            reader = await ChunkReader.open(
                self._nursery,
                self.backend,
                node.key,
                node.attrs.size,
                self.options.read_chunk_size,
                self.options.readahead_chunks,
                self.read_budget,
            )
            if self._handles.get(fh) is not handle or handle.reader is not None:
                reader.close()  # released, or a parallel read made one, while this one started
            else:
                handle.reader = reader
            if handle.reader is None:
                raise FSError(errno.EBADF)
        return await handle.reader.read(offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._handle(fh)
        if not handle.writable:
            raise FSError(errno.EBADF)
        ofile = handle.ofile
        if ofile.fd is None:
            async with ofile.lock:
                # Checked under the lock, which an unlink holds while it takes the name.
                if not self._nothing_kept(ofile.node):
                    await self._ensure_staging(ofile)
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
        ofile.version += 1
        attrs = ofile.node.attrs
        attrs.size = max(attrs.size, offset + written)
        attrs.mtime_ns = attrs.ctime_ns = time.time_ns()
        if ofile.stream is not None:
            ofile.stream.wrote(offset, attrs.size)
        return written

    def _start_stream(self, ofile: OpenFile) -> None:
        """Stream the (empty) staging file to the store as it is written, if it is."""
        ofile.end_stream("the file was truncated")
        if self._nursery is None or ofile.fd is None or ofile.node.path is None:
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
            nursery=self._nursery,
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

    async def _upload(self, ofile: OpenFile) -> None:
        async with ofile.lock:
            node = ofile.node
            key = node.key
            if not ofile.dirty or ofile.unlinked or ofile.staging is None or not node.alive:
                return
            assert key is not None
            version = ofile.version
            await self._learn_extra(node)  # new content keeps the object's other entries
            meta = node.attrs.to_metadata() if node.link is None else self.links.metadata(node)
            if ofile.fd is not None:
                try:
                    check_same_file(ofile.fd, ofile.staging)  # the name is what gets sent
                except OSError as exc:
                    ofile.failed = errno.EIO
                    log.error("upload of %s refused: %s", node.path, exc.strerror)
                    raise FSError(errno.EIO, f"upload of {node.path}: {exc.strerror}") from exc
            ofile.uploading = True
            try:
                info = await self._write_whole_or_streamed(ofile, key, meta)
            except BackendError as exc:
                # The errno the failure means (a full journal is ENOSPC, as promised), and the
                # file remembers it: its staging file is kept until an upload succeeds.
                ofile.failed = errno_for(exc)
                log.error("upload of %s failed: %s", node.path, exc)  # logged here, once
                raise FSError(ofile.failed, f"upload of {node.path} failed: {exc}") from exc
            finally:
                ofile.uploading = False
            info = await self._with_etag(info)
            ofile.failed = None
            ofile.stored = True
            ofile.uploaded_version = version
            node.etag = info.etag
            node.expires = self._expiry()
            self._remember_meta(info, meta)
            if node.link is not None:
                self.links.uploaded(node, info, meta)
            elif node.path == key:
                # Not when the name was replaced or renamed while the upload was in flight:
                # the listing entry of ``key`` is no longer this file's.
                self._update_listing_entry(key, info)

    async def flush(self, fh: int) -> None:
        await self._upload(self._handle(fh).ofile)

    async def fsync(self, fh: int) -> None:
        await self._upload(self._handle(fh).ofile)
        await make_durable(self.backend)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if handle.reader is not None:
            handle.reader.close()  # its readahead stops here
        ofile = handle.ofile
        try:
            if ofile.handles == 1 and ofile.dirty:
                await self._upload(ofile)  # a writer that never flushed (mmap, fsync-less)
        except FSError:
            pass  # already logged; release cannot report errors to anyone
        finally:
            self._release_ofile(ofile)

    # --- removal and renames ----------------------------------------------------------

    async def unlink(self, parent_ino: int, name: str) -> None:
        self._check_writable()
        parent = self._dir_node(parent_ino)
        assert parent.path is not None
        node = await self.lookup(parent_ino, name)
        node.lookups -= 1
        if node.attrs.is_dir:
            raise FSError(errno.EISDIR)
        path = child_path(parent.path, name)
        if node.link is None:
            await self._keep_open_content(node)
        # An upload of the file may be in flight (a close on another descriptor), or begin
        # while the name is deleted (a process that looked the name up before opens it now):
        # the delete must come after it, or the upload would put the name back on the store
        # (or forget_unstored miss its journal entry). So the unlink holds the open file,
        # made if need be (an open meanwhile shares it), and its lock, and marks it unlinked
        # with the delete: no upload of it starts after that.
        ofile = self._ofile_for(node) if node.link is None else None
        try:
            async with ofile.lock if ofile is not None else contextlib.nullcontext():
                if not await forget_unstored(self.backend, path):
                    await self.backend.delete(path)
                if ofile is not None:
                    ofile.unlinked = True  # open handles keep working, nothing is uploaded again
                    ofile.end_stream("the file was unlinked")
            self._memo(path, None, None)
            self.dirs.remove(parent.path, name)
            if self.inodes.by_path(path) is node:  # not a file created there meanwhile
                self.inodes.detach(path)
        finally:
            if ofile is not None:
                self._release_ofile(ofile)  # the last handle: a kept failed file goes too
        self._touch_dir(parent.path)
        if node.link is not None:
            await self.links.name_removed(node)  # the pointer is gone: one name less

    async def _keep_open_content(self, node: Node) -> None:
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
                await self._ensure_staging(ofile)
            except (BackendError, OSError) as exc:
                # The unlink itself must not fail for it: the name goes, and the descriptors
                # get the store's answer (ENOENT) on their next read, as before.
                log.warning("%s removed while open; its data could not be kept: %s", node.path, exc)

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
        old_parent = self._dir_node(old_parent_ino)
        new_parent = self._dir_node(new_parent_ino)
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
            if target.attrs.is_dir and await self._children(dst):
                raise FSError(errno.ENOTEMPTY)
        node.attrs.ctime_ns = time.time_ns()  # rename changes the moved entry's ctime
        if target is not None and not target.attrs.is_dir and target.link is None:
            await self._keep_open_content(target)
        entry_info: ObjectInfo | None = None
        if node.attrs.is_dir:
            await self._rename_tree(src, dst, node)  # an empty target's marker is replaced
        elif node.link is not None:
            entry_info = await self.links.rename_pointer(src, dst, node)
        else:
            await self._rename_file(src, dst, node)
            entry_info = ObjectInfo(dst, node.attrs.size, time.time_ns(), node.etag)
        if target is not None:
            tofile = self._open.get(target.ino)
            if tofile is not None and target.link is None:
                tofile.unlinked = True
                self._discard_kept(tofile)
            self.inodes.detach(dst)
            if target.link is not None:
                await self.links.name_removed(target)  # its pointer was replaced
        self.inodes.move(src, dst, tree=node.attrs.is_dir)
        self._move_dir_times(src, dst, node)
        self._touch_dir(old_parent.path)
        self._touch_dir(new_parent.path)
        self.dirs.remove(old_parent.path, old_name)
        self.dirs.drop_tree(src)
        self.dirs.drop_tree(dst)
        self.dirs.add(new_parent.path, Entry(new_name, node.attrs.is_dir, entry_info))
        node.expires = 0.0  # re-read attributes (and etag) at the new name

    def _move_dir_times(self, src: str, dst: str, node: Node) -> None:
        if not node.attrs.is_dir:
            return
        prefix = src + "/"
        for path in [p for p in self._dir_times if p == dst or p.startswith(dst + "/")]:
            del self._dir_times[path]
        for path in [p for p in self._dir_times if p == src or p.startswith(prefix)]:
            self._dir_times[dst + path[len(src) :]] = self._dir_times.pop(path)
        # The moved directory keeps its mtime; its ctime (set above) outlives the re-read.
        self._dir_times[dst] = (node.attrs.mtime_ns, node.attrs.ctime_ns)

    async def _rename_file(self, src: str, dst: str, node: Node) -> None:
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
            return
        if ofile is not None and ofile.dirty and not ofile.unlinked:
            await self._upload(ofile)  # the store must hold the newest bytes before the copy
        await self._learn_extra(node)
        meta = node.attrs.to_metadata()
        info = await self.backend.copy(src, dst, meta)
        if not await forget_unstored(self.backend, src):
            await self.backend.delete(src)
        self._memo(src, None, None)
        info = await self._with_etag(info)
        node.etag = info.etag
        self._remember_meta(info, meta)

    async def _rename_tree(self, src: str, dst: str, node: Node) -> None:
        """Copy every key below ``src/`` to ``dst/``, then delete the sources, deepest first.

        Object stores have no directory rename; this is O(objects) server-side copies, done in
        parallel. Dirty open files below are uploaded first so the copies carry their data."""
        for ofile in list(self._open.values()):
            p = ofile.node.path
            if p is None or not p.startswith(src + "/"):
                continue
            if ofile.dirty and not ofile.unlinked:
                await self._upload(ofile)
            ofile.end_stream("its directory was renamed")  # its parts would go under ``src``
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
            meta = self.meta.get(obj.key, etag, mtime)
            async with limiter:
                info = await self.backend.copy(obj.key, new_key)
            if meta is not None:  # the copy keeps the metadata: so does our memory of it
                etag, mtime = ("dir", None) if is_marker else (info.etag, info.mtime_ns)
                self._memo(new_key, etag, meta, mtime)

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
            self._memo(key, None, None)

    # --- extended attributes (storagefs/fs/xattrs.py) -----------------------------------

    async def _xattr_node(self, ino: int) -> tuple[Node, dict[str, bytes]]:
        """The node (attributes fresh, as for a stat) and every attribute it stores."""
        node = await self.getattr(ino)
        await self._learn_extra(node, strict=True)
        return node, xattrs.decode(node.attrs.extra)

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        key = xattrs.user_name(name)  # other namespaces: EOPNOTSUPP before any request
        _, values = await self._xattr_node(ino)
        try:
            return values[key]
        except KeyError:
            raise FSError(errno.ENODATA) from None

    async def listxattr(self, ino: int) -> list[bytes]:
        # Free when the metadata is known (after any stat or listing that carried it), so
        # ls -l and cp -a, which ask for every file, cost no request.
        _, values = await self._xattr_node(ino)
        return xattrs.listed(values)

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
        meta = attrs.to_metadata()
        if node.link is not None:
            meta[META_NLINK] = str(node.links)
        room = self.options.max_metadata_bytes
        if room is not None and metadata_size(meta) > room:
            raise FSError(errno.ENOSPC, f"user metadata over the stores' {room} bytes")
        before, node.attrs = node.attrs, attrs
        current = self._open.get(node.ino)
        if current is not None and current.dirty:
            current.version += 1  # the upload of the staging file carries them
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


def path_is_open(fs: Filesystem, node: Node) -> bool:
    """True while a staging copy makes the local node newer than anything on the store."""
    ofile = fs._open.get(node.ino)
    return ofile is not None and ofile.staging is not None
