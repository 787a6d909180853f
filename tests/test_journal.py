"""The durable journal: appends, acknowledgement, limits, and recovery after crashes and rot."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from storagefs.backends.base import NoSpace, NotFound
from storagefs.journal.store import Journal, Op

TARGETS = ["primary", "secondary"]
META = {"mode": "33188", "uid": "1000", "gid": "1000", "mtime": "1700000000"}
BIG = 200 * 1024  # above the inline limit: stored as a content file


def payload(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


async def opened(directory: Path, max_bytes: int = 10**9) -> Journal:
    journal = Journal(directory, TARGETS, max_bytes)
    await journal.open()
    return journal


async def apply_all(journal: Journal) -> None:
    for target in TARGETS:
        for entry in list(journal.pending(target)):
            await journal.mark_applied(entry.seq, target)


def content_files(directory: Path) -> list[Path]:
    return sorted((directory / "content").iterdir())


async def test_append_keeps_order_and_content(tmp_path: Path) -> None:
    journal = await opened(tmp_path / "j")
    src = tmp_path / "src"
    src.write_bytes(payload(BIG))
    put = await journal.append_put("a", src, META)
    small = await journal.append_put_bytes("b", b"tiny", META)
    copy = await journal.append_copy("x", "c", None, size=7)
    delete = await journal.append_delete("a")

    assert [e.seq for e in journal.pending("primary")] == [put.seq, small.seq, copy.seq, delete.seq]
    assert put.seq < small.seq < copy.seq < delete.seq
    assert put.content is not None and small.inline
    assert put.sha256 == hashlib.sha256(payload(BIG)).hexdigest()
    assert await journal.read_content(put, 10, 5) == payload(BIG)[10:15]
    assert await journal.read_content(small, 0, 100) == b"tiny"
    assert journal.latest("a") is delete  # the newest truth for the overlay
    assert journal.latest("c") is copy and copy.keys() == ("c", "x")
    assert set(journal.latest_under("")) == {"a", "b", "c"}
    # The caller's file keeps changing after the append: the journal has its own copy.
    src.write_bytes(b"changed")
    assert await journal.read_content(put, 0, 8) == payload(BIG)[:8]
    await journal.close()


async def test_entry_goes_when_every_target_applied(tmp_path: Path) -> None:
    journal = await opened(tmp_path / "j")
    entry = await journal.append_put_bytes("a", payload(BIG), META)
    assert len(content_files(tmp_path / "j")) == 1

    await journal.mark_applied(entry.seq, "primary")
    assert journal.pending_targets(entry.seq) == {"secondary"}
    assert journal.latest("a") is entry
    assert not journal.drained()

    await journal.mark_applied(entry.seq, "secondary")
    assert journal.entry(entry.seq) is None and journal.latest("a") is None
    assert journal.drained() and journal.stats().pending_bytes == 0
    await journal.barrier()  # the content file goes once the ack is surely on disk
    assert content_files(tmp_path / "j") == []
    await journal.close()

    journal = await opened(tmp_path / "j")
    assert len(journal) == 0
    await journal.close()


async def test_reopen_shows_pending_entries_and_progress(tmp_path: Path) -> None:
    journal = await opened(tmp_path / "j")
    a = await journal.append_put_bytes("a", payload(BIG, 1), META)
    b = await journal.append_put_bytes("b", b"small", {"mode": "1"})
    d = await journal.append_delete("c")
    await journal.mark_applied(a.seq, "primary")
    await journal.record_failure(b.seq, "secondary", "TransientError: boom")
    await journal.close()

    journal = await opened(tmp_path / "j")
    assert [e.seq for e in journal.pending("primary")] == [b.seq, d.seq]
    assert [e.seq for e in journal.pending("secondary")] == [a.seq, b.seq, d.seq]
    again = journal.latest("a")
    assert again is not None and await journal.read_content(again, 0, BIG) == payload(BIG, 1)
    progress = journal.progress(b.seq, "secondary")
    assert progress is not None and progress.attempts == 1 and "boom" in str(progress.last_error)
    newer = await journal.append_delete("z")
    assert newer.seq > d.seq  # seqs never go back, even after a restart
    await journal.close()


async def test_no_space_refuses_without_evicting(tmp_path: Path) -> None:
    journal = await opened(tmp_path / "j", max_bytes=100_000)
    first = await journal.append_put_bytes("a", payload(60_000), META)
    with pytest.raises(NoSpace):
        await journal.append_put_bytes("b", payload(50_000), META)
    src = tmp_path / "src"
    src.write_bytes(payload(50_000))
    with pytest.raises(NoSpace):
        await journal.append_put("b", src, META)
    await journal.append_delete("c")  # takes no content space
    assert journal.latest("a") is first and len(content_files(tmp_path / "j")) == 0
    assert journal.stats().pending_bytes == 60_000

    await apply_all(journal)
    await journal.append_put("b", src, META)  # fits once the first is on every target
    await journal.close()


async def test_copy_of_pending_put_shares_its_content(tmp_path: Path) -> None:
    journal = await opened(tmp_path / "j")
    put = await journal.append_put_bytes("a", payload(BIG), META)
    copy = await journal.append_copy("a", "b", None)
    assert copy.op is Op.PUT and copy.key == "b" and copy.sha256 == put.sha256
    assert copy.metadata == META
    put_path, copy_path = journal.content_path(put), journal.content_path(copy)
    assert put_path is not None and copy_path is not None and put_path != copy_path
    assert put_path.stat().st_ino == copy_path.stat().st_ino  # a hard link, not a copy

    small = await journal.append_put_bytes("s", b"inline", META)
    moved = await journal.append_copy("s", "t", {"mode": "2"})
    assert moved.op is Op.PUT and moved.metadata == {"mode": "2"} and small.inline
    assert await journal.read_content(moved, 0, 10) == b"inline"

    await journal.append_delete("a")
    with pytest.raises(NotFound):
        await journal.append_copy("a", "z", None)
    await journal.close()


async def test_owned_source_is_taken_over(tmp_path: Path) -> None:
    journal = await opened(tmp_path / "j")
    src = tmp_path / "j" / "staged"  # same file system: renamed, not copied
    src.write_bytes(payload(BIG))
    inode = src.stat().st_ino
    entry = await journal.append_put("a", src, META, owned=True)
    path = journal.content_path(entry)
    assert not src.exists() and path is not None and path.stat().st_ino == inode
    small = tmp_path / "small"
    small.write_bytes(b"x")
    await journal.append_put("b", small, META, owned=True)
    assert not small.exists()
    await journal.close()


async def test_quarantine_of_one_target(tmp_path: Path) -> None:
    journal = await opened(tmp_path / "j")
    entry = await journal.append_put_bytes("a", payload(BIG), META)
    await journal.quarantine(entry.seq, "primary", "PermissionDenied: no")
    assert journal.pending_targets(entry.seq) == {"secondary"}
    described = json.loads(
        (tmp_path / "j" / "quarantine" / f"{entry.seq}-primary.json").read_text()
    )
    assert described["key"] == "a" and described["target"] == "primary"
    assert "PermissionDenied" in described["reason"]
    kept = tmp_path / "j" / "quarantine" / f"{entry.seq}-primary.data"
    assert kept.read_bytes() == payload(BIG)
    assert journal.stats().quarantined == 1
    await journal.close()


# --- recovery ------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, sys, trio
    from pathlib import Path
    from storagefs.journal.store import Journal

    directory, point = Path(sys.argv[1]), sys.argv[2]
    original = Journal._insert

    def insert(self, *args, **kwargs):
        if point == "before-commit":
            os._exit(0)  # the content file is written and fsync'd, the row is not
        seq = original(self, *args, **kwargs)
        if point == "after-commit":
            os._exit(0)  # committed, the caller never heard back
        return seq

    Journal._insert = insert

    async def main():
        journal = Journal(directory, ["primary", "secondary"], 10**9)
        await journal.open()
        await journal.append_put_bytes("k", bytes(range(256)) * 1024, {"mode": "1"})

    trio.run(main)
    """
)


