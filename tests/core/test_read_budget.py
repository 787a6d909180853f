"""Readahead memory: one budget for all open files, and nothing fetched after release."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from storagefs.fs.core import Filesystem
from tests.core.conftest import make_fs, resolve
from tests.fakes import MemoryBackend

CHUNK = 64 * 1024


class SlowBackend(MemoryBackend):
    """Reads take a while and are counted in bytes while in flight (what the daemon holds)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.reads_started = 0

    async def read(self, key: str, offset: int, length: int) -> bytes:
        self.reads_started += 1
        self.in_flight += length
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await trio.sleep(0.01)
            return await super().read(key, offset, length)
        finally:
            self.in_flight -= length


async def test_many_readers_share_one_budget(tmp_path: Path, nursery: trio.Nursery) -> None:
    backend = SlowBackend()
    budget = 6 * CHUNK
    fs = make_fs(backend, tmp_path, chunk=CHUNK, readahead_chunks=4, read_budget=budget)
    fs.attach(nursery)
    blobs = {f"f{i}": os.urandom(20 * CHUNK + 123) for i in range(20)}
    for name, blob in blobs.items():
        await backend.write_bytes(name, blob, {})
    inodes = {name: await resolve(fs, name) for name in blobs}
    backend.peak_in_flight = 0  # the lookups' peeks are not readahead
    held_peak = 0

    async def reader(name: str) -> None:
        nonlocal held_peak
        fh, _ = await fs.open(inodes[name], os.O_RDONLY)
        out = bytearray()
        while chunk := await fs.read(fh, len(out), 32 * 1024):
            out += chunk
            held_peak = max(held_peak, fs.read_budget.used)
        await fs.release(fh)
        assert bytes(out) == blobs[name]

    async with trio.open_nursery() as readers:
        for name in blobs:
            readers.start_soon(reader, name)
    # 20 readers x (4 ahead + 2) chunks would be 120 chunks; all of them share 6.
    assert fs.read_budget.peak <= budget
    assert held_peak <= budget
    # What the backend had in flight: the budget's chunks plus at most one small read (here a
    # chunk) per reader served outside it.
    assert backend.peak_in_flight <= budget + 20 * CHUNK
    assert fs.read_budget.used == 0  # every chunk given back at release
    fs.close()


async def test_prefetch_stops_at_release(tmp_path: Path, nursery: trio.Nursery) -> None:
    backend = SlowBackend()
    fs = make_fs(backend, tmp_path, chunk=CHUNK, readahead_chunks=8)
    fs.attach(nursery)
    await backend.write_bytes("big", os.urandom(100 * CHUNK), {})
    fh, _ = await fs.open(await resolve(fs, "big"), os.O_RDONLY)
    assert len(await fs.read(fh, 0, 4096)) == 4096
    assert fs.read_budget.used > CHUNK  # readahead was started
    await fs.release(fh)
    started = backend.reads_started
    assert fs.read_budget.used == 0
    await trio.sleep(1.0)  # long enough for every queued prefetch to have run, had it lived
    assert backend.reads_started == started
    assert backend.in_flight == 0  # the fetches in flight at release were cancelled
    fs.close()


async def test_reads_out_of_order_still_read_ahead(tmp_path: Path, nursery: trio.Nursery) -> None:
    # The kernel's readahead requests can reach the daemon out of order.
    backend = SlowBackend()
    fs = make_fs(backend, tmp_path, chunk=CHUNK, readahead_chunks=4)
    fs.attach(nursery)
    blob = os.urandom(40 * CHUNK)
    await backend.write_bytes("big", blob, {})
    fh, _ = await fs.open(await resolve(fs, "big"), os.O_RDONLY)
    step = CHUNK // 2
    for a, b in [(i, i + step) for i in range(0, len(blob), 2 * step)]:
        # Each pair arrives second half first.
        assert await fs.read(fh, b, step) == blob[b : b + step]
        assert await fs.read(fh, a, step) == blob[a : a + step]
        # Readahead runs ahead of the reader all the way: 4 chunks beyond this one.
        if b + step + 4 * CHUNK <= len(blob):
            assert fs.read_budget.used >= 4 * CHUNK, f"no readahead at offset {a}"
    assert backend.reads_started <= 40 + 2  # every chunk fetched once (and the lookup's peek)
    await fs.release(fh)
    fs.close()


async def test_reader_over_budget_still_reads(tmp_path: Path, nursery: trio.Nursery) -> None:
    backend = SlowBackend()
    fs: Filesystem = make_fs(backend, tmp_path, chunk=CHUNK, read_budget=CHUNK)
    fs.attach(nursery)
    blob = os.urandom(5 * CHUNK)
    await backend.write_bytes("a", blob, {})
    await backend.write_bytes("b", blob[::-1], {})
    fa, _ = await fs.open(await resolve(fs, "a"), os.O_RDONLY)
    fb, _ = await fs.open(await resolve(fs, "b"), os.O_RDONLY)
    assert await fs.read(fa, 0, 1000) == blob[:1000]  # takes the whole budget
    assert await fs.read(fb, 100, 1000) == blob[::-1][100:1100]  # served outside it
    assert fs.read_budget.used == CHUNK
    await fs.release(fa)
    await fs.release(fb)
    assert fs.read_budget.used == 0
    fs.close()
