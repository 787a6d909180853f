"""Every in-place change on both sides of every size where the data path changes, through a
real mount with the shipped defaults, compared with a model byte for byte: on the mount, on
the store after the close, and after a cold remount (issue #21).

The sizes come from storagefs/sizes.py, so a threshold added or moved there moves this test.
Each case is its own file, put on the store by the store's SDK (another tool) before the
mount; a second round changes the files the first round wrote through the mount.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storagefs import sizes
from tests.mount.harness import AZURE, LOCAL, S3, MountFactory
from tests.mount.stores import Store

pytestmark = pytest.mark.mount

# keep_open_max governs only an unlinked file still open for reading, not a change in place.
IN_PLACE = {k: v for k, v in sizes.boundaries().items() if k != "keep_open_max"}
SIZES = sorted({v + d for v in IN_PLACE.values() for d in (-1, 1)})
OPS = ("patch", "tail", "shrink", "grow", "holes", "append")
TMPFS_BYTES = 3 * 1024**3  # the cache (staging files included) of both mounts: a bound


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs for the mount's cache, so that a bug cannot fill the disk."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=700", "sfs-test", str(where)],
        check=True,
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def change(path: Path, op: str, size: int, rnd: random.Random, model: bytearray) -> None:
    """Apply ``op`` to the file at ``path`` (of ``size`` bytes) and to ``model`` alike."""

    def pwrite(fd: int, data: bytes, at: int) -> None:
        assert os.pwrite(fd, data, at) == len(data)
        if at > len(model):
            model.extend(bytes(at - len(model)))
        model[at : at + len(data)] = data

    # The nearest threshold at or below the size: a patch there crosses it.
    edge = max([v for v in IN_PLACE.values() if v <= size] or [size // 2])
    if op == "shrink":
        os.truncate(path, size // 2)
        del model[size // 2 :]
        return
    if op == "grow":
        new = size + sizes.MIB + 1
        os.truncate(path, new)
        model.extend(bytes(new - len(model)))
        return
    if op == "append":
        data = rnd.randbytes(3000)
        with open(path, "ab") as f:
            f.write(data)
        model.extend(data)
        return
    fd = os.open(path, os.O_RDWR)  # dd conv=notrunc, a database, a multi-block writer
    try:
        if op == "patch":
            pwrite(fd, rnd.randbytes(5000), max(edge - 2500, 0))
        elif op == "tail":
            pwrite(fd, rnd.randbytes(20), max(size - 10, 0))
        elif op == "holes":
            for at in (0, size // 3, size + 100_000):
                pwrite(fd, rnd.randbytes(4096), at)
    finally:
        os.close(fd)


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def check_all(where: str, models: dict[str, bytearray], read: Callable[[str], bytes]) -> None:
    wrong = []
    for name, model in models.items():
        got = read(name)
        if len(got) != len(model) or digest(got) != digest(model):
            first = next(
                (i for i, (a, b) in enumerate(zip(got, model, strict=False)) if a != b), None
            )
            wrong.append(f"{name}: {len(got)} bytes, model {len(model)}, first difference {first}")
    assert not wrong, f"{where}: {len(wrong)} of {len(models)} files differ:\n" + "\n".join(wrong)


def reader(root: Path) -> Callable[[str], bytes]:
    return lambda name: (root / name).read_bytes()


@pytest.mark.parametrize("store", [LOCAL, S3, AZURE], indirect=True)
def test_changes_in_place_on_both_sides_of_every_threshold(
    store: Store, mount: MountFactory, tmpfs: Path
) -> None:
    rnd = random.Random(21)
    models: dict[str, bytearray] = {}
    for size in SIZES:
        original = rnd.randbytes(size)
        for op in OPS:
            models[f"{op}-{size}"] = bytearray(original)
    store.put_many((name, bytes(model)) for name, model in models.items())

    for round_ in (1, 2):  # 1: objects another tool wrote; 2: files this mount wrote
        m = mount(store, cache_dir=tmpfs / f"cache-{round_}")  # cold: nothing cached
        for name, model in models.items():
            op, size = name.split("-")[0], len(model)
            change(m.path / name, op, size, rnd, model)
        check_all(f"round {round_}, the mount", models, reader(m.path))
        check_all(f"round {round_}, the store", models, store.get)
        m.unmount()
    cold = mount(store, cache_dir=tmpfs / "cache-3")
    check_all("after a cold remount", models, reader(cold.path))


@pytest.mark.parametrize("store", [S3, AZURE, LOCAL], indirect=True)
def test_a_sqlite_database_larger_than_every_threshold(
    store: Store, mount: MountFactory, tmpfs: Path
) -> None:
    """The application the issue met: a database above every threshold of a change in place,
    filled, remounted cold, updated, remounted cold: intact, and every update there."""
    rows = 12_000
    pad = (max(IN_PLACE.values()) * 5 // 4) // rows  # the file ends above every threshold
    m = mount(store, cache_dir=tmpfs / "cache-1")
    db = sqlite3.connect(m.path / "app.db")
    db.execute("create table t (id integer primary key, n integer, pad blob)")
    db.executemany("insert into t values (?, 0, ?)", ((i, os.urandom(pad)) for i in range(rows)))
    db.commit()
    db.close()
    size = (m.path / "app.db").stat().st_size
    assert size > max(IN_PLACE.values()), size
    m.unmount()

    m = mount(store, cache_dir=tmpfs / "cache-2")
    db = sqlite3.connect(m.path / "app.db")
    assert db.execute("pragma integrity_check").fetchone() == ("ok",)
    db.execute("update t set n = id + 1")
    db.commit()
    db.close()
    m.unmount()

    m = mount(store, cache_dir=tmpfs / "cache-3")
    db = sqlite3.connect(m.path / "app.db")
    try:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        updated = db.execute("select count(*) from t where n = id + 1").fetchone()[0]
        assert updated == rows, f"{updated} of {rows} updated rows survived the remount"
    finally:
        db.close()


@pytest.mark.parametrize("store", [S3], indirect=True)
def test_a_file_unlinked_while_open_for_reading_on_both_sides_of_keep_open_max(
    store: Store, mount: MountFactory, tmpfs: Path
) -> None:
    """Up to keep_open_max the mount keeps a copy (read whole, as on ext4); above it a read
    may answer ENOENT (docs/SEMANTICS.md), but never other bytes than the file's."""
    limit = sizes.boundaries()["keep_open_max"]
    rnd = random.Random(64)
    contents = {f"f{size}": rnd.randbytes(size) for size in (limit - 1, limit + 1)}
    store.put_many(contents.items())
    m = mount(store, cache_dir=tmpfs / "cache")
    for name, data in contents.items():
        with open(m.path / name, "rb") as f:
            head = f.read(4096)
            os.unlink(m.path / name)
            try:
                got = head + f.read()
            except OSError as exc:
                assert len(data) > limit, f"{name}: {exc} below the limit"
                assert exc.errno == errno.ENOENT, exc
                continue
        assert digest(got) == digest(data), f"{name}: other bytes read after the unlink"
        assert not (m.path / name).exists()
