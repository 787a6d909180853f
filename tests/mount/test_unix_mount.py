"""How Unix users mount: `mount -t fuse.storagefs`, an /etc/fstab line, `umount`; the mount
options they expect; `storagefs list` and `--version`.

The `storagefs#URL` form of type `fuse` goes through the machine's mount.fuse3, which runs
`storagefs URL MOUNTPOINT -o ...`. mount(8) finds our own helper only in /sbin, so the tests run
in a private mount namespace (`unshare -m`) with a tmpfs over /sbin that holds just our helper:
nothing of the machine's is changed, and whatever the test mounts there is gone with the
namespace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from storagefs.cli import mount_options, probe
from tests.mount.harness import LOCAL, MountFactory, clean_env, is_mounted, wait_gone
from tests.mount.stores import LocalStore, Store

pytestmark = pytest.mark.mount

NAMESPACE_SCRIPT = r"""
set -u
trap 'umount -l "$MP" 2>/dev/null; exit' EXIT
step() { echo "== $*"; }

step "mount.fuse3 form"
printf '#!/bin/sh\nexec "%s" -m storagefs "$@"\n' "$PYTHON" > "$SHIM"
chmod 755 "$SHIM"
mount -t fuse "$SHIM#file://$BUCKET" "$MP" -o "allow_other,_netdev,nofail,cache_dir=$CACHE" \
  || exit 5
echo "read: $(cat "$MP/from-bucket.txt")"
umount "$MP" || exit 6

sbin=$(readlink -f /sbin)
mount -t tmpfs -o mode=755 storagefs-test "$sbin" || exit 97
cat > "$sbin/mount.fuse.storagefs" <<HELPER
#!/bin/sh
exec "$PYTHON" -m storagefs.cli.mount_helper "\$@"
HELPER
chmod 755 "$sbin/mount.fuse.storagefs"

step "mount -t"
mount -t fuse.storagefs "file://$BUCKET" "$MP" \
  -o "allow_other,default_permissions,_netdev,nofail,noauto,x-systemd.automount" \
  -o "uid=4321,cache_dir=$CACHE" \
  || exit 10
grep -F " $MP fuse.storagefs " /proc/self/mounts || exit 11
echo written > "$MP/by-mount-t.txt" || exit 12
echo "read: $(cat "$MP/from-bucket.txt")"
storagefs_list=$("$PYTHON" -m storagefs list) || exit 13
echo "list: $storagefs_list"
umount "$MP" || exit 14
grep -F " $MP " /proc/self/mounts && exit 15

step "fstab"
echo "file://$BUCKET $MP fuse.storagefs _netdev,nofail,ro,cache_dir=$CACHE 0 0" > "$FSTAB"
mount -T "$FSTAB" "$MP" || exit 20
echo "read: $(cat "$MP/by-mount-t.txt")"
grep -F " $MP fuse.storagefs ro," /proc/self/mounts || exit 21
touch "$MP/refused" 2>/dev/null && exit 22
umount "$MP" || exit 23

