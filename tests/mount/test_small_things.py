"""Small things users notice: `ls -a` shows . and .., df shows real figures, --cache-dir also
moves the background daemon's log."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mount.harness import LOCAL, MountFactory, is_mounted, ok
from tests.mount.stores import Store
from tests.test_cli_errors import storagefs

pytestmark = pytest.mark.mount

KiB = 1024
JOURNAL = 64 * 1024 * 1024


@pytest.mark.parametrize("store", [LOCAL], indirect=True)
def test_ls_a_shows_dot_and_dotdot(store: Store, mount: MountFactory) -> None:
    m = mount(store)
    m.ok("mkdir sub && touch sub/f top")
    assert m.ok("ls -a").split() == [".", "..", "sub", "top"]
    assert m.ok("ls -a sub").split() == [".", "..", "f"]
    assert m.ok("ls -a .health").split()[:3] == [".", "..", "backends"]
    # A directory listed in several readdir calls still lists every name once.
    m.ok("mkdir many && cd many && for i in $(seq 1 600); do : > file-$i; done")
    names = m.ok("ls -a many").split()
    assert names[:2] == [".", ".."] and len(names) == 602 and len(set(names)) == 602


@pytest.mark.parametrize("store", [LOCAL], indirect=True)
def test_df_shows_what_the_mount_holds_and_the_journal_room(
    store: Store, mount: MountFactory
) -> None:
    m = mount(store, env={"STORAGEFS_JOURNAL_MAX_BYTES": str(JOURNAL)})
    m.ok("head -c 300000 /dev/zero > big && ls -l big")
    size, used, avail = (int(v) for v in m.ok("df -B1 --output=size,used,avail .").split()[-3:])
    assert used >= 300000
    assert 0 < avail <= JOURNAL  # the room left in the journal, not a made-up petabyte
    assert size == used + avail
    inodes = int(m.ok("df --output=iused .").split()[-1])
    assert inodes >= 2  # the root and big at least


@pytest.mark.parametrize("store", [LOCAL], indirect=True)
def test_cache_dir_flag_moves_the_log(
    store: Store, tmp_path: Path, background_mounts: list[tuple[Path, int]]
) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    flag_dir = tmp_path / "flag-cache"
    env = {"STORAGEFS_PRIMARY": store.url, "STORAGEFS_CACHE_DIR": str(tmp_path / "env-cache")}
    result = storagefs("mount", str(mp), "--cache-dir", str(flag_dir), env=env)
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.split("(pid ")[1].split(",")[0])
    background_mounts.append((mp, pid))
    log = Path(result.stdout.split(" log ")[1].rstrip(")\n"))
    assert log.parent == flag_dir / "logs"
    assert log.exists()
    assert not (tmp_path / "env-cache").exists()
    ok(f"echo hi > {mp}/f")
    assert storagefs("unmount", str(mp)).returncode == 0
    assert not is_mounted(mp)
