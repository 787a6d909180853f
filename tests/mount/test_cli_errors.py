"""Errors that say what is wrong, with real mounts: a busy unmount names who holds it, a mount
option FUSE rejects shows FUSE's reason, `storagefs health` with several mounts is a usage
error (64), not "down" (2)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.mount.harness import LOCAL, MountFactory, is_mounted
from tests.mount.stores import Store
from tests.test_cli_errors import one_line, storagefs

pytestmark = pytest.mark.mount


@pytest.mark.parametrize("store", [LOCAL], indirect=True)
def test_busy_unmount_says_who_holds_it(store: Store, mount: MountFactory) -> None:
    m = mount(store)
    m.ok("mkdir -p work")
    holder = subprocess.Popen(["sleep", "120"], cwd=m.path / "work")
    try:
        result = storagefs("unmount", str(m.path), "--no-wait")
        line = one_line(result, code=1)
        assert f"{m.path} is busy" in line
        assert f"pid {holder.pid} (sleep): cwd" in line
        assert is_mounted(m.path)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("store", [LOCAL], indirect=True)
def test_a_rejected_fuse_option_shows_fuses_reason(store: Store, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = {"STORAGEFS_PRIMARY": store.url, "STORAGEFS_CACHE_DIR": str(tmp_path / "cache")}
    # storagefs knows the options libfuse takes, so a typo is caught before FUSE sees it...
    line = one_line(storagefs("mount", str(mp), "-o", "nosuchoption", env=env))
    assert "unknown mount option 'nosuchoption'" in line
    assert not is_mounted(mp)


def test_fuses_own_reason_is_relayed_from_this_runs_log(tmp_path: Path) -> None:
    # ... and what libfuse itself refuses (e.g. allow_other for a user without
    # user_allow_other in /etc/fuse.conf) reaches the console with libfuse's own words, read
    # from the background daemon's log, this run's part only.
    from storagefs.cli.main import _last_error

    log = tmp_path / "daemon.log"
    log.write_text("fuse: an earlier run's complaint\nstoragefs: error: earlier\n")
    start = log.stat().st_size
    with open(log, "a") as f:
        f.write("INFO starting\n")
        f.write("fuse: option allow_other only allowed if 'user_allow_other' is set\n")
        f.write("storagefs: error: cannot mount on /mnt: FUSE refused the mount options\n")
    assert _last_error(log, start) == (
        "cannot mount on /mnt: FUSE refused the mount options"
        " (fuse: option allow_other only allowed if 'user_allow_other' is set)"
    )
    assert _last_error(log, log.stat().st_size) is None


@pytest.mark.parametrize("store", [LOCAL], indirect=True)
def test_health_with_several_mounts_and_no_argument(
    store: Store, mount: MountFactory, tmp_path: Path
) -> None:
    mount(store, mountpoint=tmp_path / "one", cache_dir=tmp_path / "c1")
    mount(store, mountpoint=tmp_path / "two", cache_dir=tmp_path / "c2")
    line = one_line(storagefs("health"), code=64)
    assert "several storagefs mounts" in line
