"""FallbackChain over in-memory remotes with injected faults: reads fall back, writes are never
lost, the replayer keeps per-key order, and the overlay shows pending state at once."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from storagefs.backends.base import (
    BackendUnavailable,
    ListPage,
    NoSpace,
    NotFound,
    PermissionDenied,
    TransientError,
)
from storagefs.chain.fallback import FallbackChain
from storagefs.config import Settings
from storagefs.fs.inodes import ROOT_INODE
from storagefs.observability.health import HealthReport
from storagefs.resilience.backend import ResilientBackend, RetryPolicy
from tests.fakes import MemoryBackend
from tests.fault_injection import FaultyBackend

META = {"mode": "33188", "uid": "1000", "gid": "1000", "mtime": "1700000000"}
WRITES = ("write", "write_bytes", "delete", "copy")


def remotes() -> tuple[FaultyBackend, FaultyBackend]:
    return (
        FaultyBackend(MemoryBackend("primary")),
        FaultyBackend(MemoryBackend("secondary")),
    )


def store(backend: FaultyBackend) -> MemoryBackend:
    inner = backend.inner
    assert isinstance(inner, MemoryBackend)
    return inner


def contents(backend: FaultyBackend) -> dict[str, bytes]:
    return {k: v[0] for k, v in store(backend).objects.items()}


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "cache_dir": tmp_path,
        "write_deadline": 10.0,
        "retry_initial_backoff": 0.01,
        "breaker_reset": 0.05,
        "cache_max_bytes": 10**7,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running(
    tmp_path: Path, backends: tuple[Any, ...], *, start: bool = True, **overrides: Any
) -> AsyncIterator[FallbackChain]:
    chain = FallbackChain.from_settings(list(backends), settings(tmp_path, **overrides))
    await chain.open()
    try:
        async with trio.open_nursery() as nursery:
            if start:
                await nursery.start(chain.run)
            yield chain
            chain.stop()
    finally:
        await chain.close()


async def list_all(chain: FallbackChain, prefix: str = "", limit: int = 1000) -> ListPage:
    objects, prefixes, token = [], [], None
    while True:
        page = await chain.list(prefix, token=token, limit=limit)
        objects += page.objects
        prefixes += page.prefixes
        token = page.token
        if token is None:
            return ListPage(objects, prefixes, None)


def verdict(chain: FallbackChain) -> str:
    """ok / degraded / down, as the health files would say (the chain only reports facts)."""
    return HealthReport(chain=chain).snapshot().status


def keys(page: ListPage) -> list[str]:
    return [o.key for o in page.objects]


# --- reads ---------------------------------------------------------------------------------------


async def test_reads_fall_back_to_the_secondary(tmp_path: Path) -> None:
    primary, secondary = remotes()
    await store(primary).write_bytes("old", b"from primary", META)
    await store(secondary).write_bytes("old", b"from secondary", META)
    await store(secondary).write_bytes("d/x", b"x", META)
    async with running(tmp_path, (primary, secondary)) as chain:
        assert await chain.read("old", 0, 100) == b"from primary"
        primary.set_down(BackendUnavailable)
        assert await chain.read("old", 0, 100) == b"from secondary"
        assert (await chain.stat("old")).size == len(b"from secondary")
        page = await chain.list("")
        assert keys(page) == ["old"] and page.prefixes == ["d/"]
        status = chain.status()
        assert status.remotes[0].state.reachable is False and verdict(chain) == "degraded"
        assert status.remotes[1].state.reachable is True
        primary.set_up()
        await trio.sleep(0.06)  # a remote that just failed is asked last for breaker_reset
        assert await chain.read("old", 0, 100) == b"from primary"
        assert chain.stale_reads == 0


async def test_not_found_from_a_reachable_primary_is_final(tmp_path: Path) -> None:
    primary, secondary = remotes()
    await store(secondary).write_bytes("deleted-on-primary", b"zombie", META)
    async with running(tmp_path, (primary, secondary)) as chain:
        with pytest.raises(NotFound):
            await chain.stat("deleted-on-primary")
        with pytest.raises(NotFound):
            await chain.read("deleted-on-primary", 0, 10)
        assert secondary.calls["stat"] == 0 and secondary.calls["read"] == 0


async def test_all_down_reads_cache_writes_journal_then_everything_arrives(
    tmp_path: Path,
) -> None:
    primary, secondary = remotes()
    async with running(tmp_path, (primary, secondary)) as chain:
        await chain.write_bytes("cached", b"clean copy", META)
        await chain.write_bytes("renamed", b"move me", META)
        assert await chain.flush(5)
        primary.set_down()
        secondary.set_down()

        # Reads: the clean cached copy, counted as stale.
        assert await chain.read("cached", 0, 100) == b"clean copy"
        assert chain.stale_reads == 1 and chain.status().last_stale_read is not None
        with pytest.raises(BackendUnavailable):
            await chain.read("never-seen", 0, 10)

        # Writes: acknowledged on the journal alone, visible at once.
        src = tmp_path / "big"
        big = hashlib.sha256(b"seed").digest() * 10_000  # 320 KB: a journal content file
        src.write_bytes(big)
        await chain.write("big", str(src), META)
        src.write_bytes(b"the staging file changes after close")
        await chain.write_bytes("small", b"tiny", META)
        await chain.copy("renamed", "moved")
        await chain.delete("renamed")
        await chain.delete("cached")
        assert await chain.read("big", 0, len(big)) == big
        assert await chain.read("moved", 0, 100) == b"move me"
        with pytest.raises(NotFound):
            await chain.stat("renamed")
        assert chain.journal_only_writes == 5
        assert not await chain.flush(0.2)
        status = chain.status()
        assert verdict(chain) == "down" and status.journal.pending_entries == 5
        assert status.remotes[0].pending_ops == 5

        primary.set_up()
        secondary.set_up()
        assert await chain.flush(10)
    expected = {"big": big, "small": b"tiny", "moved": b"move me"}
    assert contents(primary) == expected
    assert contents(secondary) == expected


async def test_pending_state_is_visible_in_the_overlay(tmp_path: Path) -> None:
    primary, secondary = remotes()
    for backend in (primary, secondary):
        await store(backend).write_bytes("gone", b"old", META)
        await store(backend).write_bytes("e/only", b"1", META)
        await store(backend).write_bytes("f/kept", b"1", META)
        await store(backend).write_bytes("f/dropped", b"1", META)
        backend.hang(WRITES)  # reads answer, nothing gets applied
    async with running(tmp_path, (primary, secondary), write_mode="back") as chain:
        await chain.write_bytes("new", b"pending bytes", {"mode": "33261"})
        await chain.write_bytes("d/inner", b"x", META)
        await chain.delete("gone")
        await chain.delete("e/only")
        await chain.delete("f/dropped")

        info = await chain.stat("new")
        assert info.size == len(b"pending bytes") and info.metadata == {"mode": "33261"}
        assert await chain.read("new", 8, 100) == b"bytes"
        dest = tmp_path / "dl"
        assert (await chain.download("new", str(dest))).size == 13
        assert dest.read_bytes() == b"pending bytes"
        with pytest.raises(NotFound):
            await chain.stat("gone")
        with pytest.raises(NotFound):
            await chain.read("gone", 0, 10)
        page = await chain.list("")
        assert keys(page) == ["new"]
        assert page.prefixes == ["d/", "f/"]  # e/ is empty now, f/ is not
        assert keys(await chain.list("f/")) == ["f/kept"]
        assert store(primary).objects.keys() == {"gone", "e/only", "f/kept", "f/dropped"}

        primary.release()
        secondary.release()
        assert await chain.flush(5)
        assert keys(await chain.list("")) == ["new"]
    assert (
        contents(primary)
        == contents(secondary)
        == {
            "new": b"pending bytes",
            "d/inner": b"x",
            "f/kept": b"1",
        }
    )


async def test_renames_of_renames_read_through_while_pending(tmp_path: Path) -> None:
    primary, secondary = remotes()
    for backend in (primary, secondary):
        await store(backend).write_bytes("a", b"original", META)
        backend.hang(WRITES)
    async with running(tmp_path, (primary, secondary), write_mode="back") as chain:
        await chain.copy("a", "b")  # a real server-side copy: a is on the remotes
        await chain.delete("a")
        await chain.copy("b", "c")  # b exists only as a pending copy of a
        await chain.delete("b")
        await chain.copy("c", "d", {"mode": "1"})
        assert await chain.read("c", 0, 100) == b"original"
        assert await chain.read("d", 0, 100) == b"original"
        assert (await chain.stat("d")).metadata == {"mode": "1"}
        dest = tmp_path / "dl"
        await chain.download("c", str(dest))
        assert dest.read_bytes() == b"original"
        assert keys(await chain.list("")) == ["c", "d"]
        primary.release()
        secondary.release()
        assert await chain.flush(5)
        assert await chain.read("c", 0, 100) == b"original"
    for backend in (primary, secondary):
        assert contents(backend) == {"c": b"original", "d": b"original"}


async def test_listing_continues_on_the_secondary_mid_way(tmp_path: Path) -> None:
    primary, secondary = remotes()
    names = [f"k{i:03d}" for i in range(50)]
    for backend in (primary, secondary):
        for name in names:
            await store(backend).write_bytes(name, b"", META)
    async with running(tmp_path, (primary, secondary)) as chain:
        await chain.write_bytes("k0255", b"pending", META)  # sorts inside the third page
        first = await chain.list("", limit=10)
        assert keys(first) == names[:10] and first.token is not None
        primary.set_down()
        seen = keys(first)
        token: str | None = first.token
        while token is not None:
            page = await chain.list("", token=token, limit=10)
            assert keys(page) == sorted(keys(page))
            seen += keys(page)
            token = page.token
        assert seen == sorted([*names, "k0255"])


# --- writes -------------------------------------------------------------------------------------


async def test_write_through_waits_for_the_primary(tmp_path: Path) -> None:
    primary, secondary = remotes()
    async with running(tmp_path, (primary, secondary)) as chain:
        info = await chain.write_bytes("a", b"hello", META)
        assert contents(primary) == {"a": b"hello"}  # applied before the call returned
        assert info.etag == hashlib.md5(b"hello").hexdigest()  # the primary's answer
        assert await chain.flush(5)
        assert contents(secondary) == {"a": b"hello"}
        await chain.delete("a")
        assert contents(primary) == {} and chain.journal_only_writes == 0


async def test_writes_after_the_background_work_was_cancelled(tmp_path: Path) -> None:
    # The unmount cancels the chain's background tasks, then uploads files still open: their
    # cache upkeep must not fail on the cache filler that is gone (it once raised
    # BrokenResourceError, and the unmount lost the open files' data).
    primary = remotes()[0]
    chain = FallbackChain.from_settings([primary], settings(tmp_path))
    await chain.open()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(chain.run)
            nursery.cancel_scope.cancel()
        await chain.write_bytes("late", b"still stored", META)
        assert contents(primary) == {"late": b"still stored"}
    finally:
        await chain.close()


async def test_write_through_deadline(tmp_path: Path) -> None:
    primary, secondary = remotes()
    primary.hang(WRITES)
    async with running(tmp_path, (primary, secondary), write_deadline=0.3) as chain:
        start = trio.current_time()
        await chain.write_bytes("a", b"x", META)
        assert 0.3 <= trio.current_time() - start < 3
        assert "a" not in store(primary).objects and chain.journal_only_writes == 1
        primary.release()
        assert await chain.flush(5)
        assert contents(primary) == {"a": b"x"}


async def test_write_back_returns_once_journaled(tmp_path: Path) -> None:
    primary, secondary = remotes()
    primary.hang(WRITES)
    async with running(tmp_path, (primary, secondary), write_mode="back") as chain:
        with trio.fail_after(2):
            await chain.write_bytes("a", b"x", META)
        assert "a" not in store(primary).objects and chain.journal_only_writes == 0
        with trio.fail_after(5):
            while primary.hung == 0:  # noqa: ASYNC110 -- the replayer is on it
                await trio.sleep(0.01)
        primary.release()
        assert await chain.flush(5)
        assert contents(primary) == contents(secondary) == {"a": b"x"}


async def test_through_write_succeeds_on_journal_when_primary_down(tmp_path: Path) -> None:
    primary, secondary = remotes()
    primary.set_down(BackendUnavailable)
    async with running(tmp_path, (primary, secondary)) as chain:
        with trio.fail_after(2):
            await chain.write_bytes("a", b"x", META)
            await chain.write_bytes("b", b"y", META)
        assert chain.journal_only_writes == 2
        assert await chain.read("a", 0, 10) == b"x"
        primary.set_up()
        assert await chain.flush(5)
        assert contents(primary) == {"a": b"x", "b": b"y"}


async def test_replay_keeps_order_per_key_on_each_target(tmp_path: Path) -> None:
    primary, secondary = remotes()
    async with running(tmp_path, (primary, secondary), replay_workers=8) as chain:
        await chain.write_bytes("a", b"v1", META)
        assert await chain.flush(5)
        primary.set_down()
        secondary.set_down()
        # A real server-side COPY (a is on the remotes), then changes to both keys behind it.
        await chain.copy("a", "b", {**META, "mode": "33261"})
        await chain.delete("a")
        await chain.write_bytes("a", b"v2", META)
        await chain.copy("a", "c")  # a is pending: journaled as a PUT sharing its content
        await chain.delete("a")
        for i in range(10):  # other keys, applied in parallel
            await chain.write_bytes(f"other{i}", b"o", META)
        for backend in (primary, secondary):
            store(backend).calls.clear()
            backend.set_up()
            backend.add_latency(0.01, "copy")  # a slow copy must still finish before the delete
        assert await chain.flush(10)
    for backend in (primary, secondary):
        calls = [c for c in store(backend).calls if c[1] in {"a", "b", "c"}]
        # The memory store logs a copy under its source. c shares a's pending content but is
        # another key: it may go any time.
        assert ("write", "c") in calls
        assert [c for c in calls if c != ("write", "c")] == [
            ("copy", "a"),
            ("delete", "a"),
            ("write", "a"),
            ("delete", "a"),
        ]
        objects = store(backend).objects
        assert objects["b"][0] == b"v1" and objects["b"][1]["mode"] == "33261"
        assert objects["c"][0] == b"v2" and "a" not in objects


async def test_permanent_error_is_raised_and_quarantined(tmp_path: Path) -> None:
    primary, secondary = remotes()
    primary.fail_next("write_bytes", 1, PermissionDenied)
    async with running(tmp_path, (primary, secondary)) as chain:
        with pytest.raises(PermissionDenied):
            await chain.write_bytes("refused", b"x", META)
        assert await chain.flush(5)  # nothing left to retry
        assert chain.journal.stats().quarantined == 2  # the primary's, and the abandoned rest
        assert verdict(chain) == "degraded"
        with pytest.raises(NotFound):
            await chain.stat("refused")
        quarantine = chain.journal.quarantine_dir
        assert len(list(quarantine.glob("*.json"))) == 2 and list(quarantine.glob("*.data"))
    assert "refused" not in store(primary).objects


async def test_permanent_error_in_write_back_mode(tmp_path: Path) -> None:
    primary, secondary = remotes()
    primary.fail_next("write_bytes", 1, PermissionDenied)
    async with running(tmp_path, (primary, secondary), write_mode="back") as chain:
        await chain.write_bytes("refused", b"x", META)  # journaled: the caller hears success
        assert await chain.flush(5)
        assert chain.replayer.stats()["primary"].quarantined == 1
        assert chain.journal.stats().quarantined == 1
        assert primary.calls["write_bytes"] == 1  # not retried forever
    assert "refused" not in store(primary).objects
    assert contents(secondary) == {"refused": b"x"}


async def test_full_journal_refuses_writes(tmp_path: Path) -> None:
    primary, secondary = remotes()
    secondary.set_down()  # nothing leaves the journal until the secondary has it too
    async with running(tmp_path, (primary, secondary), journal_max_bytes=100_000) as chain:
        await chain.write_bytes("a", bytes(95_000), META)
        with pytest.raises(NoSpace):
            await chain.write_bytes("b", bytes(10_000), META)
        assert "b" not in store(primary).objects
        assert any("full" in r for r in HealthReport(chain=chain).snapshot().reasons)
        secondary.set_up()
        assert await chain.flush(5)
        await chain.write_bytes("b", bytes(10_000), META)  # room again once replayed


async def test_content_that_rots_before_upload_is_quarantined(tmp_path: Path) -> None:
    primary, secondary = remotes()
    primary.set_down()
    secondary.set_down()
    async with running(tmp_path, (primary, secondary), write_mode="back") as chain:
        await chain.write_bytes("rotten", bytes(200_000), META)  # a content file
        await chain.write_bytes("fine", b"ok", META)
        entry = chain.journal.latest("rotten")
        assert entry is not None
        path = chain.journal.content_path(entry)
        assert path is not None
        with open(path, "r+b") as f:
            f.write(b"rot")
        primary.set_up()
        secondary.set_up()
        assert await chain.flush(5)
        assert chain.journal.stats().quarantined == 2  # one per target, none uploaded
        assert chain.replayer.stats()["primary"].quarantined == 1
    assert contents(primary) == contents(secondary) == {"fine": b"ok"}


async def test_flush_reports_whether_drained(tmp_path: Path) -> None:
    primary, secondary = remotes()
    secondary.set_down()
    async with running(tmp_path, (primary, secondary)) as chain:
        await chain.write_bytes("a", b"x", META)
        assert not await chain.flush(0.2)
        secondary.set_up()
        assert await chain.flush(None)
        assert chain.journal.drained()


async def test_degraded_start_and_recovery(tmp_path: Path) -> None:
    primary, secondary = remotes()
    await store(secondary).write_bytes("seen", b"on secondary", META)
    primary.set_down(BackendUnavailable)
    async with running(tmp_path, (primary, secondary)) as chain:
        status = chain.status()
        assert status.remotes[0].state.reachable is False and verdict(chain) == "degraded"
        assert await chain.read("seen", 0, 100) == b"on secondary"
        await chain.write_bytes("a", b"x", META)
        primary.set_up()
        assert await chain.flush(5)
        assert contents(primary) == {"a": b"x"}
        assert verdict(chain) == "ok"


async def test_pending_writes_survive_a_restart(tmp_path: Path) -> None:
    primary, secondary = remotes()
    primary.set_down()
    secondary.set_down()
    async with running(tmp_path, (primary, secondary), write_mode="back") as chain:
        await chain.write_bytes("a", b"before the crash", META)
        await chain.delete("x")
    primary.set_up()
    secondary.set_up()
    async with running(tmp_path, (primary, secondary), start=False) as chain:
        # Visible before the replayer even starts.
        assert await chain.read("a", 0, 100) == b"before the crash"
        assert "a" not in store(primary).objects
    async with running(tmp_path, (primary, secondary)) as chain:
        assert await chain.flush(5)
    assert contents(primary) == contents(secondary) == {"a": b"before the crash"}


async def test_rate_limit_paces_replay(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def replay_time(limit: int) -> float:
        backends = remotes()
        directory = tmp_path / str(limit)
        async with running(
            directory, backends, start=False, write_mode="back", replay_bytes_per_second=limit
        ) as chain:
            for i in range(5):
                await chain.write_bytes(f"k{i}", bytes(10_000), META)
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                await nursery.start(chain.run)
                assert await chain.flush(None)  # no deadline: MockClock jumps while threads work
                chain.stop()
            assert (
                contents(backends[0])
                == contents(backends[1])
                == {f"k{i}": bytes(10_000) for i in range(5)}
            )
            return trio.current_time() - start

    # 2 targets x 5 objects x 10 kB at 20 kB/s: the first upload starts at once, then one
    # every 0.5 s.
    paced = await replay_time(20_000)
    assert 4.5 <= paced < 6
    assert await replay_time(0) < 1


async def test_breaker_and_replayer_together(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    faulty_primary, faulty_secondary = remotes()
    s = settings(tmp_path, breaker_failures=2, breaker_reset=5.0, retry_attempts=2)
    policy = RetryPolicy.from_settings(s)
    primary = ResilientBackend(faulty_primary, policy)
    secondary = ResilientBackend(faulty_secondary, policy)
    faulty_primary.set_down(TransientError)
    async with running(
        tmp_path, (primary, secondary), breaker_failures=2, breaker_reset=5.0, retry_attempts=2
    ) as chain:
        for i in range(5):
            await chain.write_bytes(f"k{i}", b"x", META)
        await trio.sleep(30)
        assert primary.breaker_state == "open"
        calls_while_open = faulty_primary.calls["write_bytes"]
        await trio.sleep(30)
        # While down, only the breaker's half-open probes reach the store, not every entry.
        assert faulty_primary.calls["write_bytes"] - calls_while_open <= 30 / 5 + 1
        faulty_primary.set_up()
        assert await chain.flush(None)
    assert contents(faulty_primary) == contents(faulty_secondary)
    assert len(contents(faulty_primary)) == 5


async def test_status_shape(tmp_path: Path) -> None:
    primary, secondary = remotes()
    async with running(tmp_path, (primary, secondary)) as chain:
        await chain.write_bytes("a", b"x", META)
        status = chain.status()
    assert [r.role for r in status.remotes] == ["primary", "secondary"]
    assert status.cache.objects == 1 and status.journal.max_bytes > 0
    assert status.remotes[0].replay.applied == 1
    assert status.remotes[0].state.reachable is True


@pytest.mark.parametrize(("seed", "mode"), [(1, "back"), (2, "through"), (3, "back")])
async def test_random_operations_match_a_model(tmp_path: Path, seed: int, mode: str) -> None:
    """Random writes, copies, renames and deletes over a few keys while every other write
    call to each remote fails: the chain always reads like the model, and once drained both
    remotes hold exactly the model."""
    rng = random.Random(seed)
    primary, secondary = remotes()
    primary.flap(TransientError, WRITES)
    secondary.flap(TransientError, WRITES)
    model: dict[str, bytes] = {}
    names = [f"k{i}" for i in range(6)]
    async with running(tmp_path, (primary, secondary), write_mode=mode, replay_workers=3) as chain:
        for _ in range(120):
            key, other = rng.choice(names), rng.choice(names)
            roll = rng.random()
            if roll < 0.45:
                data = rng.randbytes(rng.choice([5, 70_000]))  # inline and content file
                await chain.write_bytes(key, data, META)
                model[key] = data
            elif roll < 0.65:
                await chain.delete(key)
                model.pop(key, None)
            elif key not in model:
                with pytest.raises(NotFound):
                    await chain.copy(key, other)
            else:
                await chain.copy(key, other)
                model[other] = model[key]
                if roll > 0.85 and other != key:  # a rename
                    await chain.delete(key)
                    del model[key]
            probe = rng.choice(names)
            if probe in model:
                assert await chain.read(probe, 0, 10**6) == model[probe]
            else:
                with pytest.raises(NotFound):
                    await chain.stat(probe)
            if rng.random() < 0.2:
                await trio.sleep(0.005)  # let the replayer catch up part of the way
        assert keys(await list_all(chain)) == sorted(model)
        primary.reset()
        secondary.reset()
        assert await chain.flush(20)
        assert keys(await list_all(chain)) == sorted(model)
    assert contents(primary) == model
    assert contents(secondary) == model


async def test_a_whole_small_object_read_is_cached_for_outages(tmp_path: Path) -> None:
    """`cat` of a small file reads it whole in one call: that copy must serve it later when
    no remote answers (the core reads ranges, never download(), for files it only reads)."""
    from storagefs.chain.cache import Cache
    from storagefs.chain.fallback import FallbackChain
    from storagefs.chain.options import ChainOptions
    from storagefs.config import Settings
    from storagefs.journal.store import Journal
    from tests.fakes import MemoryBackend
    from tests.fault_injection import FaultyBackend

    primary = FaultyBackend(MemoryBackend("p"))
    await primary.inner.write_bytes("k", b"small", {})
    settings = Settings(cache_dir=tmp_path)
    chain = FallbackChain(
        [primary],
        Journal(tmp_path / "j", ["p"], 1 << 30),
        Cache(tmp_path / "c", 1 << 20),
        ChainOptions.from_settings(settings),
    )
    await chain.open()
    assert await chain.read("k", 0, 1 << 20) == b"small"
    from storagefs.backends.base import BackendUnavailable

    primary.set_down(BackendUnavailable("down"))
    assert await chain.read("k", 0, 1 << 20) == b"small"
    assert chain.stale_reads == 1
    await chain.close()


async def test_a_lone_remote_takes_changes_directly_and_the_journal_when_down(
    tmp_path: Path,
) -> None:
    """One remote, write-through: an applied change skips the journal (it is on the store
    before it is acknowledged); a change the remote cannot take is journaled, acknowledged,
    ordered before later changes of the same key, and replayed when the remote is back."""
    primary, _ = remotes()
    async with running(tmp_path, (primary,)) as chain:
        await chain.write_bytes("a", b"direct", META)
        assert contents(primary) == {"a": b"direct"}
        assert chain.journal.stats().pending_entries == 0
        assert primary.calls.get("write_bytes") == 1  # once, not again by the replayer

        primary.set_down(BackendUnavailable("down"))
        await chain.write_bytes("b", b"journaled", META)  # acknowledged on the journal
        assert chain.journal_only_writes == 1
        assert chain.journal.latest("b") is not None
        primary.set_up()
        # A later change of the same key must queue behind the journaled one.
        await chain.write_bytes("b", b"newer", META)
        assert await chain.flush(5.0)
        assert contents(primary) == {"a": b"direct", "b": b"newer"}

        with pytest.raises(NotFound):  # a refusal that is an answer: raised, not journaled
            await chain.copy("missing", "x")
        assert chain.journal.stats().pending_entries == 0


async def test_a_remote_that_just_failed_is_asked_last(tmp_path: Path) -> None:
    """A hung primary must cost one timed-out operation, not one per call until its breaker
    opens: for breaker_reset seconds after a failure, reads go to the secondary first."""
    primary, secondary = remotes()
    for backend in (primary, secondary):
        await store(backend).write_bytes("k", b"v", META)
    async with running(tmp_path, (primary, secondary), breaker_reset=30.0) as chain:
        primary.set_down(TransientError("hung"))
        assert await chain.read("k", 0, 10) == b"v"
        asked = primary.calls.get("read", 0)
        assert asked == 1
        assert await chain.read("k", 0, 10) == b"v"
        await chain.stat("k")
        assert primary.calls.get("read", 0) == asked
        assert primary.calls.get("stat", 0) == 0
    async with running(tmp_path / "again", (primary, secondary), breaker_reset=1e-6) as chain:
        await chain.read("k", 0, 10)
        await chain.read("k", 0, 10)
        assert primary.calls["read"] == asked + 2  # no grace period: asked first every time


async def test_replay_runs_under_the_journal_entry_id(tmp_path: Path) -> None:
    """Backend calls (and their retries' log lines) made while replaying an entry carry the
    correlation id journal-<seq>; the telemetry hook wraps each replay."""
    from storagefs.context import request_id

    seen: list[str | None] = []

    class Recording(MemoryBackend):
        async def write_bytes(self, key: str, data: bytes, metadata: Any) -> Any:
            seen.append(request_id.get())
            return await super().write_bytes(key, data, metadata)

    wrapped: list[int] = []

    @contextlib.contextmanager
    def around() -> Iterator[None]:
        wrapped.append(1)
        yield

    primary, secondary = Recording("primary"), Recording("secondary")
    async with running(tmp_path, (primary, secondary)) as chain:
        chain.replayer.around_apply = around
        await chain.write_bytes("k", b"v", META)
        assert await chain.flush(5.0)
        seq = 1
    assert seen == [f"journal-{seq}", f"journal-{seq}"]
    assert len(wrapped) == 2


async def test_rewrites_during_an_outage_keep_one_entry_per_key(tmp_path: Path) -> None:
    """A file rewritten again and again while the remotes are down costs one journal entry
    (memory and disk stay bounded) and one upload when they return — unless a pending copy
    still has to read an older version."""
    primary, secondary = remotes()
    async with running(tmp_path, (primary, secondary), write_mode="back") as chain:
        primary.set_down(BackendUnavailable("down"))
        secondary.set_down(BackendUnavailable("down"))
        for i in range(200):
            await chain.write_bytes("hot", f"version {i}".encode(), META)
        await chain.write_bytes("src", b"old", META)
        await chain.copy("src", "snapshot")  # reads src as it is now
        await chain.write_bytes("src", b"new", META)
        await trio.sleep(0.1)  # the superseded entries' acks are committed in the background
        assert len(chain.journal) <= 2 + 2  # hot (one may be in a probe), snapshot, src
        assert chain.journal.latest("hot") is not None
        primary.set_up()
        secondary.set_up()
        assert await chain.flush(10.0)
    for backend in (primary, secondary):
        assert contents(backend)["hot"] == b"version 199"
        assert contents(backend)["snapshot"] == b"old"
        assert contents(backend)["src"] == b"new"
        uploads = [key for op, key in store(backend).calls if op == "write"]
        # The copy of a pending write is journaled as a write of its own content, so the
        # old "src" is superseded too.
        assert uploads.count("hot") <= 2, uploads
        assert (uploads.count("src"), uploads.count("snapshot")) == (1, 1), uploads


async def test_no_rewrite_is_dropped_while_a_pending_copy_reads_the_key(tmp_path: Path) -> None:
    primary, secondary = remotes()
    for backend in (primary, secondary):
        await store(backend).write_bytes("src", b"stored", META)
    async with running(tmp_path, (primary, secondary), write_mode="back") as chain:
        primary.set_down(BackendUnavailable("down"))
        await chain.copy("src", "snapshot")  # a real COPY: src is only on the stores
        await chain.write_bytes("src", b"one", META)
        await chain.write_bytes("src", b"two", META)
        assert len(chain.journal) == 3  # all three still pending on the primary
        primary.set_up()
        assert await chain.flush(10.0)
    for backend in (primary, secondary):
        assert contents(backend) == {"src": b"two", "snapshot": b"stored"}


# --- failover without waiting: hedged reads, single attempts, demotion ---------------------------


def resilient_remotes(
    tmp_path: Path,
) -> tuple[FaultyBackend, FaultyBackend, list[ResilientBackend]]:
    """Two remotes behind ResilientBackends with the default policy (as a mount has them)."""
    primary, secondary = remotes()
    policy = RetryPolicy.from_settings(Settings(cache_dir=tmp_path))
    return (
        primary,
        secondary,
        [ResilientBackend(primary, policy), ResilientBackend(secondary, policy)],
    )


async def test_a_hung_primary_is_hedged_then_asked_last(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    primary, secondary, wrapped = resilient_remotes(tmp_path)
    for backend in (primary, secondary):
        await store(backend).write_bytes("k", b"v", META)
    async with running(tmp_path, tuple(wrapped), breaker_reset=10.0) as chain:
        primary.hang(("read", "stat", "list", "health"))
        start = trio.current_time()
        assert await chain.read("k", 0, 10) == b"v"
        # No samples yet: the secondary is asked after the hedge ceiling, not after the
        # primary's timeouts and retries.
        assert trio.current_time() - start == pytest.approx(Settings().hedge_max_delay)
        assert wrapped[0].state.unwell() and "no answer to read" in str(
            wrapped[0].state.unwell_reason
        )
        asked = dict(primary.calls)
        start = trio.current_time()
        assert (await chain.stat("k")).size == 1
        assert await chain.read("k", 0, 10) == b"v"
        assert trio.current_time() - start < Settings().hedge_min_delay
        assert {op: primary.calls[op] for op in asked} == asked  # not asked again
        assert primary.calls.get("stat", 0) == 0
        primary.release()


async def test_a_slow_primary_is_not_overruled_by_a_secondary_that_lacks_the_key(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The primary is slower than its hedge delay but answers within its timeout; the
    # secondary never got the object (written before it existed, or by another tool). Its
    # quick "not found" must not win: the file would vanish from the mount.
    primary, _secondary, wrapped = resilient_remotes(tmp_path)
    await store(primary).write_bytes("only-primary", b"here", META)
    async with running(tmp_path, tuple(wrapped)) as chain:
        primary.add_latency(Settings().hedge_max_delay * 1.5, ("stat", "read"))
        assert (await chain.stat("only-primary")).size == 4
        assert await chain.read("only-primary", 0, 10) == b"here"
        with pytest.raises(NotFound):  # a name neither has: still "not found" in the end
            await chain.stat("nowhere")


async def test_a_failing_primary_gets_one_attempt_when_the_secondary_can_answer(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    primary, secondary, wrapped = resilient_remotes(tmp_path)
    for backend in (primary, secondary):
        await store(backend).write_bytes("k", b"v", META)
    async with running(tmp_path, tuple(wrapped)) as chain:
        primary.set_down(TransientError("503"))
        assert (await chain.stat("k")).size == 1
        assert primary.calls["stat"] == 1  # no retries: the secondary answered instead
        assert wrapped[0].state.unwell()
        secondary.set_down(TransientError("503"))
        primary.set_up()
        await store(secondary).delete("k")
        # The secondary is now the last one asked with nothing after it: full retries there.
        assert await chain.read("k", 0, 10) == b"v"


async def test_a_slow_primary_loses_the_hedge_but_a_prompt_probe_restores_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    primary, secondary, wrapped = resilient_remotes(tmp_path)
    for backend in (primary, secondary):
        await store(backend).write_bytes("k", b"v", META)
    async with running(tmp_path, tuple(wrapped), breaker_reset=60.0) as chain:
        primary.add_latency(5.0, "stat")
        await chain.stat("k")
        assert wrapped[0].state.unwell()
        assert chain.status().remotes[0].state.unwell
        primary.add_latency(0, "stat")
        await trio.sleep(3)  # the chain's probe asks the primary's health: it answers at once
        assert not wrapped[0].state.unwell()
        before = primary.calls["stat"]
        await chain.stat("k")
        assert primary.calls["stat"] == before + 1  # asked first again


async def test_hedge_delay_follows_p99_within_its_bounds(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    primary, _, wrapped = resilient_remotes(tmp_path)
    await store(primary).write_bytes("k", b"v", META)
    state = wrapped[0].state
    assert state.hedge_delay("stat") == state.hedge_ceiling  # no samples yet
    primary.add_latency(0.3, "stat")
    for _ in range(40):
        await wrapped[0].stat("k")
    assert state.hedge_delay("stat") == pytest.approx(0.3)
    primary.add_latency(0.001, "stat")
    for _ in range(2000):
        await wrapped[0].stat("k")
    assert state.hedge_delay("stat") == state.hedge_floor


async def test_a_hung_primary_does_not_hold_a_small_write(tmp_path: Path) -> None:
    """Write-through with the default deadline (real clock): a small write to a hung primary
    is acknowledged on the journal alone instead of waiting out the 30 s request timeout (the
    bound the brief of issue 8 sets), and arrives once the primary answers again."""
    primary, secondary, wrapped = resilient_remotes(tmp_path)
    async with running(tmp_path, tuple(wrapped), write_deadline=Settings().write_deadline) as chain:
        primary.hang(("write_bytes", "health"))
        with trio.fail_after(30):
            await chain.write_bytes("a", b"1", META)
            await chain.write_bytes("b", b"2", META)
        assert chain.journal_only_writes == 2
        assert wrapped[0].state.unwell()  # so "b" did not wait for it at all
        primary.release()
        assert await chain.flush(60)
    assert contents(primary) == contents(secondary) == {"a": b"1", "b": b"2"}


async def test_write_back_close_waits_for_no_fsync_and_fsync_makes_it_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STORAGEFS_WRITE_MODE=back (docs/SEMANTICS.md): a close is acknowledged once the
    journal's files hold the data, without an fsync; fsync() returns once the WAL (and a
    content file) are fsync'd; the upload follows."""
    from tests.core.conftest import make_fs, write_file
    from tests.test_journal import FsyncLog

    primary = FaultyBackend(MemoryBackend("primary"))
    async with running(tmp_path / "c", (primary,), write_mode="back") as chain:
        fs = make_fs(chain, tmp_path)
        log = FsyncLog(monkeypatch)
        await write_file(fs, "small", b"closed, not fsync'd")  # create, write, flush, release
        assert "journal.db-wal" not in log.names(), log.names()
        ino = (await fs.lookup(ROOT_INODE, "small")).ino
        fh, _ = await fs.open(ino, os.O_WRONLY)
        await fs.write(fh, 0, b"C")
        await fs.fsync(fh)
        assert "journal.db-wal" in log.names(), "fsync() returned before the journal synced"
        await fs.release(fh)
        assert await chain.flush(10)
        assert contents(primary)["small"] == b"Closed, not fsync'd"
        fs.close()
