"""A dict-backed Backend for unit tests of the core. It follows the contract in
storagefs/backends/base.py and runs through the same contract suite as the real backends."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping

import trio

from storagefs.backends.base import ListPage, NotFound, ObjectInfo


class MemoryBackend:
    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.objects: dict[str, tuple[bytes, dict[str, str], int]] = {}  # mtime in ns
        self.calls: list[tuple[str, str]] = []  # (operation, key) in call order

    def describe(self) -> str:
        return f"memory://{self.name}"

    async def open(self) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()

    def _info(self, key: str, with_meta: bool = True) -> ObjectInfo:
        data, meta, mtime = self.objects[key]
        return ObjectInfo(
            key=key,
            size=len(data),
            mtime_ns=mtime,
            etag=hashlib.md5(data).hexdigest(),
            metadata=dict(meta) if with_meta else None,
        )

    async def stat(self, key: str) -> ObjectInfo:
        self.calls.append(("stat", key))
        await trio.lowlevel.checkpoint()
        if key not in self.objects:
            raise NotFound(key)
        return self._info(key)

    async def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        limit: int = 1000,
    ) -> ListPage:
        self.calls.append(("list", prefix))
        await trio.lowlevel.checkpoint()
        entries: list[tuple[str, bool]] = []  # (key or prefix, is_prefix)
        seen_prefixes: set[str] = set()
        for key in sorted(self.objects, key=lambda k: k.encode()):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            if delimiter and delimiter in rest:
                p = prefix + rest[: rest.index(delimiter) + 1]
                if p not in seen_prefixes:
                    seen_prefixes.add(p)
                    entries.append((p, True))
            else:
                entries.append((key, False))
        entries.sort(key=lambda e: e[0].encode())
        if token is not None:
            entries = [e for e in entries if e[0].encode() > token.encode()]
        page = entries[:limit]
        more = len(entries) > limit
        return ListPage(
            objects=[self._info(k, with_meta=False) for k, p in page if not p],
            prefixes=[k for k, p in page if p],
            token=page[-1][0] if more else None,
        )

    async def read(self, key: str, offset: int, length: int) -> bytes:
        self.calls.append(("read", key))
        await trio.lowlevel.checkpoint()
        if key not in self.objects:
            raise NotFound(key)
        return self.objects[key][0][offset : offset + length]

    async def download(self, key: str, dest: str) -> ObjectInfo:
        self.calls.append(("download", key))
        await trio.lowlevel.checkpoint()
        if key not in self.objects:
            raise NotFound(key)
        with open(dest, "wb") as f:
            f.write(self.objects[key][0])
        return self._info(key)

    async def write(self, key: str, source: str, metadata: Mapping[str, str]) -> ObjectInfo:
        with open(source, "rb") as f:
            data = f.read()
        return await self.write_bytes(key, data, metadata)

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        self.calls.append(("write", key))
        await trio.lowlevel.checkpoint()
        self.objects[key] = (bytes(data), dict(metadata), time.time_ns())
        return self._info(key)

    async def delete(self, key: str) -> None:
        self.calls.append(("delete", key))
        await trio.lowlevel.checkpoint()
        self.objects.pop(key, None)

    async def copy(
        self, src: str, dst: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        self.calls.append(("copy", src))
        await trio.lowlevel.checkpoint()
        if src not in self.objects:
            raise NotFound(src)
        data, meta, _ = self.objects[src]
        self.objects[dst] = (data, dict(metadata if metadata is not None else meta), time.time_ns())
        return self._info(dst)

    async def health(self) -> None:
        await trio.lowlevel.checkpoint()
