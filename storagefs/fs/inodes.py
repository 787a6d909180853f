"""Inode numbers for paths, and the kernel's lookup counts on them.

The kernel refers to files by inode number; object stores know only keys. A node lives while
the kernel holds a lookup reference or a file handle is open; ``forget`` releases it. Paths
change on rename (a whole subtree at once), and a node whose path was unlinked or replaced is
*detached*: it keeps serving open handles but no longer resolves by name.

Inode numbers are stable for the life of a file within a mount: a node the kernel forgot
leaves its number behind (by path), and the next lookup of that path gets it back, so ``stat``
gives the same ``st_ino`` before and after any number of lookups, forgets and renames (of the
file or of a directory above it). Unlink and replacement end a file's life, and its number.

A hard-linked file (storagefs/fs/links.py) is one node under all its names: the table finds it
by its inode object's id as well as by each name, so every name gives the same ``st_ino``.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
from collections.abc import Iterator

from storagefs.fs.attrs import Attrs
from storagefs.fs.errors import FSError
from storagefs.fs.names import inode_key

ROOT_INODE = 1
# Numbers of forgotten nodes kept for reuse; beyond this the oldest are dropped (a file not
# looked up since then gets a new number, as after a remount).
RETIRED_MAX = 200_000


@dataclasses.dataclass(slots=True)
class Node:
    ino: int
    # A name of the file; None once it has none (unlinked or replaced). A hard-linked file may
    # have names this mount has not looked up: its ``links`` count says whether it lives.
    path: str | None
    attrs: Attrs
    etag: str | None = None  # of the object at ``key``
    expires: float = 0.0  # time.monotonic() after which attrs are re-read from the store
    lookups: int = 0
    handles: int = 0
    target: bytes | None = None  # a symbolic link's target, once read
    # Hard links (storagefs/fs/links.py): the id of the inode object holding the content and
    # attributes, its count of names, and the names of it this mount knows (``path`` is one).
    link: str | None = None
    links: int = 1
    names: set[str] = dataclasses.field(default_factory=set)

    @property
    def key(self) -> str | None:
        """The object holding the content and attributes: the name's own, or the inode
        object of a hard-linked file."""
        return inode_key(self.link) if self.link is not None else self.path

    @property
    def alive(self) -> bool:
        """False once the file has no name left (it may live on while open)."""
        return self.links > 0 if self.link is not None else self.path is not None

    @property
    def nlink(self) -> int:
        """Links to the file: one name, the stored count of a hard-linked file, or none once
        it was unlinked or replaced while open (unlink(2): the file lives on, nameless, until
        its last descriptor is closed). Directories report one link too, as on btrfs: the
        count of subdirectories is unknown without a listing, and find(1) reads 1 as "don't
        prune" where a wrong count would make it skip subdirectories."""
        if self.link is not None:
            return max(self.links, 0)
        return 0 if self.path is None else 1


class InodeTable:
    def __init__(self, root_attrs: Attrs) -> None:
        self._nodes: dict[int, Node] = {}
        self._by_path: dict[str, int] = {}  # several names may lead to one hard-linked node
        self._by_link: dict[str, int] = {}  # inode object id -> node
        self._next = ROOT_INODE + 1
        # path -> (inode number, file type) of nodes the kernel forgot, for reuse.
        self._retired: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()
        root = Node(ROOT_INODE, "", root_attrs, expires=float("inf"), lookups=1, names={""})
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

    def by_link(self, link: str) -> Node | None:
        ino = self._by_link.get(link)
        return None if ino is None else self._nodes.get(ino)

    def upsert(
        self,
        path: str,
        attrs: Attrs,
        etag: str | None,
        expires: float,
        link: str | None = None,
        links: int = 1,
    ) -> Node:
        """The node for ``path`` with fresh attributes; a new inode if the type changed. With
        ``link``, the node of that inode object, whichever name it was known by."""
        node = self.by_link(link) if link is not None else None
        at_path = self.by_path(path)
        if (
            node is None
            and at_path is not None
            and at_path.attrs.kind == attrs.kind
            and at_path.link in (None, link)
        ):
            node = at_path  # the same file (a plain one hard-linked elsewhere keeps its number)
        if node is not None:
            if at_path is not None and at_path is not node:
                self.detach(path)
            if node.etag != etag:
                node.target = None
            node.attrs = attrs
            node.etag = etag
            node.expires = expires
            if link is not None:
                self.set_link(node, link, links)
            self.add_name(node, path)
            return node
        if at_path is not None:
            self.detach(path)
        ino = self._reuse(path, attrs.kind)
        node = Node(ino, path, attrs, etag, expires, names={path})
        self._nodes[node.ino] = node
        self._by_path[path] = node.ino
        if link is not None:
            self.set_link(node, link, links)
        return node

    def set_link(self, node: Node, link: str, links: int) -> None:
        """``node`` is (now) the hard-linked file of inode object ``link``."""
        node.link = link
        node.links = links
        self._by_link[link] = node.ino

    def add_name(self, node: Node, path: str) -> None:
        """``path`` is (also) a name of ``node``; it must not name another node."""
        self._retired.pop(path, None)
        self._by_path[path] = node.ino
        node.names.add(path)
        if node.path is None:
            node.path = path

    def _reuse(self, path: str, kind: int) -> int:
        retired = self._retired.pop(path, None)
        if retired is not None and retired[1] == kind and retired[0] not in self._nodes:
            return retired[0]
        ino = self._next
        self._next += 1
        return ino

    def detach(self, path: str) -> None:
        """``path`` no longer names its node (unlinked or replaced). A node left without
        names is detached: ``path`` None (a hard-linked one lives while its count says so)."""
        self._retired.pop(path, None)
        ino = self._by_path.pop(path, None)
        if ino is None:
            return
        node = self._nodes[ino]
        node.names.discard(path)
        if node.path == path:
            node.path = min(node.names) if node.names else None
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
        if node.link is not None and self._by_link.get(node.link) == node.ino:
            del self._by_link[node.link]
        for path in sorted(node.names):
            if self._by_path.get(path) == node.ino:
                del self._by_path[path]
                self._retired[path] = (node.ino, node.attrs.kind)
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
        for path, ino in moved:
            del self._by_path[path]
            self._nodes[ino].names.discard(path)
        for path, ino in moved:
            new_path = new + path[len(old) :]
            node = self._nodes[ino]
            if node.path is None or below(node.path):
                node.path = new_path
            node.names.add(new_path)
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