@pytest.mark.parametrize("point", ["before-commit", "after-commit"])
async def test_crash_between_content_and_commit(tmp_path: Path, point: str) -> None:
    directory = tmp_path / "j"
    with trio.fail_after(60):
        await trio.run_process([sys.executable, "-c", CHILD, str(directory), point])
    assert len(content_files(directory)) == 1  # the child got as far as the content

    journal = await opened(directory)
    if point == "before-commit":
        # Never acknowledged: no entry, and its content file is cleaned up.
        assert len(journal) == 0 and content_files(directory) == []
        assert journal.recovered_orphans == 1
    else:
        entry = journal.latest("k")
        assert entry is not None and entry.op is Op.PUT
        assert await journal.read_content(entry, 0, 10**6) == bytes(range(256)) * 1024
        assert journal.pending_targets(entry.seq) == set(TARGETS)
    await journal.close()


WRITER = textwrap.dedent(
    """
    import hashlib, sys, trio
    from pathlib import Path
    from storagefs.journal.store import Journal

    async def main():
        journal = Journal(Path(sys.argv[1]), ["primary", "secondary"], 10**10)
        await journal.open()
        for i in range(100000):
            data = hashlib.sha256(str(i).encode()).digest() * (1 + (i % 7) * 1000)
            entry = await journal.append_put_bytes(
                f"k{i}", data, {"mode": "1"}, durable=sys.argv[2] == "durable"
            )
            print(entry.seq, f"k{i}", entry.sha256, flush=True)

    trio.run(main)
    """
)


