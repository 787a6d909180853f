"""The backend contract: one small async interface every store implements.

A backend maps *keys* (``"dir/file"``, relative to the backend's own root and prefix) to
objects. It knows nothing about inodes, POSIX or the other backends. Its one job beyond moving
bytes is to *classify* its SDK's errors into the typed errors below; retrying, timeouts and
circuit breaking happen once, in :mod:`storagefs.resilience`.

Conventions every backend follows (the contract suite in ``tests/backends`` holds them to it):

* A key ending in ``"/"`` is a directory marker: a zero-byte object that makes an empty
  directory visible. Directories that merely contain objects are *implicit* (common prefixes).
* ``list(prefix, delimiter="/")`` returns, in ascending UTF-8 byte order, the objects directly
  under ``prefix`` (including the marker ``prefix`` itself if it exists) and the common prefixes
  one level down, each ending in ``"/"``. ``delimiter=None`` lists recursively.
* ``metadata`` is the user metadata (``mode``, ``uid``, ``gid``, ``mtime``: decimal strings).
  Listings do not carry it (``ObjectInfo.metadata is None``); ``stat`` always does.
* ``delete`` of a missing key succeeds (object stores are idempotent there).
* Error messages never contain credentials.
"""

from __future__ import annotations

import dataclasses
import mimetypes
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol, runtime_checkable

# Names of the user-metadata entries the filesystem stores on every object. The same names as
# s3fs-fuse and rclone use, so objects written by either keep their attributes here and back.
META_MODE = "mode"
META_UID = "uid"
META_GID = "gid"
META_MTIME = "mtime"  # seconds since the epoch, may carry a fraction ("1700000000.123456789")


NS = 1_000_000_000  # nanoseconds in a second

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def datetime_to_ns(when: datetime) -> int:
    """Nanoseconds since the epoch of an SDK's last-modified time (S3's ``LastModified``,
    Azure's ``last_modified``), exactly: a datetime holds whole microseconds, and timedelta
    arithmetic is integer arithmetic, where ``timestamp()`` would round through a float. A
    naive datetime is taken as UTC (what the stores send)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _MICROSECOND * 1000


def seconds_to_ns(seconds: float) -> int:
    """Nanoseconds from a float of seconds (a ``time.time()`` the journal recorded): the
    nearest integer to the float's exact value (Decimal of a float is exact; ``seconds * NS``
    in floats would round a second time)."""
    return round(Decimal(seconds) * NS)


class BackendError(Exception):
    """Base of every classified backend error. Not retried unless a subclass says so."""


class NotFound(BackendError):
    """The key (or the container/bucket) does not exist."""


class Conflict(BackendError):
    """The store refused the operation because of the object's current state."""


class PermissionDenied(BackendError):
    """Credentials are missing, wrong, or lack the right for this operation."""


class InvalidRequest(BackendError):
    """The store rejected the request itself (bad key, bad argument): retrying will not help."""


class MetadataTooLarge(InvalidRequest):
    """The object's metadata is more than the store holds (a local filesystem's xattr space):
    ENOSPC, and never worth retrying."""


class TransientError(BackendError):
    """Timeouts, connection errors, 5xx, throttling: worth retrying."""


class BackendUnavailable(BackendError):
    """The backend is considered down (circuit breaker open, or retries exhausted)."""


class NoSpace(BackendError):
    """Local space for unsynced data (the journal) is full: the write is refused, not lost."""