step "bad option"
mount -t fuse.storagefs "file://$BUCKET" "$MP" -o "allow_other,allow_othr,cache_dir=$CACHE"
echo "bad option exit $?"
grep -F " $MP " /proc/self/mounts && exit 30
exit 0
"""


def _have_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe_run = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True
    )
    return probe_run.returncode == 0


def test_mount_t_fstab_and_umount(tmp_path: Path) -> None:
    if not _have_namespaces():
        pytest.skip("needs root and unshare -m (a private mount namespace for /sbin)")
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (bucket / "from-bucket.txt").write_text("seeded")
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = clean_env(
        {
            "PYTHON": sys.executable,
            "BUCKET": str(bucket),
            "MP": str(mp),
            "CACHE": str(tmp_path / "cache"),
            "FSTAB": str(tmp_path / "fstab"),
            "SHIM": str(tmp_path / "storagefs"),
            "PYTHONPATH": str(Path(__file__).parents[2]),
        }
    )
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", NAMESPACE_SCRIPT],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = result.stdout + result.stderr
    # Daemons the helper started: all must be gone (their mounts died with the namespace).
    pids = [int(p) for p in re.findall(r"\(pid (\d+),", out)]
    leftovers = [pid for pid in pids if not wait_gone(pid, 30.0)]
    for pid in leftovers:
        os.kill(pid, 9)
    assert result.returncode == 0, out
    assert len(pids) == 3, out  # mount.fuse3 form, mount -t, fstab; the bad option none
    assert not leftovers, out
    assert (bucket / "by-mount-t.txt").read_text() == "written\n"
    assert "read: seeded" in out and "read: written" in out
    listed = rf"^(list: )?{re.escape(str(mp))} ok primary=file://{re.escape(str(bucket))}\(up\)"
    assert re.search(listed + " pending=0$", out, re.MULTILINE), out
    assert (tmp_path / "cache" / "logs").is_dir()  # cache_dir= reached the settings
    bad = [line for line in out.splitlines() if "allow_othr" in line]
    assert len(bad) == 1 and bad[0].startswith("storagefs: error: unknown mount option"), out
    assert "bad option exit 0" not in out
    assert not is_mounted(mp)


@pytest.mark.parametrize("store", [LOCAL], indirect=True)
def test_fuse_options_reach_the_kernel(store: Store, mount: MountFactory, tmp_path: Path) -> None:
    """Every FUSE flag we accept is also accepted by libfuse; ro and noexec show in the mount."""
    every = ",".join(sorted(mount_options.FUSE_FLAGS))
    mount(store, options=(every,), mountpoint=tmp_path / "every").unmount()
    m = mount(store, options=("allow_other,default_permissions,noexec,nodev,nosuid,noatime,ro",))
    line = next(
        ln for ln in Path("/proc/self/mounts").read_text().splitlines() if f" {m.path} " in ln
    )
    flags = line.split()[3].split(",")
    assert {"ro", "noexec", "nodev", "nosuid", "noatime"} <= set(flags), line
    assert "allow_other" in line and "default_permissions" in line, line
    assert m.sh("touch refused").returncode != 0


def _storagefs(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "storagefs", *args],
        env=clean_env({}),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = _storagefs(["--version"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(version("storagefs"))


def test_list_shows_each_mount_in_one_line(mount: MountFactory, tmp_path: Path) -> None:
    stores = []
    for name in ("one", "two"):
        root = tmp_path / name
        root.mkdir()
        stores.append(LocalStore(root))
    a = mount(stores[0], mountpoint=tmp_path / "mnt-a", cache_dir=tmp_path / "cache-a")
    b = mount(stores[1], mountpoint=tmp_path / "mnt-b", cache_dir=tmp_path / "cache-b")
    result = _storagefs(["list"], tmp_path)
    assert result.returncode == 0, result.stderr
    ours = [ln for ln in result.stdout.splitlines() if ln.split()[0] in (str(a.path), str(b.path))]
    assert sorted(ours) == sorted(
        f"{m.path} ok primary=file://{s.root}(up) pending=0"
        for m, s in zip((a, b), stores, strict=True)
    ), result.stdout

    listed = json.loads(_storagefs(["list", "--json"], tmp_path).stdout)
    by_path = {entry["mountpoint"]: entry for entry in listed}
    entry = by_path[str(a.path)]
    assert entry["status"] == "ok" and entry["error"] is None
    assert entry["backends"] == [
        {"name": entry["backends"][0]["name"], "role": "primary",
         "url": f"file://{stores[0].root}", "available": True}
    ]  # fmt: skip
    assert probe.exit_code(entry["status"]) == 0


def test_list_with_no_mounts_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "mounts"
    empty.write_text("proc /proc proc rw 0 0\n")
    from storagefs.cli import mount_list

    assert mount_list.live_mounts(str(empty)) == []
    assert mount_list.line(mount_list.summarize(tmp_path, 1.0)).startswith(
        f"{tmp_path} unknown (no health files"
    )