def run_writer_until_killed(
    directory: Path, acks: int, durable: bool = True
) -> list[tuple[int, str, str]]:
    """Run WRITER, SIGKILL it after ``acks`` acknowledged appends; those acknowledgements."""
    how = "durable" if durable else "unsynced"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), how], stdout=subprocess.PIPE, text=True
    )
    acked: list[tuple[int, str, str]] = []
    try:
        assert proc.stdout is not None
        while len(acked) < acks:
            line = proc.stdout.readline()
            assert line, "the writer died early"
            seq, key, sha = line.split()
            acked.append((int(seq), key, sha))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    return acked


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "not-fsyncd"])
async def test_sigkill_loses_no_acknowledged_append(tmp_path: Path, durable: bool) -> None:
    # An append made with durable=False is not fsync'd, but it is in the WAL: a killed
    # daemon loses none of them (only a power cut could).
    directory = tmp_path / "j"
    acked = await trio.to_thread.run_sync(run_writer_until_killed, directory, 40, durable)

    journal = await opened(directory, max_bytes=10**10)
    for seq, key, sha in acked:
        entry = journal.entry(seq)
        assert entry is not None and entry.key == key and entry.sha256 == sha
        data = await journal.read_content(entry, 0, 10**7)
        assert hashlib.sha256(data).hexdigest() == sha
    assert journal.stats().quarantined == 0
    await journal.close()


