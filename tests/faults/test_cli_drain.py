"""`storagefs flush` and the draining `storagefs unmount`, run as a user runs them, against a
real mount whose primary (S3) is cut off by its fault proxy.

What a user relies on: `flush` says, by its exit code, whether every acknowledged change has
reached every store; `unmount` waits for that, and when it gives up it still unmounts and the
journal hands the changes to the next mount on the same cache directory.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.faults.conftest import Rig
from tests.faults.helpers import (
    MARKS,
    health,
    make_tree,
    missing_or_wrong,
    store_sums,
)
from tests.mount.harness import Mount, MountFactory, clean_env, is_mounted, ok

# Eight files: i % 50 == 7 makes the last one 100 KiB+, so one upload is not a single small PUT.
COUNT = 8
# Seconds a CLI run may take beyond its own --timeout: interpreter start-up and one health read.
CLI_SLACK = 30.0
# How long a waiting unmount is watched before S3 comes back (several of its 0.5 s polls).
WAITING_SECONDS = 2.0

F = TypeVar("F", bound=Callable[..., Any])


def storagefs(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m storagefs ARGS`` with none of the daemon's settings in its environment:
    flush and unmount must work from the mountpoint alone."""
    return subprocess.run(
        [sys.executable, "-m", "storagefs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env({}),
        stdin=subprocess.DEVNULL,
    )


def shown(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def write_during_outage(rig: Rig, m: Mount, src: Path, name: str, seed: int) -> dict[str, str]:
    """Cut S3 off, copy the tree at ``src`` into the mount as ``name`` (acknowledged on the
    journal) and prove S3 has none of it and the journal holds it for S3."""
    expected = make_tree(src, COUNT, seed)
    rig.s3_proxy.set_mode("refuse")
    ok(f"cp -r {src} {m.path / name}")
    assert store_sums(rig.s3, name) == {}, "files reached S3 through a refusing proxy"
    journal = health(m.path).journal
    assert journal["backends"]["s3"]["pending_ops"] >= COUNT, journal
    return expected


def assert_both_stores_hold(rig: Rig, expected: dict[str, str], name: str) -> None:
    for label, store in (("s3", rig.s3), ("azure", rig.azure)):
        found = store_sums(store, name)
        assert missing_or_wrong(expected, found) == [], f"{label}: {sorted(found)}"
        assert set(found) == set(expected), f"{label} holds extra files: {sorted(found)}"


def mounted(test: F) -> F:
    """The fault scenarios' marks (mount, s3, azure, timeout) on one test; the module also
    holds a test that needs no mount."""
    for mark in MARKS:
        test = mark(test)
    return test


@mounted
def test_flush_waits_for_the_primary(rig: Rig, chain_mount: MountFactory, tmp_path: Path) -> None:
    m = chain_mount()
    expected = write_during_outage(rig, m, tmp_path / "src", "tree", seed=11)

    timed_out = storagefs("flush", str(m.path), "--timeout", "1", timeout=1 + CLI_SLACK)
    assert timed_out.returncode == 1, shown(timed_out)
    assert "pending" in timed_out.stderr, shown(timed_out)
    assert store_sums(rig.s3, "tree") == {}, "S3 got files while its proxy refused"

    rig.s3_proxy.set_mode("pass")
    drained = storagefs("flush", str(m.path), "--timeout", "60", timeout=60 + CLI_SLACK)
    assert drained.returncode == 0, shown(drained)
    assert "drained" in drained.stdout, shown(drained)
    # flush said 0: nothing may be left, not even in flight.
    assert health(m.path).journal["pending_entries"] == 0
    assert_both_stores_hold(rig, expected, "tree")


@mounted
def test_unmount_gives_up_and_the_next_mount_drains(
    rig: Rig, chain_mount: MountFactory, mount: MountFactory, tmp_path: Path
) -> None:
    # chain_mount only for its FUSE checks and for healing the proxies before teardown;
    # `mount` itself, because chain_mount does not take a cache directory.
    # Both mounts name the cache directory: the journal left by the first is the point.
    cache = tmp_path / "cache"
    m = mount(rig.chain, env=rig.chain.env, cache_dir=cache)
    expected = write_during_outage(rig, m, tmp_path / "src", "tree", seed=12)

    gave_up = storagefs("unmount", str(m.path), "--timeout", "1", timeout=1 + CLI_SLACK)
    assert gave_up.returncode == 0, shown(gave_up)
    assert "pending" in gave_up.stderr and "journal" in gave_up.stderr, shown(gave_up)
    assert not is_mounted(m.path), shown(gave_up)
    m.wait_exit()  # the daemon exits 0 with nothing unexpected logged; the fixture is done
    assert store_sums(rig.s3, "tree") == {}, "S3 got files while its proxy refused"

    # S3 stays refused for the remount, so the default unmount has something to wait for:
    # it must still be waiting (and the mount still there) until S3 answers again.
    again = mount(rig.chain, env=rig.chain.env, cache_dir=cache)
    assert "recovered" in again.log(), again.log()
    unmounting = subprocess.Popen(
        [sys.executable, "-m", "storagefs", "unmount", str(again.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env({}),
        stdin=subprocess.DEVNULL,
    )
    try:
        time.sleep(WAITING_SECONDS)
        assert unmounting.poll() is None, "unmount did not wait for the journal to drain"
        assert is_mounted(again.path)
        rig.s3_proxy.set_mode("pass")
        out, err = unmounting.communicate(timeout=60 + CLI_SLACK)
    finally:
        if unmounting.poll() is None:
            unmounting.kill()
            unmounting.wait()
    done = subprocess.CompletedProcess(unmounting.args, unmounting.returncode, out, err)
    assert done.returncode == 0, shown(done)
    assert "waiting for the backends" in done.stdout, shown(done)
    assert "pending" not in done.stderr, shown(done)
    assert not is_mounted(again.path)
    again.wait_exit()
    assert_both_stores_hold(rig, expected, "tree")


@pytest.mark.parametrize("exists", [True, False], ids=["plain-dir", "missing"])
def test_flush_not_mounted(tmp_path: Path, exists: bool) -> None:
    path = tmp_path / "not-a-mount"
    if exists:
        path.mkdir()
    result = storagefs("flush", str(path), "--timeout", "5", timeout=CLI_SLACK)
    assert result.returncode == 2, shown(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("storagefs: error: "), shown(result)
    assert str(path) in lines[0], shown(result)
    assert result.stdout == "", shown(result)
