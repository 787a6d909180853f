"""What the journal costs on small writes: N x SIZE writes through the chain against in-memory
remotes, in each write mode, next to the same writes straight to a MemoryBackend.

    .venv/bin/python scripts/bench_journal.py [--count 1000] [--size 4096] [--dir /tmp/x]

A benchmark, not a test: it prints figures (ops/s and fsyncs per op) and asserts nothing.
Run it on the disk the cache directory will live on: the journal's cost is its fsyncs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storagefs.chain.cache import Cache
from storagefs.chain.fallback import FallbackChain
from storagefs.chain.options import ChainOptions
from storagefs.config import Settings
from storagefs.journal.store import Journal
from tests.fakes import MemoryBackend

META = {"mode": "33188", "uid": "1000", "gid": "1000", "mtime": "1700000000"}


class FsyncCounter:
    def __init__(self) -> None:
        self.count = 0
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        self.count += 1
        self._real(fd)


async def chain_run(directory: Path, count: int, size: int, mode: str, inline_max: int) -> float:
    remotes = [MemoryBackend("primary"), MemoryBackend("secondary")]
    settings = Settings(cache_dir=directory, write_mode=mode, cache_max_bytes=0)  # type: ignore[arg-type]
    journal = Journal(
        directory / "journal", ["primary", "secondary"], 10**10, inline_max=inline_max
    )
    chain = FallbackChain(
        remotes, journal, Cache(directory / "cache", 0), ChainOptions.from_settings(settings)
    )
    await chain.open()
    data = os.urandom(size)
    staging = directory / "staging"
    staging.write_bytes(data)
    async with trio.open_nursery() as nursery:
        await nursery.start(chain.run)
        start = time.perf_counter()
        for i in range(count):
            await chain.write(f"bench/{i}", str(staging), META)
        assert await chain.flush(60)
        elapsed = time.perf_counter() - start
        chain.stop()
    await chain.close()
    assert len(remotes[1].objects) == count
    return elapsed


async def direct_run(count: int, size: int) -> float:
    backend = MemoryBackend("direct")
    data = os.urandom(size)
    start = time.perf_counter()
    for i in range(count):
        await backend.write_bytes(f"bench/{i}", data, META)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--dir", type=Path, default=None, help="where the journal goes")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="bench-journal-"))
    print(f"{args.count} writes of {args.size} bytes, journal under {base}")
    elapsed = trio.run(direct_run, args.count, args.size)
    print(f"  {'MemoryBackend directly':40s} {args.count / elapsed:9.0f} ops/s")
    runs = [
        ("through, inline content", "through", 64 * 1024),
        ("back, inline content", "back", 64 * 1024),
        ("through, content files", "through", 0),
        ("back, content files", "back", 0),
    ]
    for n, (label, mode, inline_max) in enumerate(runs):
        counter = FsyncCounter()
        # Counts only the journal's explicit fsyncs; SQLite's own happen in C and are not seen.
        with mock.patch("storagefs.journal.store.os.fsync", counter):
            elapsed = trio.run(chain_run, base / str(n), args.count, args.size, mode, inline_max)
        print(
            f"  {'chain, ' + label:40s} {args.count / elapsed:9.0f} ops/s"
            f"  ({counter.count / args.count:.1f} file fsyncs/op + SQLite commits)"
        )


if __name__ == "__main__":
    main()
