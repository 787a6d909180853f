"""A directory on a local (or locally mounted) filesystem as a backend: ``file:///path``.

Keys are paths below ``root``. Every directory is an explicit marker object ``"d/"``: listings
report it, ``stat("d/")`` finds it, deleting it removes the directory only when it is empty
(deleting keys of a recursive listing in reverse order therefore removes a whole tree). A file
``"a"`` and a key ``"a/b"`` cannot both exist here, unlike on an object store: the second write
fails with :class:`Conflict`.

Writes are atomic: a temporary file in ``root/.storagefs-tmp`` (never listed) is filled,
fsync'd, given its metadata and renamed over the target, then the directory is fsync'd.
User metadata lives in ``user.storagefs.<name>`` extended attributes; on a filesystem that
refuses them the backend warns once and keeps working without metadata.

Only regular files and directories are objects; symlinks, sockets and names that are not valid
UTF-8 are skipped (they cannot be keys on the other backends).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import shutil
import stat as stat_mod
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import trio

from storagefs.backends.base import (
    BackendError,
    ConfigurationError,
    Conflict,
    InvalidRequest,
    ListPage,
    MetadataTooLarge,
    NotFound,
    ObjectInfo,
    PermissionDenied,
    TransientError,
)
from storagefs.posix_names import component_problem

log = logging.getLogger(__name__)

TMP_DIR = ".storagefs-tmp"
XATTR_PREFIX = "user.storagefs."
# Leftovers of writes interrupted by a crash; younger ones may belong to a write in progress.
STALE_TMP_SECONDS = 3600.0
_COPY_BUFFER = 1024 * 1024
_NO_XATTR = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}
_LOOKUPS = {"stat", "read", "download", "copy"}
_NO_OBJECT = {errno.ENOTDIR, errno.EISDIR, errno.ELOOP}
_CONFLICT = {errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY}

T = TypeVar("T")


class LocalBackend:
    def __init__(self, root: Path, name: str = "local") -> None:
        self.name = name
        self.root = Path(root)
        self._tmp = self.root / TMP_DIR
        self._xattrs = True  # until the filesystem refuses them
        self._skipped: set[Path] = set()

    def describe(self) -> str:
        return f"file://{self.root}"

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        await self._run("open", "", self._open_sync)

    def _open_sync(self) -> None:
        if not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            raise ConfigurationError(f"{self.name}: local directory {self.root} {what}")
        with contextlib.suppress(OSError):
            now = time.time()
            for entry in os.scandir(self._tmp):
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS:
                    os.unlink(entry.path)

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()

    async def health(self) -> None:
        def check() -> None:
            if not self.root.is_dir():
                raise TransientError(f"{self.name}: local directory {self.root} is gone")

        await self._run("health", "", check)

    # --- reads ---------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        return await self._run("stat", key, lambda: self._stat_sync(key, path))

    def _stat_sync(self, key: str, path: Path) -> ObjectInfo:
        st = path.lstat()
        if not self._is_object(key, st.st_mode):
            raise NotFound(key)
        return self._info(key, st, self._get_meta(path))

    async def read(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise InvalidRequest(f"{self.name}: read {key!r}: negative offset or length")
        path = self._path(key)

        def read() -> bytes:
            if key.endswith("/"):
                self._stat_sync(key, path)  # a marker reads as empty, if it exists
                return b""
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                st = os.fstat(fd)
                self._require_file(key, st.st_mode)
                # Never allocate more than the file holds: callers may ask for "the rest".
                return os.pread(fd, min(length, max(0, st.st_size - offset)), offset)
            finally:
                os.close(fd)

        return await self._run("read", key, read)

    async def download(self, key: str, dest: str) -> ObjectInfo:
        path = self._path(key)

        def download() -> ObjectInfo:
            with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as src:
                st = os.fstat(src.fileno())
                self._require_file(key, st.st_mode)
                with open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, _COPY_BUFFER)
            return self._info(key, st, self._get_meta(path))

        return await self._run("download", key, download)

    async def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        limit: int = 1000,
    ) -> ListPage:
        if delimiter not in ("/", None):
            raise InvalidRequest(f"{self.name}: list: only '/' or no delimiter is supported")
        if limit < 1:
            raise InvalidRequest(f"{self.name}: list: limit must be positive")
        return await self._run(
            "list", prefix, lambda: self._list_sync(prefix, delimiter, token, limit)
        )

    def _list_sync(
        self, prefix: str, delimiter: str | None, token: str | None, limit: int
    ) -> ListPage:
        entries = self._walk(prefix, recursive=delimiter is None, after=token)
        page: list[tuple[str, os.stat_result | None]] = []
        more = False
        for entry in entries:
            if len(page) == limit:
                more = True
                break
            page.append(entry)
        objects = [self._info(k, st, None) for k, st in page if st is not None]
        prefixes = [k for k, st in page if st is None]
        return ListPage(objects, prefixes, page[-1][0] if more else None)

    def _walk(
        self, prefix: str, *, recursive: bool, after: str | None
    ) -> Iterator[tuple[str, os.stat_result | None]]:
        """(key, stat) in byte order; stat None for a common prefix (non-recursive only)."""
        dir_key, _, fragment = prefix.rpartition("/")
        dir_key = f"{dir_key}/" if dir_key else ""
        try:
            dir_path = self._path(dir_key) if dir_key else self.root
        except InvalidRequest:
            return  # a prefix no valid key can have
        after_b = after.encode() if after is not None else None
        if dir_key and not fragment:
            # The prefix names a directory: its own marker comes first, like on S3.
            try:
                st = dir_path.lstat()
            except FileNotFoundError:
                return
            except NotADirectoryError:
                return
            if not stat_mod.S_ISDIR(st.st_mode):
                return
            if after_b is None or dir_key.encode() > after_b:
                yield dir_key, st
        yield from self._walk_dir(dir_path, dir_key, fragment, recursive, after_b)

    def _walk_dir(
        self,
        dir_path: Path,
        dir_key: str,
        fragment: str,
        recursive: bool,
        after: bytes | None,
    ) -> Iterator[tuple[str, os.stat_result | None]]:
        # Sorting siblings by key (a directory's key ends in "/") and descending in that order
        # yields the whole tree in byte order: every key below "d/" sorts between "d/" and the
        # next sibling, because no sibling name can contain "/".
        children: list[tuple[bytes, str, os.stat_result]] = []
        try:
            scan = os.scandir(dir_path)
        except (FileNotFoundError, NotADirectoryError):
            return
        with scan:
            for entry in scan:
                if not entry.name.startswith(fragment):
                    continue
                if not dir_key and entry.name == TMP_DIR:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while we looked
                if stat_mod.S_ISDIR(st.st_mode):
                    key = f"{dir_key}{entry.name}/"
                elif stat_mod.S_ISREG(st.st_mode):
                    key = f"{dir_key}{entry.name}"
                else:
                    continue
                try:
                    key_b = key.encode()
                except UnicodeEncodeError:
                    self._skip_once(dir_path / entry.name)
                    continue
                children.append((key_b, key, st))
        children.sort(key=lambda c: c[0])
        for key_b, key, st in children:
            is_dir = key.endswith("/")
            # Before the token: skip, unless a directory that holds the token (its later
            # keys are still to come).
            if (
                after is not None
                and key_b <= after
                and not (recursive and is_dir and after.startswith(key_b))
            ):
                continue
            if not is_dir:
                yield key, st
            elif not recursive:
                yield key, None
            else:
                if after is None or key_b > after:
                    yield key, st
                yield from self._walk_dir(
                    Path(dir_path, key[len(dir_key) : -1]), key, "", True, after
                )

    # --- writes --------------------------------------------------------------------------

    async def write(self, key: str, source: str, metadata: Mapping[str, str]) -> ObjectInfo:
        path = self._path(key)

        def write() -> ObjectInfo:
            if key.endswith("/"):
                if Path(source).stat().st_size != 0:
                    raise InvalidRequest(f"{self.name}: directory marker {key!r} must be empty")
                return self._make_dir(key, path, metadata)
            with open(source, "rb") as src:
                return self._replace(
                    key, path, lambda out: shutil.copyfileobj(src, out, _COPY_BUFFER), metadata
                )

        return await self._run("write", key, write)

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        path = self._path(key)

        def write() -> ObjectInfo:
            if key.endswith("/"):
                if data:
                    raise InvalidRequest(f"{self.name}: directory marker {key!r} must be empty")
                return self._make_dir(key, path, metadata)
            return self._replace(key, path, lambda out: out.write(data), metadata)

        return await self._run("write", key, write)

    async def copy(
        self, src: str, dst: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        src_path, dst_path = self._path(src), self._path(dst)
        if src.endswith("/") != dst.endswith("/"):
            raise InvalidRequest(f"{self.name}: copy {src!r} -> {dst!r}: marker and file mixed")

        def copy() -> ObjectInfo:
            if src.endswith("/"):
                self._stat_sync(src, src_path)
                meta = metadata if metadata is not None else self._get_meta(src_path)
                return self._make_dir(dst, dst_path, meta)
            with open(os.open(src_path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
                self._require_file(src, os.fstat(f.fileno()).st_mode)
                meta = metadata if metadata is not None else self._get_meta(src_path)
                return self._replace(
                    dst, dst_path, lambda out: shutil.copyfileobj(f, out, _COPY_BUFFER), meta
                )

        return await self._run("copy", src, copy)

    async def delete(self, key: str) -> None:
        path = self._path(key)

        def delete() -> None:
            try:
                if key.endswith("/"):
                    path.rmdir()
                else:
                    st = path.lstat()
                    if stat_mod.S_ISREG(st.st_mode):
                        os.unlink(path)
            except (FileNotFoundError, NotADirectoryError):
                pass  # already gone
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # The marker of a directory that still has children: the directory stays.

        await self._run("delete", key, delete)

    def _replace(
        self,
        key: str,
        path: Path,
        fill: Callable[[io.BufferedWriter], object],
        metadata: Mapping[str, str],
    ) -> ObjectInfo:
        self._tmp.mkdir(exist_ok=True)
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        try:
            with open(tmp, "wb") as out:
                fill(out)
                out.flush()
                os.fsync(out.fileno())
            self._set_meta(tmp, metadata)
            self._ensure_parent(path)
            tmp.rename(path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fsync_dir(path.parent)
        return self._info(key, path.stat(), self._kept(metadata))

    def _make_dir(self, key: str, path: Path, metadata: Mapping[str, str]) -> ObjectInfo:
        self._ensure_parent(path)
        with contextlib.suppress(FileExistsError):
            path.mkdir()
        st = path.lstat()
        if not stat_mod.S_ISDIR(st.st_mode):
            raise Conflict(f"{self.name}: {key!r}: a file of that name exists")
        self._set_meta(path, metadata, replace=True)
        self._fsync_dir(path.parent)
        return self._info(key, st, self._kept(metadata))

    def _ensure_parent(self, path: Path) -> None:
        parent = path.parent
        if parent != self.root:
            os.makedirs(parent, exist_ok=True)

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- metadata in extended attributes -------------------------------------------------

    def _get_meta(self, path: Path) -> dict[str, str]:
        if not self._xattrs:
            return {}
        try:
            names = os.listxattr(path, follow_symlinks=False)
            meta = {}
            for attr in names:
                if attr.startswith(XATTR_PREFIX):
                    value = os.getxattr(path, attr, follow_symlinks=False)
                    meta[attr[len(XATTR_PREFIX) :]] = value.decode(errors="replace")
            return meta
        except OSError as exc:
            if exc.errno in _NO_XATTR:
                self._disable_xattrs(exc)
                return {}
            raise

    def _set_meta(self, path: Path, metadata: Mapping[str, str], replace: bool = False) -> None:
        if not self._xattrs:
            return
        try:
            if replace:
                for attr in os.listxattr(path, follow_symlinks=False):
                    if attr.startswith(XATTR_PREFIX) and attr[len(XATTR_PREFIX) :] not in metadata:
                        os.removexattr(path, attr, follow_symlinks=False)
            for name, value in metadata.items():
                os.setxattr(path, XATTR_PREFIX + name, value.encode(), follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _NO_XATTR:
                self._disable_xattrs(exc)
                return
            if exc.errno in (errno.ENOSPC, errno.E2BIG):
                # The filesystem's room for one file's xattrs (ext4: one block) is full:
                # the caller's metadata is too big for it, retrying cannot help.
                raise MetadataTooLarge(f"{self.name}: {path}: {exc.strerror}") from exc
            raise

    def _kept(self, metadata: Mapping[str, str]) -> dict[str, str]:
        """The metadata a write just stored (none when xattrs are unavailable)."""
        return dict(metadata) if self._xattrs else {}

    def _disable_xattrs(self, exc: OSError) -> None:
        self._xattrs = False
        log.warning(
            "%s: %s does not support extended attributes (%s): file modes, owners and times"
            " are not kept on this backend",
            self.name,
            self.root,
            exc.strerror,
        )

    # --- helpers -------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """The file for ``key``; InvalidRequest for keys that are not a safe path below root."""
        parts = key[:-1].split("/") if key.endswith("/") else key.split("/")
        if not key or any(component_problem(p) is not None for p in parts) or parts[0] == TMP_DIR:
            raise InvalidRequest(f"{self.name}: {key!r} is not a valid key for a local directory")
        return self.root.joinpath(*parts)

    @staticmethod
    def _is_object(key: str, mode: int) -> bool:
        return stat_mod.S_ISDIR(mode) if key.endswith("/") else stat_mod.S_ISREG(mode)

    def _require_file(self, key: str, mode: int) -> None:
        if not stat_mod.S_ISREG(mode):
            raise NotFound(f"{self.name}: {key!r} is not an object")

    @staticmethod
    def _info(key: str, st: os.stat_result, meta: Mapping[str, str] | None) -> ObjectInfo:
        size = 0 if key.endswith("/") else st.st_size
        return ObjectInfo(key, size, st.st_mtime_ns, f"{st.st_mtime_ns}-{size}", meta)

    def _skip_once(self, path: Path) -> None:
        if path not in self._skipped:
            self._skipped.add(path)
            log.warning("%s: skipping %r: its name is not valid UTF-8", self.name, str(path))

    async def _run(self, op: str, key: str, fn: Callable[[], T]) -> T:
        try:
            return await trio.to_thread.run_sync(fn)
        except BackendError:
            raise
        except OSError as exc:
            raise self._classify(op, key, exc) from exc

    def _classify(self, op: str, key: str, exc: OSError) -> BackendError:
        where = f"{self.name}: {op} {key!r} under {self.root}: {exc.strerror or exc}"
        if exc.errno == errno.ENOENT or (exc.errno in _NO_OBJECT and op in _LOOKUPS):
            # "a/b" where "a" is a file, "d" a directory, "l" a symlink: no such object.
            return NotFound(where)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return PermissionDenied(where)
        if exc.errno in _CONFLICT:
            return Conflict(where)
        if exc.errno in (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ):
            return InvalidRequest(where)
        # EIO, ENOSPC, ESTALE...: the disk or the network filesystem may recover.
        return TransientError(where)
