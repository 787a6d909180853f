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
    line = one_line(storagefs("mount", str(mp), "-o", "nosuchoption", env=env))
    assert "unknown option" in line and "nosuchoption" in line
    assert not is_mounted(mp)


@pytest.mark.parametrize("store", [LOCAL], indirect=True)
def test_health_with_several_mounts_and_no_argument(
    store: Store, mount: MountFactory, tmp_path: Path
) -> None:
    mount(store, mountpoint=tmp_path / "one", cache_dir=tmp_path / "c1")
    mount(store, mountpoint=tmp_path / "two", cache_dir=tmp_path / "c2")
    line = one_line(storagefs("health"), code=64)
    assert "several storagefs mounts" in line