async def test_make_durable_fsyncs_what_was_committed_without_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "j"
    journal = await opened(directory)
    real_fsync = os.fsync
    synced: list[str] = []

    def fsync(fd: int) -> None:
        synced.append(str(Path(f"/proc/self/fd/{fd}").readlink()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    held = await journal.append_put_bytes("a", b"held", META, durable=False)
    await journal.set_metadata(held, {**META, "mode": "1"}, durable=False)
    assert synced == []  # neither fsync'd a file (SQLite's own fsync is not os.fsync)
    await journal.make_durable()
    assert synced == [str(directory / "journal.db-wal")]
    synced.clear()
    await journal.make_durable()  # nothing new since
    await journal.append_put_bytes("b", b"kept", META, durable=False)
    await journal.append_put_bytes("c", b"kept", META)  # a durable commit covers "b" too
    await journal.make_durable()
    assert synced == []
    await journal.close()
    journal = await opened(directory)
    entry = journal.latest("a")
    assert entry is not None and entry.metadata is not None and entry.metadata["mode"] == "1"
    assert [e.key for e in journal.pending("primary")] == ["a", "b", "c"]
    await journal.close()


async def test_commits_without_fsync_leave_the_checkpoint_to_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # They run on the trio thread: a checkpoint there (copying the WAL into the database file
    # and fsyncing both) would stall every request for its duration.
    from storagefs.journal import store

    directory = tmp_path / "j"
    journal = await opened(directory)
    db = directory / "journal.db"
    before = db.stat().st_size
    with monkeypatch.context() as patch:
        patch.setattr(store, "_INLINE_COMMITS", 10_000)  # every one of them on the trio thread
        for i in range(600):  # ~1,200 WAL pages: past SQLite's auto-checkpoint of 1,000
            await journal.append_put_bytes(f"held{i}", payload(4096, i), META, durable=False)
        assert db.stat().st_size == before  # nothing checkpointed yet
    await journal.append_put_bytes("durable", b"x", META)  # a commit in a worker thread
    assert db.stat().st_size > before  # ...which checkpoints
    await journal.close()


async def test_a_long_run_of_commits_without_fsync_keeps_the_wal_bounded(
    tmp_path: Path,
) -> None:
    """An rsync of many files commits only without fsync (held names, then the acks of their
    withdrawal): every few hundred of them one runs in a worker thread and checkpoints."""
    directory = tmp_path / "j"
    journal = await opened(directory)
    db = directory / "journal.db"
    before = db.stat().st_size
    for i in range(3000):  # ~27 MB of WAL if nothing ever checkpointed
        entry = await journal.append_put_bytes(f"held{i}", payload(4096, i), META, durable=False)
        await journal.mark_applied(entry.seq, "primary")
    assert db.stat().st_size > before  # checkpointed, with no durable commit
    wal = directory / "journal.db-wal"
    assert wal.stat().st_size < 10 * 1024 * 1024, wal.stat().st_size
    assert list(journal.pending("primary")) == []
    await journal.close()


async def test_corrupt_content_is_quarantined(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "j"
    journal = await opened(directory)
    rotten = await journal.append_put_bytes("rotten", payload(BIG, 1), META)
    missing = await journal.append_put_bytes("missing", payload(BIG, 2), META)
    fine = await journal.append_put_bytes("fine", payload(BIG, 3), META)
    rotten_path, missing_path = journal.content_path(rotten), journal.content_path(missing)
    await journal.close()
    assert rotten_path is not None and missing_path is not None
    with open(rotten_path, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00rot")
    missing_path.unlink()

    with caplog.at_level(logging.ERROR, logger="storagefs.journal"):
        journal = await opened(directory)
    assert [e.key for e in journal.pending("primary")] == ["fine"]
    assert journal.stats().quarantined == 2
    quarantine = directory / "quarantine"
    reasons = {
        json.loads(p.read_text())["key"]: json.loads(p.read_text())["reason"]
        for p in quarantine.glob("*.json")
    }
    assert "checksum" in reasons["rotten"] and "missing" in reasons["missing"]
    assert (quarantine / f"{rotten.seq}-recovery.data").exists()  # the bytes are kept
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all("quarantine" in r.getMessage() for r in errors)
    assert fine.seq in {e.seq for e in journal.pending("secondary")}
    await journal.close()


async def test_undecodable_row_is_quarantined(tmp_path: Path) -> None:
    directory = tmp_path / "j"
    journal = await opened(directory)
    bad = await journal.append_put_bytes("bad", b"data", META)
    await journal.append_delete("good")
    await journal.close()
    db = sqlite3.connect(directory / "journal.db")
    db.execute("UPDATE entries SET metadata = 'not json' WHERE seq = ?", (bad.seq,))
    db.commit()
    db.close()

    journal = await opened(directory)
    assert [e.key for e in journal.pending("primary")] == ["good"]
    described = json.loads((directory / "quarantine" / f"{bad.seq}-recovery.json").read_text())
    assert "decode" in described["reason"] and described["key"] == "bad"
    assert (directory / "quarantine" / f"{bad.seq}-recovery.data").read_bytes() == b"data"
    await journal.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
async def test_corrupt_index_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    directory = tmp_path / "j"
    journal = await opened(directory)
    for i in range(50):
        await journal.append_put_bytes(f"k{i}", payload(BIG if i == 0 else 3000, i), META)
    await journal.close()
    db_path = directory / "journal.db"
    if damage == "garbage":
        db_path.write_bytes(b"this is not a database" * 100)
    else:
        with open(db_path, "r+b") as f:
            f.truncate(db_path.stat().st_size // 2)

    with caplog.at_level(logging.ERROR, logger="storagefs.journal"):
        journal = await opened(directory)
    assert len(journal) == 0
    moved = list((directory / "quarantine").glob("index-*"))
    assert len(moved) == 1
    assert (moved[0] / "journal.db").exists() and len(list((moved[0] / "content").iterdir())) == 1
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    entry = await journal.append_put_bytes("after", b"works", META)  # a fresh, usable journal
    await journal.close()
    journal = await opened(directory)
    assert journal.latest("after") is not None and journal.latest("after").seq == entry.seq  # type: ignore[union-attr]
    await journal.close()


class FsyncLog:
    """Which files os.fsync was called on (by path), in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            self.paths.append(str(Path(f"/proc/self/fd/{fd}").readlink()))
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    def names(self) -> list[str]:
        return [Path(p).name for p in self.paths]


async def test_a_non_durable_append_is_fsynced_by_make_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Write-back's close: the content file is written, not fsync'd; fsync() (make_durable)
    fsyncs it, its directory and the WAL before it returns."""
    journal = await opened(tmp_path / "j")
    src = tmp_path / "src"
    src.write_bytes(payload(BIG))
    log = FsyncLog(monkeypatch)
    entry = await journal.append_put("a", src, META, durable=False)
    assert entry.content is not None
    assert log.paths == [], f"a non-durable append fsync'd {log.paths}"
    assert journal.content_path(entry).read_bytes() == payload(BIG)  # written all the same
    await journal.make_durable()
    names = log.names()
    assert entry.content in names and "content" in names and "journal.db-wal" in names
    assert names.index(entry.content) < names.index("journal.db-wal")  # content first
    log.paths.clear()
    await journal.make_durable()  # nothing new: nothing to do
    assert log.paths == []
    await journal.close()


async def test_a_durable_commit_fsyncs_the_content_of_earlier_non_durable_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable commit's fsync of the WAL makes every earlier row durable too (WAL order), so
    it must fsync their content files first: no durable row may point at an empty file."""
    journal = await opened(tmp_path / "j")
    src = tmp_path / "src"
    src.write_bytes(payload(BIG))
    log = FsyncLog(monkeypatch)
    early = await journal.append_put("a", src, META, durable=False)
    await journal.append_put_bytes("b", b"durable", META)
    assert early.content in log.names(), log.names()
    await journal.close()


async def test_group_commit_makes_non_durable_appends_durable_each_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await opened(tmp_path / "j")
    log = FsyncLog(monkeypatch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.commit_every, 0.2)
        await trio.sleep(0.3)
        assert log.paths == []  # idle: nothing to make durable, no fsync
        await journal.append_put_bytes("a", b"closed", META, durable=False)
        assert log.paths == []  # the close itself waits for no fsync
        with trio.fail_after(5):
            while "journal.db-wal" not in log.names():  # noqa: ASYNC110 -- a worker fsyncs
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    await journal.close()
