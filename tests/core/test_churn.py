"""One name unlinked and made again while its former file is still open (issue #21).

Ten processes that unlink and recreate the same names got EIO from close() and ENOENT from
open(O_CREAT) (tests/mount/test_churn.py). Each test here is one interleaving of FUSE calls
behind that, played on the core over the in-memory fakes: on ext4 none of them fails, the
unlinked file's descriptors keep working (their data goes nowhere), and a create after an
unlink is a new file.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import storagefs.fs.core as core
import storagefs.fs.handles as handles
from storagefs.backends.base import ObjectInfo
from storagefs.fs.errors import FSError
from storagefs.fs.inodes import ROOT_INODE
from tests.core.conftest import attached, read_file, write_file
from tests.fakes import MemoryBackend
from tests.test_chain import contents, remotes, running

CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


class HeldWrite(MemoryBackend):
    """The next write, once :meth:`hold` is called, reads its data and then waits for
    :meth:`let_go` before storing it: an upload in flight (a close on another descriptor)."""

    def __init__(self) -> None:
        super().__init__()
        self._gate: trio.Event | None = None
        self.started = trio.Event()

    def hold(self) -> trio.Event:
        self._gate = trio.Event()
        return self._gate

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        gate, self._gate = self._gate, None
        if gate is not None:
            self.started.set()
            await gate.wait()
        return await super().write_bytes(key, data, metadata)


@pytest.fixture
def held() -> HeldWrite:
    return HeldWrite()


@pytest.fixture
def fs(held: HeldWrite, tmp_path: Path, nursery: trio.Nursery) -> core.Filesystem:
    return attached(held, tmp_path, nursery)


async def absent(fs: core.Filesystem, name: str) -> bool:
    try:
        await fs.lookup(ROOT_INODE, name)
    except FSError as exc:
        return exc.errno == errno.ENOENT
    return False


@pytest.mark.parametrize("closing", ["flush", "release"])
async def test_an_upload_in_flight_when_the_name_is_unlinked_succeeds_and_stores_nothing(
    fs: core.Filesystem, held: HeldWrite, closing: str
) -> None:
    """close() (flush, or a release of a file never flushed) uploads; an unlink of the name
    comes while the upload is in flight. Before: the upload's end asserted the node still had
    a name (EIO from close(), a traceback from release) and landed after the delete, putting
    the unlinked name back on the store."""
    fh, _ = await fs.create(ROOT_INODE, "a", 0o644, CREATE, 0, 0)
    await fs.write(fh, 0, b"one")
    let_go = held.hold()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(getattr(fs, closing), fh)
        await held.started.wait()
        nursery.start_soon(fs.unlink, ROOT_INODE, "a")
        await trio.testing.wait_all_tasks_blocked()
        let_go.set()
    if closing == "flush":
        await fs.release(fh)
    assert "a" not in held.objects  # the delete came after the upload
    assert await absent(fs, "a")
    assert fs.dirty_files == 0 and fs.failed_files == 0 and not len(fs.files)


async def test_a_create_after_the_unlink_is_a_new_file_whatever_the_first_one_does(
    fs: core.Filesystem, held: HeldWrite
) -> None:
    """create A, write, its close uploading; unlink A, create A again, write; then the first
    handle and the second are released. The name holds the second file only."""
    fh1, first = await fs.create(ROOT_INODE, "a", 0o644, CREATE, 0, 0)
    await fs.write(fh1, 0, b"first file")
    let_go = held.hold()
    second_fh: list[int] = []

    async def unlink_and_create() -> None:
        await fs.unlink(ROOT_INODE, "a")
        fh2, second = await fs.create(ROOT_INODE, "a", 0o644, CREATE, 0, 0)
        assert second.ino != first.ino and first.nlink == 0
        await fs.write(fh2, 0, b"two")
        await fs.flush(fh2)
        second_fh.append(fh2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.flush, fh1)
        await held.started.wait()
        nursery.start_soon(unlink_and_create)
        await trio.testing.wait_all_tasks_blocked()
        let_go.set()
    await fs.write(fh1, 0, b"goes nowhere")  # the first file's descriptor still works
    await fs.flush(fh1)
    await fs.release(fh1)
    await fs.release(second_fh[0])
    assert held.objects["a"][0] == b"two"
    assert await read_file(fs, "a") == b"two"


async def test_an_inode_unlinked_after_its_lookup_opens_and_truncates_as_on_ext4(
    fs: core.Filesystem, held: HeldWrite
) -> None:
    """open(2) looks the name up, then opens the inode; another process's unlink in between
    left the inode nameless. Before: ENOENT from open(O_CREAT|O_TRUNC), and from ftruncate
    and fchmod of a file unlinked while open."""
    await write_file(fs, "a", b"stored")
    node = await fs.lookup(ROOT_INODE, "a")  # the kernel holds the inode
    await fs.unlink(ROOT_INODE, "a")
    fh, _ = await fs.open(node.ino, os.O_RDWR | os.O_TRUNC)
    assert await fs.write(fh, 0, b"nowhere") == 7
    assert await fs.read(fh, 0, 100) == b"nowhere"
    await fs.setattr(node.ino, mode=0o600, fh=fh)
    await fs.setattr(node.ino, size=3)  # truncate(2) of the inode
    assert await fs.read(fh, 0, 100) == b"now"
    assert (await fs.getattr(node.ino)).nlink == 0
    await fs.flush(fh)
    await fs.fsync(fh)
    await fs.release(fh)
    # A write-only open needs none of the data that left with the name; a reader does.
    fh, _ = await fs.open(node.ino, os.O_WRONLY)
    assert (await fs.getattr(node.ino)).attrs.size == 0
    await fs.write(fh, 0, b"x")
    await fs.release(fh)
    await write_file(fs, "b", b"stored")
    other = await fs.lookup(ROOT_INODE, "b")
    await fs.unlink(ROOT_INODE, "b")
    with pytest.raises(FSError) as exc:
        await fs.open(other.ino, os.O_RDONLY)
    assert exc.value.errno == errno.ENOENT
    assert held.objects == {} and not len(fs.files)
    assert await absent(fs, "a")


async def test_a_write_to_a_file_unlinked_while_open_and_not_kept_goes_nowhere(
    fs: core.Filesystem, held: HeldWrite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that has not written yet when the name goes, of a file too big to keep a
    copy of: before, its first write asserted the nameless file had a key to download."""
    monkeypatch.setattr(handles, "KEEP_OPEN_MAX", 2)
    await write_file(fs, "a", b"stored")
    node = await fs.lookup(ROOT_INODE, "a")
    fh, _ = await fs.open(node.ino, os.O_WRONLY)
    await fs.unlink(ROOT_INODE, "a")
    assert await fs.write(fh, 0, b"xyz") == 3
    await fs.flush(fh)
    await fs.release(fh)
    assert held.objects == {} and not len(fs.files)


