"""Small things users notice: `ls -a` shows . and .., df shows real figures, --cache-dir also
moves the background daemon's log."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.mount.harness import LOCAL, S3, MountFactory, is_mounted, ok
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


@pytest.mark.parametrize("store", [S3, LOCAL], indirect=True)
def test_a_chmod_on_one_machine_shows_on_another(
    store: Store, mount: MountFactory, tmp_path: Path
) -> None:
    """Two machines on one bucket: S3 keeps the etag when the first one chmods a file (a
    copy onto itself with new metadata), and the second one, which remembers the old mode,
    must see the new one once its attributes expire (STORAGEFS_METADATA_TTL, 5 s by default)."""
    one = mount(store, mountpoint=tmp_path / "one", cache_dir=tmp_path / "c1")
    two = mount(store, mountpoint=tmp_path / "two", cache_dir=tmp_path / "c2")
    one.ok("echo hello > f && chmod 644 f")

    def mode_in_listing() -> str:  # ls -l of the directory: the listing's remembered modes
        (line,) = [ln for ln in two.ok("ls -l").splitlines() if ln.endswith(" f")]
        return line.split()[0]

    assert mode_in_listing() == "-rw-r--r--"  # remembered by the second machine
    time.sleep(1.5)  # a later second of the store's clock than the write's
    one.ok("chmod 755 f")
    deadline = time.monotonic() + 20
    mode = ""
    while time.monotonic() < deadline:
        mode = mode_in_listing()
        if mode == "-rwxr-xr-x":
            break
        time.sleep(0.5)
    assert mode == "-rwxr-xr-x"
    assert two.ok("stat -c %a f").strip() == "755"
    assert two.ok("cat f") == "hello\n"
