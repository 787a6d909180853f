"""The bucket holds plain objects under the expected keys, and changes made directly in the
bucket show in the mount once the metadata TTL has passed."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mount.harness import Mount, MountFactory, ok
from tests.mount.stores import LocalStore, Store

pytestmark = pytest.mark.mount

TTL = 0.5
# Generous: the promise is "after the TTL", the slack absorbs a slow CI machine.
VISIBLE_WITHIN = TTL + 5.0


def test_objects_are_plain_under_expected_keys(
    store: Store, mount: MountFactory, tmp_path: Path
) -> None:
    rnd = random.Random(3)
    files = {
        "top.txt": b"top\n",
        "a/b/c.bin": rnd.randbytes(200_000),
        "a/b/empty.txt": b"",
        "a/d e/sp ace.txt": b"spaces\n",
        "a/ünï.txt": "ünïcode\n".encode(),
    }
    src = tmp_path / "src"
    for key, data in files.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    (src / "a" / "empty-dir").mkdir()
    m = mount(store)
    ok(f"cp -r {src}/. {m.path}/")
    ok(f"diff -r {src} {m.path}")

    stored = [k for k in store.list_keys() if not k.endswith("/")]
    assert stored == sorted(files)
    for key, data in files.items():
        assert store.get(key) == data, key
    if isinstance(store, LocalStore):
        assert (store.root / "a" / "empty-dir").is_dir()
    else:
        assert "a/empty-dir/" in store.list_keys()


def wait_for(mount: Mount, script: str, want: Callable[[str], bool]) -> float:
    """Run ``script`` in the mount until its stdout satisfies ``want``; seconds it took."""
    start = time.monotonic()
    while True:
        out = mount.sh(script).stdout
        if want(out):
            return time.monotonic() - start
        if time.monotonic() - start > VISIBLE_WITHIN:
            pytest.fail(f"`{script}` still prints {out!r} after {VISIBLE_WITHIN} s")
        time.sleep(0.1)


def test_changes_in_the_bucket_show_after_the_ttl(store: Store, mount: MountFactory) -> None:
    store.put("old.txt", b"old\n")
    m = mount(store, env={"STORAGEFS_METADATA_TTL": str(TTL)})
    assert m.ok("ls") == "old.txt\n"
    assert m.ok("cat old.txt") == "old\n"
    # Looked up while missing: the kernel may remember that (a negative entry), but only as
    # long as the listing that said so is trusted.
    assert "No such file or directory" in m.sh("cat new.txt").stderr

    store.put("new.txt", b"new\n")
    store.put("sub/deep.txt", b"deep\n")
    wait_for(m, "ls", lambda out: out == "new.txt\nold.txt\nsub\n")
    assert m.ok("cat new.txt sub/deep.txt") == "new\ndeep\n"

    # Overwritten with a longer body: size and content both change.
    store.put("old.txt", b"replaced, and longer\n")
    wait_for(m, "cat old.txt", lambda out: out == "replaced, and longer\n")
    assert m.ok("stat -c %s old.txt") == "21\n"

    store.delete("new.txt")
    wait_for(m, "ls", lambda out: out == "old.txt\nsub\n")
    assert "No such file or directory" in m.sh("cat new.txt").stderr


def test_read_only_mount(store: Store, mount: MountFactory) -> None:
    store.put("f.txt", b"content\n")
    store.put("d/g.txt", b"g\n")
    m = mount(store, options=("ro",))
    assert m.ok("cat f.txt d/g.txt") == "content\ng\n"
    for script in [
        "touch new",
        "echo more >> f.txt",
        "echo over > f.txt",
        "truncate -s 0 f.txt",
        "rm f.txt",
        "mkdir e",
        "rmdir d",
        "mv f.txt g.txt",
        "chmod 600 f.txt",
        "touch -d @1300000000 f.txt",
    ]:
        result = m.sh(script)
        assert result.returncode != 0, script
        assert "Read-only file system" in result.stderr, (script, result.stderr)
    assert m.ok("find . | sort") == ".\n./d\n./d/g.txt\n./f.txt\n"
    assert store.get("f.txt") == b"content\n"
