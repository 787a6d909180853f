"""Reconciliation (storagefs.sync) over the in-memory backend and a real journal."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from storagefs.backends.base import BackendUnavailable, ObjectInfo
from storagefs.journal.store import Journal
from storagefs.observability.health import HealthReport
from storagefs.sync.compare import MARK, Verdict, compare_listed, compare_marked, version_of
from storagefs.sync.reconcile import COMPLETE, STATE_FILE, Syncer
from tests.fakes import MemoryBackend


def fill(backend: MemoryBackend, count: int) -> dict[str, bytes]:
    contents = {f"d{i % 3}/f{i:03d}": f"content {i}".encode() * (i % 5 + 1) for i in range(count)}
    for key, data in contents.items():
        backend.objects[key] = (data, {"mode": "33188"}, 1.0)
    backend.objects["empty/"] = (b"", {"mode": "16877"}, 1.0)
    return contents


def writes(backend: MemoryBackend) -> list[str]:
    return [key for op, key in backend.calls if op == "write"]


def syncer(primary: MemoryBackend, secondary: MemoryBackend, tmp: Path, **kw: object) -> Syncer:
    return Syncer(primary, secondary, tmp / "sync", **kw)  # type: ignore[arg-type]


async def test_copies_everything_the_secondary_lacks(tmp_path: Path) -> None:
    primary, secondary = MemoryBackend("p"), MemoryBackend("s")
    contents = fill(primary, 40)
    figures = await syncer(primary, secondary, tmp_path).run_pass()
    assert figures.state == COMPLETE
    assert figures.copied_objects == 41  # the directory marker too
    assert figures.behind_objects == 0 and figures.behind_bytes == 0
    for key, data in contents.items():
        copied, meta, _ = secondary.objects[key]
        assert copied == data
        assert meta["mode"] == "33188"  # the primary's metadata travels with the copy
        assert meta[MARK] == version_of(primary._info(key))
    assert "empty/" in secondary.objects


@pytest.mark.parametrize("md5", [True, False])
async def test_second_pass_copies_nothing(tmp_path: Path, md5: bool) -> None:
    primary, secondary = MemoryBackend("p"), MemoryBackend("s")
    fill(primary, 20)
    await syncer(primary, secondary, tmp_path).run_pass()
    secondary.calls.clear()
    again = syncer(primary, secondary, tmp_path, primary_md5=md5, secondary_md5=md5)
    figures = await again.run_pass()
    assert writes(secondary) == []
    assert figures.copied_objects == 0
    stats = [k for op, k in secondary.calls if op == "stat"]
    # With MD5 ETags on both sides the listings decide; otherwise each mark is looked at.
    assert (stats == []) if md5 else (len(stats) == 21)


async def test_stale_and_unmarked_copies_are_replaced(tmp_path: Path) -> None:
    primary, secondary = MemoryBackend("p"), MemoryBackend("s")
    primary.objects["same-size"] = (b"new!", {}, 1.0)
    secondary.objects["same-size"] = (b"old!", {}, 1.0)
    primary.objects["other-size"] = (b"longer", {}, 1.0)
    secondary.objects["other-size"] = (b"short", {}, 1.0)
    secondary.objects["only-here"] = (b"x", {}, 1.0)
    figures = await syncer(primary, secondary, tmp_path).run_pass()
    assert secondary.objects["same-size"][0] == b"new!"
    assert secondary.objects["other-size"][0] == b"longer"
    assert figures.extra_objects == 1
    assert secondary.objects["only-here"][0] == b"x"  # never deleted


def test_comparison_rules() -> None:
    def info(size: int, etag: str | None) -> ObjectInfo:
        return ObjectInfo("k", size, 5_000_000_000, etag)

    md5 = "0123456789abcdef0123456789abcdef"
    both = {"primary_md5": True, "secondary_md5": True}
    assert compare_listed(info(3, md5), None, **both) is Verdict.MISSING
    assert compare_listed(info(3, md5), info(4, md5), **both) is Verdict.STALE
    assert compare_listed(info(3, md5), info(3, md5), **both) is Verdict.SAME
    assert compare_listed(info(3, md5), info(3, md5[::-1]), **both) is Verdict.STALE
    # A multipart ETag is not an MD5; an Azure ETag neither: the mark decides.
    assert compare_listed(info(3, md5 + "-2"), info(3, md5 + "-2"), **both) is Verdict.UNSURE
    one = {"primary_md5": True, "secondary_md5": False}
    assert compare_listed(info(3, md5), info(3, md5), **one) is Verdict.UNSURE
    source = info(3, "0x8D")
    assert compare_marked(source, {MARK: version_of(source)}) is Verdict.SAME
    assert compare_marked(source, {MARK: version_of(info(3, "0x8E"))}) is Verdict.STALE
    assert compare_marked(source, {}) is Verdict.STALE
    assert compare_marked(source, None) is Verdict.STALE
    assert version_of(info(3, None)) != version_of(ObjectInfo("k", 3, 6 * 10**9))  # mtime, no ETag


async def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "journal", ["p", "s"], 10 * 1024 * 1024)
    await j.open()
    return j


async def test_keys_with_pending_journal_entries_are_left_to_the_journal(tmp_path: Path) -> None:
    primary, secondary = MemoryBackend("p"), MemoryBackend("s")
    primary.objects["a"] = (b"aaa", {}, 1.0)
    primary.objects["b"] = (b"bbb", {}, 1.0)
    j = await journal(tmp_path)
    await j.append_put_bytes("a", b"newer", {})
    figures = await syncer(primary, secondary, tmp_path, journal=j).run_pass()
    assert figures.skipped_pending == 1
    assert "a" not in secondary.objects
    assert secondary.objects["b"][0] == b"bbb"
    await j.close()


class RacingSecondary(MemoryBackend):
    """While reconciliation uploads ``key``'s old version, the mount changes ``key`` and the
    journal applies the change to both stores: the old upload lands last."""

    def __init__(self, primary: MemoryBackend, j: Journal, key: str, new: bytes) -> None:
        super().__init__("s")
        self.primary, self.journal, self.key, self.new = primary, j, key, new
        self.raced = False

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        if key == self.key and not self.raced:
            self.raced = True
            entry = await self.journal.append_put_bytes(key, self.new, {})
            self.primary.objects[key] = (self.new, {}, 2.0)
            await super().write_bytes(key, self.new, {})
            await self.journal.mark_applied(entry.seq, "p")
            await self.journal.mark_applied(entry.seq, "s")
        return await super().write_bytes(key, data, metadata)


async def test_a_copy_raced_by_the_journal_is_verified_and_redone(tmp_path: Path) -> None:
    primary = MemoryBackend("p")
    primary.objects["k"] = (b"old version", {}, 1.0)
    j = await journal(tmp_path)
    secondary = RacingSecondary(primary, j, "k", b"new version!")
    await syncer(primary, secondary, tmp_path, journal=j).run_pass()
    assert secondary.raced
    assert secondary.objects["k"][0] == b"new version!"
    await j.close()


class FailingSecondary(MemoryBackend):
    def __init__(self, fail_after: int) -> None:
        super().__init__("s")
        self.fail_after = fail_after

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        if len(writes(self)) >= self.fail_after:
            raise BackendUnavailable("secondary went away")
        return await super().write_bytes(key, data, metadata)


async def test_an_interrupted_pass_resumes_after_its_cursor(tmp_path: Path) -> None:
    primary = MemoryBackend("p")
    fill(primary, 30)
    broken = FailingSecondary(fail_after=12)
    with pytest.raises(BackendUnavailable):
        await syncer(primary, broken, tmp_path, workers=4).run_pass()
    saved = json.loads((tmp_path / "sync" / STATE_FILE).read_text())
    assert saved["cursor"] is not None
    done_before = set(broken.objects)
    # A new Syncer (a restarted daemon) over the same stores and directory.
    healthy = MemoryBackend("s")
    healthy.objects = dict(broken.objects)
    figures = await syncer(primary, healthy, tmp_path, workers=4).run_pass()
    assert figures.resumed_after == saved["cursor"]
    assert not set(writes(healthy)) & {k for k in done_before if k <= saved["cursor"]}
    assert set(healthy.objects) == set(primary.objects)
    saved = json.loads((tmp_path / "sync" / STATE_FILE).read_text())
    assert saved["cursor"] is None and saved["last_complete_at"] is not None


async def test_copies_are_paced(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    primary, secondary = MemoryBackend("p"), MemoryBackend("s")
    for i in range(10):
        primary.objects[f"k{i}"] = (b"x" * 1000, {}, 1.0)
    start = trio.current_time()
    await syncer(primary, secondary, tmp_path, bytes_per_second=1000, workers=1).run_pass()
    # 10 objects of 1000 bytes at 1000 bytes/s: the last may start 9 s after the first.
    assert trio.current_time() - start >= 9.0


async def test_health_says_failover_is_incomplete(tmp_path: Path) -> None:
    primary, secondary = MemoryBackend("p"), MemoryBackend("s")
    fill(primary, 5)
    sync = syncer(primary, secondary, tmp_path)
    report = HealthReport()
    report.sync = sync.snapshot
    sync.figures.behind_objects, sync.figures.behind_bytes = 6, 300
    status = json.loads(report.files()["status.json"])
    assert status["status"] == "degraded"
    assert status["secondary"]["behind_objects"] == 6
    assert any("failover is incomplete" in r for r in status["reasons"])
    await sync.run_pass()
    status = json.loads(report.files()["status.json"])
    assert status["status"] == "ok"
    assert status["secondary"]["state"] == COMPLETE
    assert status["secondary"]["behind_objects"] == 0
