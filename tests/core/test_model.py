"""A reference model: random operation sequences — including changes made behind the mount's
back — run against the core and against a plain dict, and the two must agree after every
step (the approach of mountpoint-s3's reftests). Hard links are sets of names that share one
content and one inode number."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import outcome
import trio
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from storagefs.fs.core import FsOptions, build_filesystem
from storagefs.fs.errors import FSError
from storagefs.fs.inodes import ROOT_INODE
from tests.fakes import MemoryBackend

NAMES = st.sampled_from(["a", "b", "c", "dir", "é x"])
DATA = st.binary(max_size=300)


class FsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        self.backend = MemoryBackend()
        # TTL 0: every behind-the-back change must be visible at the next call.
        self.fs = build_filesystem(
            self.backend,
            FsOptions(staging_dir=self.tmp / "s", metadata_ttl=0.0, read_chunk_size=64 * 1024),
        )
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {""}
        self.links: list[set[str]] = []  # names of one hard-linked file, each set

    def linked(self, path: str) -> set[str]:
        """Every name of the file ``path`` names (itself if it has no other)."""
        return next((group for group in self.links if path in group), {path})

    def drop_name(self, path: str) -> None:
        """``path`` no longer names the hard-linked file it named."""
        for group in self.links:
            group.discard(path)
        self.links = [group for group in self.links if group]

    def set_content(self, path: str, data: bytes) -> None:
        for name in self.linked(path):
            self.files[name] = data

    def teardown(self) -> None:
        self.fs.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- running core calls -----------------------------------------------------------

    def run(self, fn, *args):  # type: ignore[no-untyped-def]
        async def main():  # type: ignore[no-untyped-def]
            async with trio.open_nursery() as nursery:
                self.fs.attach(nursery)
                # Captured inside, so the nursery does not wrap it in an ExceptionGroup.
                result = await outcome.acapture(fn, *args)
                nursery.cancel_scope.cancel()
            return result

        return trio.run(main).unwrap()

    async def ino(self, path: str) -> int:
        ino = ROOT_INODE
        for part in [p for p in path.split("/") if p]:
            ino = (await self.fs.lookup(ino, part)).ino
        return ino

    def expect_errno(self, err: int, fn, *args) -> None:  # type: ignore[no-untyped-def]
        try:
            self.run(fn, *args)
        except FSError as exc:
            assert exc.errno == err, (exc.errno, err)
        else:
            raise AssertionError(f"expected errno {errno.errorcode[err]}")

    def parent_of(self, path: str) -> str:
        return path.rpartition("/")[0]

    def children(self, d: str) -> list[str]:
        pre = d + "/" if d else ""
        return [
            p
            for p in list(self.files) + list(self.dirs - {""})
            if p.startswith(pre) and "/" not in p[len(pre) :]
        ]

    def exists(self, path: str) -> bool:
        return path in self.files or path in self.dirs

    # --- rules ------------------------------------------------------------------------

    @rule(d=st.data(), name=NAMES, data=DATA)
    def create(self, d: st.DataObject, name: str, data: bytes) -> None:
        parent = d.draw(st.sampled_from(sorted(self.dirs)))
        path = f"{parent}/{name}" if parent else name
        if path in self.dirs:
            return
        hard_linked = len(self.linked(path)) > 1

        async def go() -> None:
            pino = await self.ino(parent)
            if hard_linked:  # the kernel opens an existing name, O_TRUNC, and writes
                fh, _ = await self.fs.open(await self.ino(path), os.O_WRONLY | os.O_TRUNC)
            else:
                fh, _ = await self.fs.create(pino, name, 0o644, os.O_WRONLY | os.O_TRUNC, 0, 0)
            await self.fs.write(fh, 0, data)
            await self.fs.flush(fh)
            await self.fs.release(fh)

        self.run(go)
        if not hard_linked:
            self.drop_name(path)
        self.set_content(path, data)

    @rule(d=st.data(), offset=st.integers(0, 400), data=DATA)
    def write_at(self, d: st.DataObject, offset: int, data: bytes) -> None:
        if not self.files:
            return
        path = d.draw(st.sampled_from(sorted(self.files)))

        async def go() -> None:
            fh, _ = await self.fs.open(await self.ino(path), os.O_RDWR)
            await self.fs.write(fh, offset, data)
            await self.fs.flush(fh)
            await self.fs.release(fh)

        self.run(go)
        old = self.files[path]
        if data:
            old = old.ljust(offset, b"\0")
            self.set_content(path, old[:offset] + data + old[offset + len(data) :])

    @rule(d=st.data(), size=st.integers(0, 500))
    def truncate(self, d: st.DataObject, size: int) -> None:
        if not self.files:
            return
        path = d.draw(st.sampled_from(sorted(self.files)))

        async def go() -> None:
            await self.fs.setattr(await self.ino(path), size=size)

        self.run(go)
        self.set_content(path, self.files[path][:size].ljust(size, b"\0"))

    @rule(d=st.data())
    def unlink(self, d: st.DataObject) -> None:
        if not self.files:
            return
        path = d.draw(st.sampled_from(sorted(self.files)))

        async def go() -> None:
            await self.fs.unlink(await self.ino(self.parent_of(path)), path.rpartition("/")[2])

        self.run(go)
        del self.files[path]
        self.drop_name(path)

    @rule(d=st.data(), name=NAMES)
    def link(self, d: st.DataObject, name: str) -> None:
        if not self.files:
            return
        src = d.draw(st.sampled_from(sorted(self.files)))
        parent = d.draw(st.sampled_from(sorted(self.dirs)))
        dst = f"{parent}/{name}" if parent else name

        async def go() -> None:
            await self.fs.link(await self.ino(src), await self.ino(parent), name)

        if self.exists(dst):
            self.expect_errno(errno.EEXIST, go)
            return
        self.run(go)
        self.files[dst] = self.files[src]
        group = self.linked(src)
        if group not in self.links:
            self.links.append(group)
        group.add(dst)

    @rule(d=st.data(), name=NAMES)
    def mkdir(self, d: st.DataObject, name: str) -> None:
        parent = d.draw(st.sampled_from(sorted(self.dirs)))
        path = f"{parent}/{name}" if parent else name

        async def go() -> None:
            await self.fs.mkdir(await self.ino(parent), name, 0o755, 0, 0)

        if self.exists(path):
            self.expect_errno(errno.EEXIST, go)
            return
        self.run(go)
        self.dirs.add(path)

    @rule(d=st.data())
    def rmdir(self, d: st.DataObject) -> None:
        if len(self.dirs) == 1:
            return
        path = d.draw(st.sampled_from(sorted(self.dirs - {""})))

        async def go() -> None:
            await self.fs.rmdir(await self.ino(self.parent_of(path)), path.rpartition("/")[2])

        if self.children(path):
            self.expect_errno(errno.ENOTEMPTY, go)
            return
        self.run(go)
        self.dirs.discard(path)

    @rule(d=st.data(), name=NAMES)
    def rename(self, d: st.DataObject, name: str) -> None:
        if not self.files and len(self.dirs) == 1:
            return
        src = d.draw(st.sampled_from(sorted(set(self.files) | (self.dirs - {""}))))
        parent = d.draw(st.sampled_from(sorted(self.dirs)))
        dst = f"{parent}/{name}" if parent else name

        async def go() -> None:
            await self.fs.rename(
                await self.ino(self.parent_of(src)),
                src.rpartition("/")[2],
                await self.ino(parent),
                name,
            )

        if src == dst:
            return
        if src in self.files and dst in self.linked(src):
            self.run(go)  # two names of one file: rename(2) does nothing
            return
        if src in self.dirs and (dst + "/").startswith(src + "/"):
            self.expect_errno(errno.EINVAL, go)
            return
        if dst in self.dirs and src in self.files:
            self.expect_errno(errno.EISDIR, go)
            return
        if dst in self.files and src in self.dirs:
            self.expect_errno(errno.ENOTDIR, go)
            return
        if dst in self.dirs and self.children(dst):
            self.expect_errno(errno.ENOTEMPTY, go)
            return
        self.run(go)
        if src in self.files:
            self.drop_name(dst)
            self.files[dst] = self.files.pop(src)
            for group in self.links:
                if src in group:
                    group.discard(src)
                    group.add(dst)
        else:
            self.dirs.discard(dst)
            for p in sorted(self.dirs):
                if p == src or p.startswith(src + "/"):
                    self.dirs.discard(p)
                    self.dirs.add(dst + p[len(src) :])
            for p in list(self.files):
                if p.startswith(src + "/"):
                    self.files[dst + p[len(src) :]] = self.files.pop(p)
            for group in self.links:
                for p in [p for p in group if p.startswith(src + "/")]:
                    group.discard(p)
                    group.add(dst + p[len(src) :])

    @rule(d=st.data(), name=NAMES, data=DATA)
    def behind_back_put(self, d: st.DataObject, name: str, data: bytes) -> None:
        parent = d.draw(st.sampled_from(sorted(self.dirs)))
        path = f"{parent}/{name}" if parent else name
        if path in self.dirs:
            return
        self.backend.objects[path] = (data, {}, 0)
        self.files[path] = data
        self.drop_name(path)  # a plain object now, whatever it was

    @rule(d=st.data())
    def behind_back_delete(self, d: st.DataObject) -> None:
        if not self.files:
            return
        path = d.draw(st.sampled_from(sorted(self.files)))
        del self.backend.objects[path]
        del self.files[path]
        self.drop_name(path)

    # --- the comparison ---------------------------------------------------------------

    @invariant()
    def same_tree(self) -> None:
        nodes: dict[str, tuple[int, int]] = {}  # (ino, nlink) by name

        async def walk() -> tuple[dict[str, bytes], set[str]]:
            files: dict[str, bytes] = {}
            dirs: set[str] = {""}
            todo = [("", ROOT_INODE)]
            while todo:
                path, ino = todo.pop()
                dh = await self.fs.opendir(ino)
                for entry in self.fs.readdir(dh, 0):
                    child = f"{path}/{entry.name}" if path else entry.name
                    node = await self.fs.lookup(ino, entry.name)
                    if node.attrs.is_dir:
                        dirs.add(child)
                        todo.append((child, node.ino))
                    else:
                        fh, _ = await self.fs.open(node.ino, os.O_RDONLY)
                        files[child] = await self.fs.read(fh, 0, 10_000)
                        await self.fs.release(fh)
                        assert node.attrs.size == len(files[child]), child
                        nodes[child] = (node.ino, node.nlink)
                self.fs.releasedir(dh)
            return files, dirs

        files, dirs = self.run(walk)
        assert dirs == self.dirs
        assert files == self.files
        for group in self.links:
            # One inode; its count may be higher than the names the model knows when one
            # was replaced or deleted behind the mount's back.
            assert len({nodes[name][0] for name in group}) == 1, group
            assert all(nodes[name][1] >= len(group) for name in group), (group, nodes)
        linked = set().union(*self.links) if self.links else set()
        for name, (_, nlink) in nodes.items():
            assert name in linked or nlink == 1, (name, nlink)


FsModel.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestFsModel = FsModel.TestCase
