"""Copy a tree in with cp -r, compare with diff -r, move and remove it; everything (content,
mode, mtime) survives an unmount and a fresh mount on the same cache directory."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.mount.harness import MountFactory, ok
from tests.mount.stores import Store

pytestmark = pytest.mark.mount

BIG_SIZE = 3 * 1024 * 1024 + 12345  # a few MiB, not a multiple of any chunk size
OLD_MTIME = 1_262_347_200  # 2010-01-01 12:00:00 UTC


def make_tree(root: Path, seed: int) -> int:
    """A few hundred small files in nested directories, one empty directory, one big file."""
    rnd = random.Random(seed)
    count = 0
    for a in range(3):
        for b in range(4):
            d = root / f"dir{a}" / f"sub{b}"
            d.mkdir(parents=True)
            for i in range(20):
                (d / f"file{i}.txt").write_bytes(rnd.randbytes(rnd.randrange(0, 3000)))
                count += 1
    (root / "dir0" / "empty").mkdir()
    (root / "top.txt").write_text("top\n")
    (root / "big.bin").write_bytes(rnd.randbytes(BIG_SIZE))
    return count + 2


def test_tree_copy_move_remove_remount(store: Store, mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src, seed=1)
    m = mount(store)
    ok(f"cp -r {src} {m.path}/tree")
    ok(f"diff -r {src} {m.path}/tree")

    listing = m.ok("ls -l tree")
    sizes = {line.split()[-1]: int(line.split()[4]) for line in listing.splitlines()[1:]}
    assert sizes["big.bin"] == BIG_SIZE
    assert sizes["top.txt"] == 4

    # Attributes that must survive: chmod, touch -d, and cp -p (mode and mtime of the source).
    (src / "top.txt").chmod(0o640)
    os.utime(src / "top.txt", (OLD_MTIME, OLD_MTIME))
    ok(f"cp -p {src}/top.txt {m.path}/tree/preserved.txt")
    m.ok("chmod 600 tree/dir1/sub1/file3.txt && chmod 700 tree/dir2")
    m.ok("touch -d @1300000000 tree/dir1/sub1/file4.txt")
    attrs_before = m.ok(
        "stat -c '%n %a %Y %s' tree/preserved.txt tree/dir1/sub1/file3.txt"
        " tree/dir1/sub1/file4.txt tree/dir2"
    )
    assert attrs_before.split("\n")[0] == f"tree/preserved.txt 640 {OLD_MTIME} 4"

    m.ok("mv tree/dir1 tree/moved")
    assert not (m.path / "tree" / "dir1").exists()
    ok(f"diff -r {src}/dir1 {m.path}/tree/moved")
    m.ok("rm -r tree/dir2/sub0")
    assert sorted(p.name for p in (m.path / "tree" / "dir2").iterdir()) == ["sub1", "sub2", "sub3"]
    m.unmount()

    m2 = mount(store)
    expected = tmp_path / "expected"
    ok(
        f"cp -rp {src} {expected} && mv {expected}/dir1 {expected}/moved"
        f" && rm -r {expected}/dir2/sub0 && cp -p {src}/top.txt {expected}/preserved.txt"
        # mv kept the chmod/touch made through the mount before the move
        f" && chmod 600 {expected}/moved/sub1/file3.txt && chmod 700 {expected}/dir2"
        f" && touch -d @1300000000 {expected}/moved/sub1/file4.txt"
    )
    ok(f"diff -r {expected} {m2.path}/tree")
    attrs_after = m2.ok(
        "stat -c '%n %a %Y %s' tree/preserved.txt tree/moved/sub1/file3.txt"
        " tree/moved/sub1/file4.txt tree/dir2"
    )
    assert attrs_after.replace("tree/moved/", "tree/dir1/") == attrs_before


def test_listing_shows_stored_attributes_with_a_cold_cache(
    store: Store, mount: MountFactory, tmp_path: Path
) -> None:
    """Mode and mtime live in the objects' metadata: `ls -l` on another machine (a fresh cache
    directory) must show them, not defaults."""
    m = mount(store, cache_dir=tmp_path / "cache1")
    m.ok("mkdir d && echo data > d/f && chmod 600 d/f && touch -d @1300000000 d/f")
    assert m.ok("stat -c '%a %Y' d/f") == "600 1300000000\n"
    m.unmount()

    m2 = mount(store, cache_dir=tmp_path / "cache2")
    line = m2.ok("ls -l --time-style=+%s d").splitlines()[1].split()
    assert (line[0], line[5]) == ("-rw-------", "1300000000")
    assert m2.ok("stat -c '%a %Y' d/f") == "600 1300000000\n"
