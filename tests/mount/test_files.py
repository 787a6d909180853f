"""Changing files in place with shell tools, and the errors those tools print."""

from __future__ import annotations

import hashlib
import mmap
import os
import random
from pathlib import Path

import pytest

from tests.mount.harness import LOCAL, MountFactory, ok
from tests.mount.stores import Store

pytestmark = pytest.mark.mount

MIB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_append_truncate_random_write_overwrite(
    store: Store, mount: MountFactory, tmp_path: Path
) -> None:
    m = mount(store)
    m.ok("echo one > log && echo two >> log && echo three >> log")
    assert m.ok("cat log") == "one\ntwo\nthree\n"

    # A model of the file in memory, changed alongside the one in the mount.
    rnd = random.Random(7)
    model = bytearray(rnd.randbytes(2 * MIB + 100))
    (tmp_path / "orig").write_bytes(model)
    ok(f"cp {tmp_path}/orig {m.path}/f")

    m.ok("truncate -s 1500000 f")
    del model[1_500_000:]
    assert m.ok("stat -c %s f") == "1500000\n"
    m.ok("truncate -s 3000000 f")  # grows with zeros
    model.extend(bytes(3_000_000 - len(model)))

    patch = rnd.randbytes(70_000)
    (tmp_path / "patch").write_bytes(patch)
    ok(f"dd if={tmp_path}/patch of={m.path}/f bs=10000 seek=100 conv=notrunc status=none")
    model[1_000_000:1_070_000] = patch
    assert (m.path / "f").stat().st_size == len(model)
    assert sha((m.path / "f").read_bytes()) == sha(bytes(model))
    assert sha(store.get("f")) == sha(bytes(model))

    # Overwrite (O_TRUNC) with something shorter: no tail of the old content may survive.
    m.ok("printf short > f")
    assert m.ok("cat f") == "short"
    assert store.get("f") == b"short"


def test_rename_over_existing_file(store: Store, mount: MountFactory) -> None:
    m = mount(store)
    m.ok("echo new > a && echo old-and-longer > b && mv a b")
    assert m.ok("cat b") == "new\n"
    assert m.sh("cat a").returncode != 0
    assert m.ok("ls") == "b\n"
    assert store.get("b") == b"new\n"
    assert "a" not in store.list_keys()


# (command, what it must print on stderr); each fails and changes nothing.
SHELL_ERRORS = [
    ("cat missing", "cat: missing: No such file or directory"),
    ("cat nope/x", "cat: nope/x: No such file or directory"),
    ("mkdir d", "mkdir: cannot create directory 'd': File exists"),
    ("mkdir f", "mkdir: cannot create directory 'f': File exists"),
    ("cat f/x", "cat: f/x: Not a directory"),
    ("mkdir f/x", "mkdir: cannot create directory 'f/x': Not a directory"),
    ("cat d", "cat: d: Is a directory"),
    ("rmdir d", "rmdir: failed to remove 'd': Directory not empty"),
    ("rmdir f", "rmdir: failed to remove 'f': Not a directory"),
    ("rm d", "rm: cannot remove 'd': Is a directory"),
    ("mv d d/e/inside", "mv: cannot move 'd' to a subdirectory of itself"),
    ("mv -T f d/e", "mv: cannot overwrite directory 'd/e' with non-directory"),
    ("touch " + "n" * 256, "File name too long"),
    ("mkdir " + "n" * 300, "File name too long"),
    ("ln f d/e/y", "ln: failed to create hard link 'd/e/y': File exists"),
    ("ln d hard", "ln: d: hard link not allowed for directory"),
]


def test_shell_errors(store: Store, mount: MountFactory) -> None:
    m = mount(store)
    m.ok("mkdir -p d/e && echo x > d/e/y && echo f > f")
    tree = ".\n./d\n./d/e\n./d/e/y\n./f\n"
    assert m.ok("find . | sort") == tree
    wrong = []
    for script, message in SHELL_ERRORS:
        result = m.sh(script)
        if result.returncode == 0 or message not in result.stderr:
            wrong.append(f"{script[:40]}: exit {result.returncode}, {result.stderr.strip()!r}")
    assert not wrong, "\n".join(wrong)
    assert m.ok("find . | sort") == tree  # the failed calls changed nothing
    assert m.ok("cat f d/e/y") == "f\nx\n"


@pytest.mark.parametrize("store", [LOCAL], indirect=True)
def test_a_write_only_writer_and_a_cached_reader_agree(store: Store, mount: MountFactory) -> None:
    """Write-only handles bypass the kernel's page cache (cp's 256 MiB cost a copy and as much
    fresh memory): a reader holding cached pages and a mapping must still see every write."""
    m = mount(store)
    path = m.path / "f"
    path.write_bytes(b"a" * 8192)
    reader = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(reader, 8192, 0) == b"a" * 8192  # now in the page cache
        with mmap.mmap(reader, 8192, prot=mmap.PROT_READ) as mapped:
            writer = os.open(path, os.O_WRONLY)
            os.pwrite(writer, b"b" * 5, 4096)
            assert os.pread(reader, 10, 4094) == b"aabbbbbaaa"
            assert mapped[4094:4104] == b"aabbbbbaaa"
            os.close(writer)
            appender = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.write(appender, b"zz")
            os.close(appender)
            assert os.fstat(reader).st_size == 8194
            assert os.pread(reader, 4, 8190) == b"aazz"
    finally:
        os.close(reader)
    assert store.get("f") == b"a" * 4096 + b"b" * 5 + b"a" * 4091 + b"zz"
