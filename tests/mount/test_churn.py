"""Many processes unlinking and recreating the same few names at once (issue #21).

On ext4 this program gets no error at all: an unlink that finds the name gone is ENOENT, and
nothing else fails. Every other call must succeed on the mount too (over a local directory
and S3), whatever the daemon's FUSE requests interleave to: a close whose upload races an
unlink of the name, an open of an inode the kernel found by name just before another process
unlinked it, a create of a name whose former file is still open and uploading.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mount.harness import LOCAL, S3, MountFactory
from tests.mount.stores import Store

pytestmark = pytest.mark.mount

PROCESSES = 10
NAMES = [f"name-{i}" for i in range(5)]
# The program: 40 rounds over the 5 names in each of the 10 processes. Creates and
# unlinks in one directory are serialized by the kernel, so an emulated store (~10 ms a
# request) gets fewer, to stay well within the time bound. Azure is left out: Azurite now and
# then answers one of the thousands of block uploads 403 AuthorizationFailure (EACCES from
# that close), with or without the churn's races.
ROUNDS = {"local": 40, "s3": 15}
CHURN_TIMEOUT = 30.0  # seconds for the whole churn of one backend

# One process of the churn: prints {"errors": {...}, "unlinked": n} as one JSON line.
WORKER = r"""
import errno, json, os, sys

directory, worker, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
names = sys.argv[4:]
errors = {}
def count(call, exc):
    key = f"{call} {errno.errorcode.get(exc.errno, exc.errno)}"
    errors[key] = errors.get(key, 0) + 1
for round_ in range(rounds):
    for name in names:
        path = os.path.join(directory, name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # another process unlinked it first: ext4 says so too
        except OSError as exc:
            count("unlink", exc)
        try:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        except OSError as exc:
            count("open", exc)
            continue
        try:
            os.write(fd, f"{worker} {round_} {name}\n".encode())
        except OSError as exc:
            count("write", exc)
        try:
            os.close(fd)
        except OSError as exc:
            count("close", exc)
print(json.dumps({"errors": errors}))
"""


def written(name: str, rounds: int) -> set[bytes]:
    return {f"{w} {r} {name}\n".encode() for w in range(PROCESSES) for r in range(rounds)}


@pytest.mark.parametrize("store", [LOCAL, S3], indirect=True)
def test_concurrent_unlink_and_recreate_of_the_same_names_never_fails(
    store: Store, mount: MountFactory, tmp_path: Path
) -> None:
    m = mount(store)
    rounds = ROUNDS[store.kind]
    script = tmp_path / "churn.py"
    script.write_text(WORKER)
    started = time.monotonic()
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), str(m.path), str(w), str(rounds), *NAMES],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(PROCESSES)
    ]
    errors: dict[str, int] = {}
    try:
        for proc in workers:
            left = max(1.0, CHURN_TIMEOUT - (time.monotonic() - started))
            out, err = proc.communicate(timeout=left)
            assert proc.returncode == 0, err
            for call, n in json.loads(out)["errors"].items():
                errors[call] = errors.get(call, 0) + n
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert errors == {}, f"calls that failed (ext4: none): {errors}"

    # Every name holds what one of the closes wrote, and the store holds the same after the
    # unmount (the last close wins; nothing of an unlinked file reaches the store).
    seen = {name: (m.path / name).read_bytes() for name in NAMES}
    for name, data in seen.items():
        assert data in written(name, rounds), (name, data)
    assert sorted(p.name for p in m.path.iterdir()) == NAMES
    m.unmount()
    assert store.list_keys() == NAMES
    assert {name: store.get(name) for name in NAMES} == seen
