"""Many processes at once, and a directory with many entries."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.mount.harness import LOCAL, S3, MountFactory, ok
from tests.mount.stores import Store

pytestmark = pytest.mark.mount

JOBS = 8
BIG_DIR_ENTRIES = 10_000


def test_parallel_readers_and_writers(store: Store, mount: MountFactory, tmp_path: Path) -> None:
    rnd = random.Random(11)
    src = tmp_path / "src"
    src.mkdir()
    sizes = [rnd.randrange(100_000, 3_000_000) for _ in range(2 * JOBS)]
    for i, size in enumerate(sizes):
        (src / f"f{i}").write_bytes(rnd.randbytes(size))
    m = mount(store)
    # The first half is in the mount before the jobs start: readers copy those out while
    # writers copy the second half in, all at the same time.
    for i in range(JOBS):
        store.put(f"r{i}", (src / f"f{i}").read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    jobs = []
    for i in range(JOBS):
        jobs.append(f"cp {m.path}/r{i} {out}/r{i} &")
        w = i + JOBS
        jobs.append(f"dd if={src}/f{w} of={m.path}/w{w} bs=64k status=none &")
    script = "\n".join([*jobs, "for job in $(jobs -p); do wait $job || exit 1; done"])
    ok(script, timeout=120)
    for i in range(JOBS):
        assert (out / f"r{i}").read_bytes() == (src / f"f{i}").read_bytes(), f"r{i}"
        w = i + JOBS
        assert store.get(f"w{w}") == (src / f"f{w}").read_bytes(), f"w{w}"
        assert (m.path / f"w{w}").read_bytes() == (src / f"f{w}").read_bytes(), f"w{w}"


@pytest.mark.parametrize("store", [LOCAL, S3], indirect=True)
def test_big_directory_lists_completely(store: Store, mount: MountFactory) -> None:
    # Seeded directly in the store: through the mount this would take minutes.
    store.put_many((f"big/e{i:05d}", b"") for i in range(BIG_DIR_ENTRIES))
    store.put("big/last", b"x")
    m = mount(store)
    assert m.ok("ls big | wc -l") == f"{BIG_DIR_ENTRIES + 1}\n"
    # ls -l needs every entry's attributes too; the second listing comes from the caches.
    lines = m.ok("ls -l big").splitlines()
    assert len(lines) == BIG_DIR_ENTRIES + 2  # plus "total"
    sizes = [line.split()[4] for line in lines[1:]]
    assert sizes.count("0") == BIG_DIR_ENTRIES
    assert lines[-1].endswith(" last") and sizes[-1] == "1"
    names = {line.split()[-1] for line in lines[1:]}
    assert len(names) == BIG_DIR_ENTRIES + 1
    assert {"e00000", "e09999", "last"} <= names
