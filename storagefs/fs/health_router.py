"""The one place that knows ``/.health``: requests on its inodes and handles, and on the root's
``.health`` name, are answered here from the :class:`HealthTree`; everything else goes to the
core :class:`Filesystem` unchanged.

The tree owns a reserved inode range (``HEALTH_INODE_BASE`` up, see health_dir.py) and this
router a reserved file-handle range (``HEALTH_FH_BASE`` up), both far above anything the core
hands out, so telling the two apart is one comparison and the core never sees a health number.
The tree is read-only (docs/SEMANTICS.md, docs/HEALTH.md): every change under it is EACCES.
The core's only remaining part in this is that its listings leave a bucket's own ``.health``
objects out (fs/dirs.py): that name is this router's, whatever the bucket holds.
"""

from __future__ import annotations

import errno
import os

from storagefs.fs.core import DirEntry, Filesystem
from storagefs.fs.errors import FSError
from storagefs.fs.health_dir import HealthTree, Provider
from storagefs.fs.inodes import ROOT_INODE, Node
from storagefs.fs.names import HEALTH_NAME

HEALTH_FH_BASE = 1 << 62  # the core numbers its handles from 1 up


def _read_only() -> FSError:
    return FSError(errno.EACCES, "/.health is read-only")


class HealthRouter:
    """What the FUSE adapter calls: the core's operations, with ``/.health`` routed off."""

    def __init__(self, core: Filesystem, provider: Provider | None = None) -> None:
        self.core = core
        self.health = HealthTree(provider, core.options.uid, core.options.gid)
        self._files: dict[int, bytes] = {}  # open health files: their snapshot at open
        self._dirs: dict[int, list[Node]] = {}  # open health directories: their entries
        self._next_fh = HEALTH_FH_BASE

    # --- telling the two apart ----------------------------------------------------------

    @staticmethod
    def _owned(*inos: int) -> bool:
        return any(HealthTree.owns(ino) for ino in inos)

    @staticmethod
    def _owned_fh(fh: int) -> bool:
        return fh >= HEALTH_FH_BASE

    @staticmethod
    def _is_root_name(parent_ino: int, name: str) -> bool:
        return parent_ino == ROOT_INODE and name == HEALTH_NAME

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _refuse_name(self, answer: int) -> None:
        """A change to the root's ``.health`` name: EROFS on a read-only mount (as for any
        name there), otherwise ``answer``."""
        if self.core.options.read_only:
            raise FSError(errno.EROFS)
        raise FSError(answer, "/.health is read-only")

    # --- metadata -----------------------------------------------------------------------

    async def lookup(self, parent_ino: int, name: str) -> Node:
        if self._owned(parent_ino):
            found = self.health.lookup(parent_ino, name)
            if found is None:
                raise FSError(errno.ENOENT)
            return found
        if self._is_root_name(parent_ino, name):
            return self.health.root()
        return await self.core.lookup(parent_ino, name)

    def trusted_for(self, node: Node) -> float:
        return self.core.trusted_for(node)  # health nodes expire on the same clock

    def absent_for(self, parent_ino: int, name: str | None = None) -> float:
        if self._owned(parent_ino):
            return 0.0  # its names come and go with the chain's state
        return self.core.absent_for(parent_ino, name)

    def forget(self, ino: int, count: int) -> None:
        if not self._owned(ino):  # health nodes are made fresh per request: nothing to drop
            self.core.forget(ino, count)

    def add_lookup(self, node: Node) -> None:
        if not self._owned(node.ino):
            self.core.add_lookup(node)

    async def dir_node(self, ino: int) -> Node:
        """The attributes for a directory's "." entry: local for /.health, the inode table's
        for any other (asking the store for "." is not worth a request)."""
        if self._owned(ino):
            return await self.getattr(ino)
        return self.core.inodes.get(ino)

    async def getattr(self, ino: int) -> Node:
        if self._owned(ino):
            found = self.health.getattr(ino)
            if found is None:
                raise FSError(errno.ENOENT)
            return found
        return await self.core.getattr(ino)

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
        if self._owned(ino):
            raise _read_only()
        return await self.core.setattr(
            ino,
            mode=mode,
            uid=uid,
            gid=gid,
            size=size,
            atime_ns=atime_ns,
            mtime_ns=mtime_ns,
            fh=fh,
            caller=caller,
        )

    # /.health holds no extended attributes and never asks a store about them.

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        if self._owned(ino):
            raise FSError(errno.ENODATA)
        return await self.core.getxattr(ino, name)

    async def listxattr(self, ino: int) -> list[bytes]:
        if self._owned(ino):
            return []
        return await self.core.listxattr(ino)

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        if self._owned(ino):
            raise FSError(errno.EOPNOTSUPP)
        await self.core.setxattr(ino, name, value, flags)

    async def removexattr(self, ino: int, name: bytes) -> None:
        if self._owned(ino):
            raise FSError(errno.EOPNOTSUPP)
        await self.core.removexattr(ino, name)

    async def readlink(self, ino: int) -> bytes:
        if self._owned(ino):
            raise FSError(errno.EINVAL)  # nothing there is a link
        return await self.core.readlink(ino)

    def statfs(self) -> dict[str, int]:
        return self.core.statfs()

    # --- changes to names ---------------------------------------------------------------

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Node:
        if self._owned(parent_ino):
            raise _read_only()
        if self._is_root_name(parent_ino, name):
            self._refuse_name(errno.EEXIST)
        return await self.core.mkdir(parent_ino, name, mode, uid, gid)

    async def symlink(self, parent_ino: int, name: str, target: bytes, uid: int, gid: int) -> Node:
        if self._owned(parent_ino):
            raise _read_only()
        if self._is_root_name(parent_ino, name):
            self._refuse_name(errno.EEXIST)
        return await self.core.symlink(parent_ino, name, target, uid, gid)

    async def mknod(
        self, parent_ino: int, name: str, mode: int, rdev: int, uid: int, gid: int
    ) -> Node:
        if self._owned(parent_ino):
            raise _read_only()
        if self._is_root_name(parent_ino, name):
            self._refuse_name(errno.EEXIST)
        return await self.core.mknod(parent_ino, name, mode, rdev, uid, gid)

    async def link(self, ino: int, new_parent_ino: int, new_name: str) -> Node:
        if self._owned(ino, new_parent_ino):
            raise _read_only()
        if self._is_root_name(new_parent_ino, new_name):
            self._refuse_name(errno.EEXIST)
        return await self.core.link(ino, new_parent_ino, new_name)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        if self._owned(parent_ino) or self._is_root_name(parent_ino, name):
            raise _read_only()
        await self.core.rmdir(parent_ino, name)

    async def unlink(self, parent_ino: int, name: str) -> None:
        if self._owned(parent_ino):
            raise _read_only()
        if self._is_root_name(parent_ino, name):
            self._refuse_name(errno.EACCES)
        await self.core.unlink(parent_ino, name)

    async def rename(
        self,
        old_parent_ino: int,
        old_name: str,
        new_parent_ino: int,
        new_name: str,
        flags: int = 0,
    ) -> None:
        if self._owned(old_parent_ino, new_parent_ino):
            raise _read_only()
        if self._is_root_name(old_parent_ino, old_name) or self._is_root_name(
            new_parent_ino, new_name
        ):
            self._refuse_name(errno.EACCES)
        await self.core.rename(old_parent_ino, old_name, new_parent_ino, new_name, flags)

    # --- files --------------------------------------------------------------------------

    async def create(
        self, parent_ino: int, name: str, mode: int, flags: int, uid: int, gid: int
    ) -> tuple[int, Node]:
        if self._owned(parent_ino):
            raise _read_only()
        if self._is_root_name(parent_ino, name):
            self._refuse_name(errno.EACCES)
        return await self.core.create(parent_ino, name, mode, flags, uid, gid)

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """A file handle and whether the kernel may keep its page cache for this file."""
        if not self._owned(ino):
            return await self.core.open(ino, flags)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise _read_only()
        content = self.health.content(ino)  # a fresh snapshot per open
        if content is None:
            known = self.health.path_of(ino) is not None
            raise FSError(errno.EISDIR if known else errno.ENOENT)
        fh = self._new_fh()
        self._files[fh] = content
        return fh, False

    def is_virtual(self, fh: int) -> bool:
        """A /.health file: sized by its snapshot, so the kernel must not trust st_size."""
        return fh in self._files

    def writes_bypass_page_cache(self, fh: int) -> bool:
        return not self._owned_fh(fh) and self.core.writes_bypass_page_cache(fh)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        if not self._owned_fh(fh):
            return await self.core.read(fh, offset, size)
        content = self._files.get(fh)
        if content is None:
            raise FSError(errno.EBADF)
        return content[offset : offset + size]

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        if self._owned_fh(fh):
            raise FSError(errno.EBADF)  # opened read-only: the kernel never asks
        return await self.core.write(fh, offset, data)

    async def flush(self, fh: int) -> None:
        if not self._owned_fh(fh):
            await self.core.flush(fh)

    async def fsync(self, fh: int) -> None:
        if self._owned_fh(fh):
            raise FSError(errno.EBADF)  # as before the router: no handle the core knows
        await self.core.fsync(fh)

    async def release(self, fh: int) -> None:
        if self._owned_fh(fh):
            self._files.pop(fh, None)
        else:
            await self.core.release(fh)

    # --- directories --------------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        if not self._owned(ino):
            return await self.core.opendir(ino)
        dh = self._new_fh()
        self._dirs[dh] = self.health.children(ino)
        return dh

    def readdir(self, dh: int, start: int) -> list[DirEntry]:
        """Entries from ``start`` on; the adapter calls add_lookup for each one it sends."""
        if not self._owned_fh(dh):
            return self.core.readdir(dh, start)
        try:
            nodes = self._dirs[dh]
        except KeyError:
            raise FSError(errno.EBADF) from None
        return [
            DirEntry(str(n.path).rsplit("/", 1)[-1], n, i + 1)
            for i, n in enumerate(nodes[start:], start)
        ]

    def releasedir(self, dh: int) -> None:
        if self._owned_fh(dh):
            self._dirs.pop(dh, None)
        else:
            self.core.releasedir(dh)