async def test_a_create_of_a_name_whose_file_is_still_open_empties_that_file(
    fs: core.Filesystem, held: HeldWrite
) -> None:
    """The kernel creates a name it takes for absent while the daemon still has that name's
    file open (a create is not serialized with its other handles' uploads). Before: the
    create shared the open file without emptying it, so the new content was written over the
    old one's bytes and uploaded with them."""
    fh1, first = await fs.create(ROOT_INODE, "a", 0o644, CREATE, 0, 0)
    await fs.write(fh1, 0, b"a longer first content")
    fh2, second = await fs.create(ROOT_INODE, "a", 0o644, CREATE, 0, 0)
    await fs.write(fh2, 0, b"new")
    await fs.flush(fh2)
    assert held.objects["a"][0] == b"new"
    assert await fs.read(fh1, 0, 100) == b"new"  # one file, as after an O_TRUNC open
    await fs.release(fh1)
    await fs.release(fh2)
    assert await read_file(fs, "a") == b"new"
    assert second is first and second.attrs.size == 3  # the same file, now new


async def test_a_held_name_unlinked_while_its_close_is_journaling_never_reaches_the_store(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temporary name (journaled, not waited for) made and removed at once: the unlink
    dropped its pending upload (forget_unstored) before the close's journal entry existed,
    and that entry was then replayed, putting the removed name on the store."""
    primary, _ = remotes()
    async with running(tmp_path / "chain", (primary,)) as chain:
        fs = attached(chain, tmp_path, nursery)
        name = ".a.XXXXXX"  # rsync's temporary names are held (STORAGEFS_HELD_NAMES)
        fh, _ = await fs.create(ROOT_INODE, name, 0o600, CREATE, 0, 0)
        await fs.write(fh, 0, b"temporary")
        append_put = chain.journal.append_put
        appending, let_go = trio.Event(), trio.Event()

        async def slow_append_put(*args: Any, **kwargs: Any) -> Any:
            appending.set()
            await let_go.wait()  # the fsync of a busy disk
            return await append_put(*args, **kwargs)

        monkeypatch.setattr(chain.journal, "append_put", slow_append_put)
        async with trio.open_nursery() as inner:
            inner.start_soon(fs.flush, fh)
            await appending.wait()
            inner.start_soon(fs.unlink, ROOT_INODE, name)
            await trio.testing.wait_all_tasks_blocked()
            let_go.set()
        await fs.release(fh)
        assert await chain.flush(10)
        assert name not in contents(primary)
        fs.close()