class ConfigurationError(BackendError):
    """The backend cannot be used as configured (no such bucket, malformed URL, ...)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    # The store's last-modified time, nanoseconds since the epoch: an integer, because cp -p,
    # rsync -a and make compare times exactly and a float of seconds is ~100 ns off today.
    mtime_ns: int
    etag: str | None = None
    metadata: Mapping[str, str] | None = None  # None: not fetched (listings)


@dataclasses.dataclass(frozen=True, slots=True)
class ListPage:
    objects: list[ObjectInfo]
    prefixes: list[str]  # common prefixes, full keys ending in the delimiter
    token: str | None  # pass back to get the next page; None on the last page


@runtime_checkable
class Backend(Protocol):
    """What the filesystem core, the chain and the resilience layer all speak."""

    name: str  # short name used in logs, health files and metrics ("s3", "azure", "local")

    def describe(self) -> str:
        """A human description without secrets, e.g. ``s3://bucket/prefix at http://...``."""
        ...

    async def open(self) -> None:
        """Check the store is reachable and the bucket/container exists (ConfigurationError)."""
        ...

    async def close(self) -> None: ...

    async def stat(self, key: str) -> ObjectInfo:
        """Size, etag and user metadata of one object; NotFound when absent."""
        ...

    async def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        limit: int = 1000,
    ) -> ListPage:
        """One page of objects and common prefixes under ``prefix``."""
        ...

    async def read(self, key: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``; short (or empty) at the end of the object."""
        ...

    async def download(self, key: str, dest: str) -> ObjectInfo:
        """The whole object into the local file ``dest`` (parallel ranged reads when large).

        Written in place: ``dest`` stays the same file (inode), truncated and filled, never
        replaced by a renamed temporary file, so a descriptor opened on it before the call
        sees the content (the core's staging files are opened first; issue #21 was a
        download that renamed over one, so the open handle wrote into an unlinked file)."""
        ...

    async def write(self, key: str, source: str, metadata: Mapping[str, str]) -> ObjectInfo:
        """Upload the local file ``source`` as ``key`` (multipart/blocks when large)."""
        ...

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        """Upload a small object from memory (directory markers, tiny files)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; succeeds when it is already gone."""
        ...

    async def copy(
        self, src: str, dst: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        """Server-side copy; ``metadata`` replaces the source's when given. src == dst allowed."""
        ...

    async def health(self) -> None:
        """A cheap request proving the store answers; raises a classified error if not."""
        ...


def content_type(key: str) -> str:
    """The Content-Type an upload of ``key`` is given, guessed from its name (a browser or a
    CDN serving the bucket shows ``report.pdf`` as a PDF). Compressed files keep their
    compression's type: ``a.tar.gz`` is ``application/gzip``, not a tar stored without its
    Content-Encoding."""
    if key.endswith("/"):
        return "application/x-directory"
    guessed, encoding = mimetypes.guess_type(key, strict=False)
    if encoding is not None:
        return _ENCODING_TYPES.get(encoding, "application/octet-stream")
    return guessed or "application/octet-stream"


_ENCODING_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
}


class Upload(Protocol):
    """An object uploaded in parts while it is still being written (S3 multipart upload).

    Parts are numbered from 1, each at least 5 MiB except the last, and may be put in any order
    and in parallel; nothing is visible under the key until :meth:`complete`. The object's
    metadata is the one given when the upload started. ``put_part`` must not keep ``data``
    once it returns: the caller fills the same buffer with a later part."""

    async def put_part(self, number: int, data: bytes | bytearray) -> None: ...

    async def complete(self) -> ObjectInfo:
        """Assemble the parts put so far into the object; it is then on the store."""
        ...

    async def abort(self) -> None:
        """Drop the parts (the store would otherwise keep and bill them)."""
        ...


class Store(Backend, Protocol):
    """The contract the filesystem core uses: a :class:`Backend` plus five capabilities a
    store *may not support*. Each has a default that is right for a store without it (the
    defaults live in one place, :class:`StoreBase`); a store that has one overrides it.

    ``peek``, ``start_upload`` and ``streams`` are the stores' own (S3 has both); the other
    three belong to a journal in front of the stores (the chain), which can drop changes that
    never reached any store. Plain backends apply every change at once, so to them a new key
    is nothing to remember and there is never anything to forget."""

    @property
    def streams(self) -> bool:
        """Whether :meth:`start_upload` can return an :class:`Upload` (False: always None)."""
        ...

    async def peek(self, key: str, length: int) -> tuple[ObjectInfo, bytes]:
        """What ``stat`` says of ``key`` plus its first ``length`` bytes. A store may do it in
        one request (S3: a ranged GET carries the same headers a HEAD does), which makes a
        cold ``cat`` of a small file one round trip instead of two. Default: ``stat`` then
        ``read``."""
        ...

    async def start_upload(self, key: str, metadata: Mapping[str, str]) -> Upload | None:
        """A streaming upload of ``key``, or None when there is none (then upload the
        finished file with ``write``). Default: None."""
        ...

    def note_created(self, key: str) -> None:
        """``key`` was just made new: no store holds it (the caller looked it up).
        Default: nothing to remember."""
        ...

    async def make_durable(self) -> None:
        """What ``fsync()`` asks: every change acknowledged so far survives a power cut.
        Default: nothing to do (a plain backend has applied each change when it returned; a
        journal in front of it may have written some without an fsync)."""
        ...

    async def forget_unstored(self, key: str) -> bool:
        """Drop the pending changes of ``key`` when no store has ever held it since
        :meth:`note_created`, so removing it (an unlink, a rename away) needs no request.
        False, dropping nothing, when a store may hold it: then delete it as usual.
        Default: False."""
        ...


