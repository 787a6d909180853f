"""Inode numbers for paths, and the kernel's lookup counts on them.

The kernel refers to files by inode number; object stores know only keys. A node lives while
the kernel holds a lookup reference or a file handle is open; ``forget`` releases it. Paths
change on rename (a whole subtree at once), and a node whose path was unlinked or replaced is
*detached*: it keeps serving open handles but no longer resolves by name.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Iterator

from storagefs.fs.attrs import Attrs
from storagefs.fs.errors import FSError

ROOT_INODE = 1


@dataclasses.dataclass(slots=True)
class Node:
    ino: int
    path: str | None  # None once detached (unlinked or replaced)
    attrs: Attrs
    etag: str | None = None
    expires: float = 0.0  # time.monotonic() after which attrs are re-read from the store
    lookups: int = 0
    handles: int = 0


class InodeTable:
    def __init__(self, root_attrs: Attrs) -> None:
        self._nodes: dict[int, Node] = {}
        self._by_path: dict[str, int] = {}
        self._next = ROOT_INODE + 1
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
        if node is not None and node.attrs.is_dir == attrs.is_dir:
            node.attrs = attrs
            node.etag = etag
            node.expires = expires
            return node
        if node is not None:
            self.detach(path)
        node = Node(self._next, path, attrs, etag, expires)
        self._next += 1
        self._nodes[node.ino] = node
        self._by_path[path] = node.ino
        return node

    def detach(self, path: str) -> None:
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

    def move(self, old: str, new: str) -> None:
        """Rename ``old`` (and everything below it) to ``new``; ``new`` must be detached first."""
        moved: list[tuple[str, int]] = []
        prefix = old + "/"
        for path, ino in self._by_path.items():
            if path == old or path.startswith(prefix):
                moved.append((path, ino))
        for path, _ in moved:
            del self._by_path[path]
        for path, ino in moved:
            new_path = new + path[len(old) :]
            self._nodes[ino].path = new_path
            self._by_path[new_path] = ino

    def invalidate_all(self) -> None:
        for node in self._nodes.values():
            if node.ino != ROOT_INODE:
                node.expires = 0.0
