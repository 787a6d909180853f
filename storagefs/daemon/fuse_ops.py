"""The thin pyfuse3 adapter: unpack arguments, call the core (through the router that answers
``/.health``, fs/health_router.py), turn its errors into errnos.

Only FUSEError may leave a pyfuse3 handler — anything else ends the main loop and the mount
dies with it — so every handler goes through ``_guarded``: the core raises one error type
(FSError: an errno and a log level; backend errors are converted inside the core), anything
else is a bug, logged with its traceback and answered with EIO.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from storagefs.context import correlation
from storagefs.fs.errors import FSError
from storagefs.fs.health_router import HealthRouter
from storagefs.fs.inodes import Node
from storagefs.fs.names import decode_name, encode_name

log = logging.getLogger("storagefs.fuse")

P = ParamSpec("P")
R = TypeVar("R")


def _guarded(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with correlation("fuse"):
                return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FSError as exc:
            log.log(exc.level, "%s failed: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception as exc:
            log.exception("unexpected error in %s; answered EIO", fn.__name__)
            ops = args[0]
            if isinstance(ops, StorageOperations):
                ops.on_unexpected(exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class StorageOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(
        self,
        fs: HealthRouter,
        on_unexpected: Callable[[BaseException], None] = lambda exc: None,
    ) -> None:
        super().__init__()
        self.fs = fs
        self._dir_inodes: dict[int, int] = {}  # directory handle -> its inode (for ".")
        self.on_unexpected = on_unexpected  # telemetry: unexpected errors are noticed

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        a = node.attrs
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        ttl = self.fs.trusted_for(node)  # as long as the daemon trusts it, never longer
        e.entry_timeout = ttl
        e.attr_timeout = ttl
        e.st_mode = a.mode
        e.st_nlink = node.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        e.st_size = a.size
        # cp, cat and friends size their buffers by it: one 1 MiB request (the most FUSE takes
        # in one) instead of eight of 128 KiB; 256 MiB written with cp, ~0.25 s less.
        e.st_blksize = 1024 * 1024
        e.st_blocks = (a.size + 511) // 512
        e.st_atime_ns = a.atime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        return e

    @_guarded
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            node = await self.fs.lookup(parent_inode, decode_name(name))
        except FSError as exc:
            absent = (
                self.fs.absent_for(parent_inode, decode_name(name))
                if exc.errno == errno.ENOENT
                else 0.0
            )
            if absent <= 0:
                raise
            # A negative entry: the kernel answers ENOENT for the name itself for that long
            # (rsync's rename target, a shell's PATH search, make's and git's probes), and
            # forgets it as soon as this mount creates the name.
            e = pyfuse3.EntryAttributes()
            e.st_ino = 0
            e.entry_timeout = absent
            return e
        return self._entry(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.fs.forget(ino, count)

    @_guarded
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.getattr(inode))

    @_guarded
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = await self.fs.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            fh=fh,
            caller=ctx.uid,
        )
        return self._entry(node)

    @_guarded
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        mode &= ~ctx.umask
        node = await self.fs.mkdir(parent_inode, decode_name(name), mode, ctx.uid, ctx.gid)
        return self._entry(node)

    @_guarded
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = await self.fs.symlink(parent_inode, decode_name(name), target, ctx.uid, ctx.gid)
        return self._entry(node)

    @_guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.fs.readlink(inode)

    @_guarded
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        mode &= ~ctx.umask
        node = await self.fs.mknod(parent_inode, decode_name(name), mode, rdev, ctx.uid, ctx.gid)
        return self._entry(node)

    @_guarded
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.link(inode, new_parent_inode, decode_name(new_name)))

    @_guarded
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.rmdir(parent_inode, decode_name(name))

    @_guarded
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.unlink(parent_inode, decode_name(name))

    @_guarded
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        await self.fs.rename(
            parent_inode_old,
            decode_name(name_old),
            parent_inode_new,
            decode_name(name_new),
            flags,
        )

    @_guarded
    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        mode &= ~ctx.umask
        fh, node = await self.fs.create(
            parent_inode, decode_name(name), mode, flags, ctx.uid, ctx.gid
        )
        direct = self.fs.writes_bypass_page_cache(fh)
        return pyfuse3.FileInfo(fh=fh, direct_io=direct), self._entry(node)

    @_guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        fh, keep_cache = await self.fs.open(inode, flags)
        direct = self.fs.is_virtual(fh) or self.fs.writes_bypass_page_cache(fh)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache, direct_io=direct)

    @_guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.fs.read(fh, off, size)

    @_guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.fs.write(fh, off, buf)

    @_guarded
    async def flush(self, fh: int) -> None:
        await self.fs.flush(fh)

    @_guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.fs.fsync(fh)

    @_guarded
    async def release(self, fh: int) -> None:
        await self.fs.release(fh)

    @_guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        fh = await self.fs.opendir(inode)
        self._dir_inodes[fh] = inode
        return fh

    @_guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # The kernel does not make up "." and ".." for FUSE (ls -a would lack them): offsets
        # 0 and 1 are theirs, the core's entries follow. The kernel keeps no reference for
        # them (readdirplus skips both), so they take no lookup.
        if start_id < 2:
            ino = self._dir_inodes[fh]
            here = await self.fs.dir_node(ino)
        for dot in range(start_id, 2):
            if not pyfuse3.readdir_reply(token, b"." * (dot + 1), self._entry(here), dot + 1):
                return
        for entry in self.fs.readdir(fh, max(start_id - 2, 0)):
            if not pyfuse3.readdir_reply(
                token, encode_name(entry.name), self._entry(entry.node), entry.next_id + 2
            ):
                break
            self.fs.add_lookup(entry.node)  # readdirplus gives the kernel a reference

    @_guarded
    async def releasedir(self, fh: int) -> None:
        self._dir_inodes.pop(fh, None)
        self.fs.releasedir(fh)

    @_guarded
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None  # directory changes are on the store when their call returns

    @_guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        for name, value in self.fs.statfs().items():
            setattr(data, name, value)
        return data

    # Extended attributes (user.* only; the core's storagefs/fs/xattrs.py). Names outside
    # user.* are refused by the core before any request: the kernel asks for
    # security.capability before every write(2) and ls -l for ACLs on every file, so those
    # answers must cost no more than this round trip. pyfuse3 checks setxattr's
    # XATTR_CREATE/XATTR_REPLACE itself (with a getxattr) and does not pass the flags on.
    @_guarded
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.fs.getxattr(inode, name)

    @_guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return await self.fs.listxattr(inode)

    @_guarded
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.fs.setxattr(inode, name, value)

    @_guarded
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.removexattr(inode, name)
