"""Temporary names in write-through mode (rsync's ``.NAME.XXXXXX``): the close, the utime and
chmod that follow, and the rename fold into one upload under the final name, which the rename
waits for; the temporary name never reaches a store and costs no DELETE (docs/SEMANTICS.md,
"Renames"). Over in-memory remotes that count every call."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from storagefs.backends.base import forget_unstored, note_created
from storagefs.fs.inodes import ROOT_INODE
from tests.core.conftest import make_fs
from tests.fakes import MemoryBackend
from tests.fault_injection import FaultyBackend
from tests.test_chain import META, contents, running, store

TMP = "dir/.report.pdf.Ab3xY9"
FINAL = "dir/report.pdf"


def lone_primary() -> FaultyBackend:
    return FaultyBackend(MemoryBackend("primary"))


async def test_a_temporary_name_is_uploaded_once_under_its_final_name(tmp_path: Path) -> None:
    primary = lone_primary()
    async with running(tmp_path, (primary,), write_back_delay=0.3) as chain:
        assert chain.held(TMP) and not chain.held(FINAL)
        note_created(chain, TMP)
        with trio.fail_after(2):
            await chain.write_bytes(TMP, b"v1", META)  # the close
            await chain.copy(TMP, TMP, {**META, "mtime": "1"})  # utime
            await chain.copy(TMP, TMP, {**META, "mtime": "1", "mode": "33261"})  # chmod
            assert contents(primary) == {}  # held: nothing sent yet
            assert await chain.read(TMP, 0, 10) == b"v1"  # served from the journal
            await chain.copy(TMP, FINAL, {**META, "mode": "33261"})  # the rename...
        # ...returns once the primary has the final name, as a close would.
        assert contents(primary) == {FINAL: b"v1"}
        assert store(primary).objects[FINAL][1]["mode"] == "33261"
        assert await forget_unstored(chain, TMP)
        assert chain.journal.entries_of(TMP) == []
        assert await chain.flush(5)
        await trio.sleep(chain.options.write_back_delay + 0.5)  # past the hold
        assert contents(primary) == {FINAL: b"v1"}
        assert primary.calls["write_bytes"] == 1
        assert primary.calls["copy"] == primary.calls["delete"] == 0


async def test_an_unrenamed_temporary_file_is_uploaded_after_the_hold(tmp_path: Path) -> None:
    primary = lone_primary()
    async with running(tmp_path, (primary,), write_back_delay=0.2) as chain:
        note_created(chain, TMP)
        with trio.fail_after(2):
            await chain.write_bytes(TMP, b"kept", META)
        assert contents(primary) == {}
        with trio.fail_after(5):
            while TMP not in store(primary).objects:  # noqa: ASYNC110 -- the replayer is on it
                await trio.sleep(0.05)
        assert contents(primary) == {TMP: b"kept"}
        # It reached a store: removing it now needs a DELETE.
        assert not await forget_unstored(chain, TMP)


async def test_a_name_not_made_new_is_deleted_as_usual(tmp_path: Path) -> None:
    # The store may hold an older version of a name the mount did not create: dropping the
    # pending upload would leave that version behind, so only a DELETE will do.
    primary = lone_primary()
    store(primary).objects[TMP] = (b"old", dict(META))
    async with running(tmp_path, (primary,)) as chain:
        with trio.fail_after(2):
            await chain.write_bytes(TMP, b"new", META)
        assert not await forget_unstored(chain, TMP)
        await chain.delete(TMP)
        assert await chain.flush(5)
        assert contents(primary) == {}


async def test_write_mode_back_holds_everything_and_forgets_new_files(tmp_path: Path) -> None:
    primary = lone_primary()
    async with running(tmp_path, (primary,), write_mode="back") as chain:
        assert not chain.held(FINAL)  # "held" is write-through's exception; back holds all
        note_created(chain, "scratch.txt")
        await chain.write_bytes("scratch.txt", b"x", META)
        assert await forget_unstored(chain, "scratch.txt")
        assert await chain.flush(5)
        assert contents(primary) == {} and primary.calls["delete"] == 0


async def test_held_names_off_uploads_temporary_names_at_close(tmp_path: Path) -> None:
    primary = lone_primary()
    async with running(tmp_path, (primary,), held_names="") as chain:
        assert not chain.held(TMP)
        note_created(chain, TMP)
        with trio.fail_after(2):
            await chain.write_bytes(TMP, b"v1", META)
        assert contents(primary) == {TMP: b"v1"}
        assert not await forget_unstored(chain, TMP)


async def test_attribute_changes_amend_the_journaled_upload(tmp_path: Path) -> None:
    # A chmod/utime of a file whose upload is still journaled changes that entry in place:
    # no second entry sharing the content, and the store gets the newest metadata once.
    primary = lone_primary()
    async with running(tmp_path, (primary,), write_mode="back") as chain:
        await chain.write_bytes("doc.txt", b"x", META)
        (entry,) = chain.journal.entries_of("doc.txt")
        await chain.copy("doc.txt", "doc.txt", {**META, "mode": "33261"})
        (amended,) = chain.journal.entries_of("doc.txt")
        assert amended.seq == entry.seq and amended.metadata == {**META, "mode": "33261"}
        assert await chain.flush(5)
        assert store(primary).objects["doc.txt"][1]["mode"] == "33261"
        assert primary.calls["write_bytes"] == 1 and primary.calls["copy"] == 0


async def test_a_temporary_file_too_big_for_the_journal_is_not_held(tmp_path: Path) -> None:
    # Over a quarter of the journal's room, a held name goes straight to the primary at close,
    # as any other file (a huge rsync'd file must not fill the journal, or hit ENOSPC).
    primary = lone_primary()
    source = tmp_path / "big"
    source.write_bytes(b"b" * 3000)
    async with running(tmp_path, (primary,), journal_max_bytes=10_000) as chain:
        assert chain.held(TMP)
        with trio.fail_after(2):
            await chain.write(TMP, str(source), META)  # the close
        assert contents(primary) == {TMP: b"b" * 3000}  # on the store when it returned
        assert not chain.held(TMP) and chain.journal.entries_of(TMP) == []


async def test_fsync_of_a_held_file_makes_its_journal_entry_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The close of a held file is written to the journal without an fsync (a killed daemon
    # keeps it; tests/test_journal.py): an fsync() of the file is what makes it power-safe.
    real_fsync = os.fsync
    synced: list[str] = []

    def fsync(fd: int) -> None:
        synced.append(str(Path(f"/proc/self/fd/{fd}").readlink()))
        real_fsync(fd)

    async with running(tmp_path, (lone_primary(),), write_back_delay=30) as chain:
        (tmp_path / "fs").mkdir()
        fs = make_fs(chain, tmp_path / "fs")
        try:
            fh, _ = await fs.create(ROOT_INODE, ".f.Ab3xY9", 0o644, os.O_WRONLY, 0, 0)
            await fs.write(fh, 0, b"data")
            monkeypatch.setattr(os, "fsync", fsync)
            await fs.flush(fh)  # the close: journaled, held
            assert [e.key for e in chain.journal.pending("primary")] == [".f.Ab3xY9"]
            assert not [p for p in synced if p.endswith("-wal")]
            await fs.fsync(fh)
            assert [p for p in synced if p.endswith("-wal")]
            await fs.release(fh)
        finally:
            fs.close()