class StoreBase:
    """The defaults of :class:`Store`'s capabilities, for a :class:`Backend` class to inherit
    (it then declares the store contract: :func:`as_store` takes it as it is). A class that
    has a capability overrides the method (and ``streams`` with ``start_upload``)."""

    @property
    def streams(self) -> bool:
        return False

    async def peek(self: Backend, key: str, length: int) -> tuple[ObjectInfo, bytes]:
        info = await self.stat(key)
        data = await self.read(key, 0, min(length, info.size)) if info.size else b""
        return info, data

    async def start_upload(self, key: str, metadata: Mapping[str, str]) -> Upload | None:
        return None

    def note_created(self, key: str) -> None:
        return None

    async def make_durable(self) -> None:
        return None

    async def forget_unstored(self, key: str) -> bool:
        return False


class PlainStore(StoreBase):
    """Any :class:`Backend` as a :class:`Store`: its own calls plus the defaults."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name

    def describe(self) -> str:
        return self.inner.describe()

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def stat(self, key: str) -> ObjectInfo:
        return await self.inner.stat(key)

    async def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        limit: int = 1000,
    ) -> ListPage:
        return await self.inner.list(prefix, delimiter=delimiter, token=token, limit=limit)

    async def read(self, key: str, offset: int, length: int) -> bytes:
        return await self.inner.read(key, offset, length)

    async def download(self, key: str, dest: str) -> ObjectInfo:
        return await self.inner.download(key, dest)

    async def write(self, key: str, source: str, metadata: Mapping[str, str]) -> ObjectInfo:
        return await self.inner.write(key, source, metadata)

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        return await self.inner.write_bytes(key, data, metadata)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def copy(
        self, src: str, dst: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        return await self.inner.copy(src, dst, metadata)

    async def health(self) -> None:
        await self.inner.health()


def as_store(backend: Backend) -> Store:
    """``backend`` as a :class:`Store`: itself when its class inherits :class:`StoreBase`
    (it declared the contract), else :class:`PlainStore` around it (the defaults)."""
    if isinstance(backend, StoreBase):
        return backend
    return PlainStore(backend)


# The capabilities as functions of any Backend, for callers that hold a plain Backend.


async def peek(backend: Backend, key: str, length: int) -> tuple[ObjectInfo, bytes]:
    """:meth:`Store.peek` of ``backend`` (``stat`` then ``read`` when it has no own)."""
    return await as_store(backend).peek(key, length)


async def start_upload(backend: Backend, key: str, metadata: Mapping[str, str]) -> Upload | None:
    """:meth:`Store.start_upload` of ``backend``: None when it has no streaming upload (S3
    has one, Azure and local directories do not)."""
    return await as_store(backend).start_upload(key, metadata)


def note_created(backend: Backend, key: str) -> None:
    """:meth:`Store.note_created` of ``backend``."""
    as_store(backend).note_created(key)


async def make_durable(backend: Backend) -> None:
    """:meth:`Store.make_durable` of ``backend``."""
    await as_store(backend).make_durable()


async def forget_unstored(backend: Backend, key: str) -> bool:
    """:meth:`Store.forget_unstored` of ``backend``: False when it has nothing to forget."""
    return await as_store(backend).forget_unstored(key)
