"""Inode numbers for paths, and the kernel's lookup counts on them.

The kernel refers to files by inode number; object stores know only keys. A node lives while
the kernel holds a lookup reference or a file handle is open; ``forget`` releases it. Paths
change on rename (a whole subtree at once), and a node whose path was unlinked or replaced is
*detached*: it keeps serving open handles but no longer resolves by name.

Inode numbers are stable for the life of a file within a mount: a node the kernel forgot
leaves its number behind (by path), and the next lookup of that path gets it back, so ``stat``
gives the same ``st_ino`` before and after any number of lookups, forgets and renames (of the
file or of a directory above it). Unlink and replacement end a file's life, and its number.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
from collections.abc import Iterator

from storagefs.fs.attrs import Attrs
from storagefs.fs.errors import FSError

ROOT_INODE = 1
# Numbers of forgotten nodes kept for reuse; beyond this the oldest are dropped (a file not
# looked up since then gets a new number, as after a remount).
RETIRED_MAX = 200_000


@dataclasses.dataclass(slots=True)
class Node:
    ino: int
    path: str | None  # None once detached (unlinked or replaced)
    attrs: Attrs
    etag: str | None = None
    expires: float = 0.0  # time.monotonic() after which attrs are re-read from the store
    lookups: int = 0
    handles: int = 0
    target: bytes | None = None  # a symbolic link's target, once read

    @property
    def nlink(self) -> int:
        """Links to the file: one name, or none once it was unlinked or replaced while open
        (unlink(2): the file lives on, nameless, until its last descriptor is closed). There
        are no hard links, and directories report one link too, as on btrfs: the count of
        subdirectories is unknown without a listing, and find(1) reads 1 as "don't prune"
        where a wrong count would make it skip subdirectories."""
        return 0 if self.path is None else 1


class InodeTable:
    def __init__(self, root_attrs: Attrs) -> None:
        self._nodes: dict[int, Node] = {}
        self._by_path: dict[str, int] = {}
        self._next = ROOT_INODE + 1
        # path -> (inode number, file type) of nodes the kernel forgot, for reuse.
        self._retired: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()
        root = Node(ROOT_INODE, "", root_attrs, expires=float("inf"), lookups=1)
        self._nodes[ROOT_INODE] = root
        self._by_path[""] = ROOT_INODE

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes.values()))

    def get(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise FSError(errno.ENOENT, f"stale inode {ino}") from None

    def by_path(self, path: str) -> Node | None:
        ino = self._by_path.get(path)
        return None if ino is None else self._nodes[ino]

    def upsert(self, path: str, attrs: Attrs, etag: str | None, expires: float) -> Node:
        """The node for ``path`` with fresh attributes; a new inode if the type changed."""
        node = self.by_path(path)
        if node is not None and node.attrs.kind == attrs.kind:
            if node.etag != etag:
                node.target = None
            node.attrs = attrs
            node.etag = etag
            node.expires = expires
            return node
        if node is not None:
            self.detach(path)
        ino = self._reuse(path, attrs.kind)
        node = Node(ino, path, attrs, etag, expires)
        self._nodes[node.ino] = node
        self._by_path[path] = node.ino
        return node

    def _reuse(self, path: str, kind: int) -> int:
        retired = self._retired.pop(path, None)
        if retired is not None and retired[1] == kind and retired[0] not in self._nodes:
            return retired[0]
        ino = self._next
        self._next += 1
        return ino

    def detach(self, path: str) -> None:
        self._retired.pop(path, None)
        ino = self._by_path.pop(path, None)
        if ino is None:
            return
        node = self._nodes[ino]
        node.path = None
        self._drop_if_unused(node)

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups = max(0, node.lookups - count)
        self._drop_if_unused(node)

    def release_handle(self, node: Node) -> None:
        node.handles -= 1
        self._drop_if_unused(node)

    def _drop_if_unused(self, node: Node) -> None:
        if node.ino == ROOT_INODE or node.lookups > 0 or node.handles > 0:
            return
        self._nodes.pop(node.ino, None)
        if node.path is not None and self._by_path.get(node.path) == node.ino:
            del self._by_path[node.path]
            self._retired[node.path] = (node.ino, node.attrs.kind)
            if len(self._retired) > RETIRED_MAX:
                self._retired.popitem(last=False)

    def move(self, old: str, new: str, tree: bool = True) -> None:
        """Rename ``old`` (and everything below it) to ``new``; ``new`` must be detached first.
        ``tree=False``: ``old`` is not a directory, nothing can be below it."""
        prefix = old + "/"

        def below(path: str) -> bool:
            return path == old or path.startswith(prefix)

        if tree:
            moved = [(path, ino) for path, ino in self._by_path.items() if below(path)]
        else:
            moved = [(old, self._by_path[old])] if old in self._by_path else []
        for path, _ in moved:
            del self._by_path[path]
        for path, ino in moved:
            new_path = new + path[len(old) :]
            self._nodes[ino].path = new_path
            self._by_path[new_path] = ino
        # Forgotten numbers move too, and whatever was retired at the new names is gone.
        if not tree:
            self._retired.pop(new, None)
            if old in self._retired:
                self._retired[new] = self._retired.pop(old)
            return
        new_prefix = new + "/"
        for path in [p for p in self._retired if p == new or p.startswith(new_prefix)]:
            del self._retired[path]
        for path in [p for p in self._retired if below(p)]:
            self._retired[new + path[len(old) :]] = self._retired.pop(path)
