"""The read-only ``/.health`` tree at the mount root.

Its files are produced by a provider (storagefs.health) as a fresh snapshot at every open and
never touch a backend, so they answer when every backend is down. Inode numbers come from a
reserved range above anything the inode table hands out.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Callable, Mapping

from storagefs.fs.attrs import Attrs
from storagefs.fs.inodes import Node

HEALTH_INODE_BASE = 1 << 62

Provider = Callable[[], Mapping[str, bytes]]


def _minimal() -> Mapping[str, bytes]:
    return {"status.json": json.dumps({"state": "unknown", "reasons": []}).encode() + b"\n"}


class HealthTree:
    def __init__(self, provider: Provider | None, uid: int, gid: int) -> None:
        self._provider = provider or _minimal
        self._uid = uid
        self._gid = gid
        self._ino_by_path: dict[str, int] = {"": HEALTH_INODE_BASE}
        self._path_by_ino: dict[int, str] = {HEALTH_INODE_BASE: ""}

    @staticmethod
    def owns(ino: int) -> bool:
        return ino >= HEALTH_INODE_BASE

    def snapshot(self) -> Mapping[str, bytes]:
        try:
            return self._provider()
        except Exception as exc:  # the health tree must answer whatever broke
            doc = {"state": "unknown", "reasons": [f"health report failed: {exc}"]}
            return {"status.json": json.dumps(doc).encode() + b"\n"}

    def _ino(self, path: str) -> int:
        ino = self._ino_by_path.get(path)
        if ino is None:
            ino = HEALTH_INODE_BASE + len(self._ino_by_path)
            self._ino_by_path[path] = ino
            self._path_by_ino[ino] = path
        return ino

    def path_of(self, ino: int) -> str | None:
        return self._path_by_ino.get(ino)

    def _node(self, path: str, files: Mapping[str, bytes]) -> Node | None:
        now = time.time_ns()
        if path in files:
            mode, size = stat.S_IFREG | 0o444, len(files[path])
        elif path == "" or any(f.startswith(path + "/") for f in files):
            mode, size = stat.S_IFDIR | 0o555, 0
        else:
            return None
        attrs = Attrs(mode, self._uid, self._gid, size, now, now, now)
        return Node(self._ino(path), path, attrs, expires=0.0)

    def root(self) -> Node:
        node = self._node("", {})
        assert node is not None
        return node

    def lookup(self, parent_ino: int, name: str) -> Node | None:
        parent = self._path_by_ino.get(parent_ino)
        if parent is None:
            return None
        return self._node(f"{parent}/{name}" if parent else name, self.snapshot())

    def getattr(self, ino: int) -> Node | None:
        path = self._path_by_ino.get(ino)
        return None if path is None else self._node(path, self.snapshot())

    def children(self, ino: int) -> list[Node]:
        path = self._path_by_ino.get(ino)
        if path is None:
            return []
        files = self.snapshot()
        prefix = path + "/" if path else ""
        names = sorted({f[len(prefix) :].split("/", 1)[0] for f in files if f.startswith(prefix)})
        nodes = [self._node(prefix + n, files) for n in names]
        return [n for n in nodes if n is not None]

    def content(self, ino: int) -> bytes | None:
        path = self._path_by_ino.get(ino)
        if path is None:
            return None
        return self.snapshot().get(path)
