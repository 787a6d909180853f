"""Times are exact to the nanosecond through a real mount (issue #21): ``cp -p``, ``rsync -a``
and ``make`` compare them exactly, so a file the mount did not write must show the time its
store gives, not a float's rounding of it, also after a remount (metadata cache warm)."""

from __future__ import annotations

import calendar
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from tests.mount.harness import AZURE, LOCAL, S3, MountFactory, ok
from tests.mount.stores import AzureStore, LocalStore, S3Store, Store

pytestmark = pytest.mark.mount

# Odd nanoseconds: a float of seconds cannot hold them (its step is ~240 ns in 2023).
ATIME = 1_690_000_000_987_654_321
MTIME = 1_700_000_000_123_456_789


def sdk_ns(when: datetime) -> int:
    """An SDK's last-modified datetime in nanoseconds, by integer arithmetic only."""
    return calendar.timegm(when.utctimetuple()) * 10**9 + when.microsecond * 1000


def store_time_ns(store: Store, key: str) -> int:
    """The last-modified time the store itself reports for ``key`` (a HEAD)."""
    if isinstance(store, S3Store):
        head = store.client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")
        return sdk_ns(head["LastModified"])
    assert isinstance(store, AzureStore)
    blob = store.client.get_blob_client(f"{store.prefix}/{key}")
    return sdk_ns(blob.get_blob_properties().last_modified)


def listed_mtimes(root: Path) -> dict[str, int]:
    """st_mtime_ns of every file below ``root`` as a listing (readdir, then stat) shows it."""
    found: dict[str, int] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            found[str(path.relative_to(root))] = path.stat().st_mtime_ns
    return found


@pytest.mark.parametrize("store", [LOCAL], indirect=True)
def test_a_file_placed_in_the_backing_directory_shows_its_exact_mtime(
    store: Store, mount: MountFactory
) -> None:
    assert isinstance(store, LocalStore)
    store.put("placed.txt", b"from elsewhere\n")
    store.put("dir/deeper.txt", b"deeper\n")
    for key in ("placed.txt", "dir/deeper.txt"):
        os.utime(store.root / key, ns=(ATIME, MTIME))
    want = {"placed.txt": MTIME, "dir/deeper.txt": MTIME}
    m = mount(store)
    assert (m.path / "placed.txt").stat().st_mtime_ns == MTIME  # a lookup
    assert listed_mtimes(m.path) == want  # a listing
    m.unmount()
    again = mount(store)  # the same cache directory: the metadata cache answers
    assert listed_mtimes(again.path) == want
    assert (again.path / "placed.txt").stat().st_mtime_ns == MTIME


@pytest.mark.parametrize("store", [S3, AZURE], indirect=True)
def test_an_object_written_by_the_sdk_shows_the_stores_last_modified_exactly(
    store: Store, mount: MountFactory
) -> None:
    store.put("foreign.txt", b"no storagefs metadata\n")
    store.put("dir/deeper.txt", b"deeper\n")
    want = {key: store_time_ns(store, key) for key in ("foreign.txt", "dir/deeper.txt")}
    m = mount(store)
    assert (m.path / "foreign.txt").stat().st_mtime_ns == want["foreign.txt"]
    assert listed_mtimes(m.path) == want
    m.unmount()
    again = mount(store)
    assert listed_mtimes(again.path) == want
    assert (again.path / "dir/deeper.txt").stat().st_mtime_ns == want["dir/deeper.txt"]


def test_utime_and_touch_with_nanoseconds_are_exact_after_a_remount(
    store: Store, mount: MountFactory, tmp_path: Path
) -> None:
    """A regression test: the mount stored these exactly before #21 too (text metadata)."""
    m = mount(store)
    (m.path / "set.txt").write_bytes(b"utime\n")
    os.utime(m.path / "set.txt", ns=(ATIME, MTIME))
    (m.path / "d").mkdir()
    ok(f"touch -d '2023-11-14 22:13:20.000000007 UTC' {m.path}/d/touched.txt")
    touched = 1_700_000_000_000_000_007
    os.utime(m.path / "d", ns=(ATIME, MTIME + 2))

    def check(root: Path) -> None:
        st = (root / "set.txt").stat()
        assert (st.st_atime_ns, st.st_mtime_ns) == (ATIME, MTIME)
        assert (root / "d/touched.txt").stat().st_mtime_ns == touched
        assert (root / "d").stat().st_mtime_ns == MTIME + 2

    check(m.path)
    m.unmount()
    warm = mount(store)  # the same cache directory
    check(warm.path)
    warm.unmount()
    check(mount(store, cache_dir=tmp_path / "cold").path)  # cold: only the store's metadata


def make_timed_tree(root: Path) -> None:
    for i, rel in enumerate(["a.txt", "sub/b.txt", "sub/deeper/c.bin", "empty.txt"]):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (i * 1000))
        os.utime(path, ns=(ATIME + i, MTIME + 2 * i + 1))


def itemized(src: Path, dst: Path) -> list[str]:
    """What ``rsync -a`` would still do from ``src`` to ``dst`` (directories' times aside:
    rsync sets them after filling them, the mount's are covered above)."""
    out = ok(f"rsync -a --dry-run --itemize-changes --omit-dir-times {src}/ {dst}/")
    return [line for line in out.splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_cp_p_and_rsync_a_into_the_mount_and_back_keep_exact_times(
    store: Store, mount: MountFactory, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_timed_tree(src)
    want = listed_mtimes(src)
    m = mount(store)
    ok(f"cp -rp {src} {m.path}/cp")
    ok(f"rsync -a {src}/ {m.path}/rsync/")
    assert listed_mtimes(m.path / "cp") == listed_mtimes(m.path / "rsync") == want
    assert itemized(src, m.path / "rsync") == []  # a second run has nothing to do
    ok(f"cp -rp {m.path}/cp {tmp_path}/back-cp")
    ok(f"rsync -a {m.path}/rsync/ {tmp_path}/back-rsync/")
    assert listed_mtimes(tmp_path / "back-cp") == listed_mtimes(tmp_path / "back-rsync") == want
    assert itemized(src, tmp_path / "back-rsync") == []
    m.unmount()
    again = mount(store)
    assert itemized(src, again.path / "rsync") == []
    assert itemized(again.path / "cp", src) == []


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
@pytest.mark.parametrize("store", [LOCAL], indirect=True)
def test_rsync_out_of_the_mount_of_files_it_did_not_write_matches_the_backing_tree(
    store: Store, mount: MountFactory, tmp_path: Path
) -> None:
    assert isinstance(store, LocalStore)
    make_timed_tree(store.root / "placed")
    m = mount(store)
    ok(f"rsync -a {m.path}/placed/ {tmp_path}/copy/")
    assert itemized(store.root / "placed", tmp_path / "copy") == []
    ok(f"cp -rp {m.path}/placed {tmp_path}/cp-copy")
    assert listed_mtimes(tmp_path / "cp-copy") == listed_mtimes(store.root / "placed")
