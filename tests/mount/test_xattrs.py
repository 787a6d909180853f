"""Other tools' metadata and user.* extended attributes through a real mount (issue #21).

Objects are written with the stores' own SDKs (boto3 ``Metadata=``, the Azure SDK's
``metadata=``, xattrs of a local backing file) and read back the same way after the mount
changed them; extended attributes are set with setfattr/getfattr and rsync -aX.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import shutil
import urllib.parse
from pathlib import Path

import pytest

from tests.mount.harness import MountFactory, ok
from tests.mount.stores import Store

pytestmark = pytest.mark.mount

# Names valid on every store (Azure wants C# identifiers; S3 lowercases them).
FOREIGN = {"ownerapp": "reports", "checksum": "abc123"}

# Bytes of one value that fit Linux's 64 KiB but not the store's room for metadata (S3: 2 KiB;
# Azure: 8 KiB; a local directory on ext4: one 4 KiB block for all of a file's xattrs).
TOO_BIG = {"s3": 2100, "azure": 8300, "local": 8300}


@pytest.fixture(autouse=True)
def _need_attr_tools() -> None:
    if shutil.which("getfattr") is None or shutil.which("setfattr") is None:
        pytest.fail("getfattr/setfattr are missing: apt-get install attr (scripts/install)")


def assert_kept(store: Store, key: str) -> dict[str, str]:
    meta = store.metadata(key)
    assert {k: meta.get(k) for k in FOREIGN} == FOREIGN, f"{key}: {meta}"
    return meta


def test_rewrites_keep_other_tools_metadata(store: Store, mount: MountFactory) -> None:
    for key in ("chmod", "chown", "touch", "moved", "rewritten", "listed"):
        store.put_with_metadata(key, b"data\n", FOREIGN)
    store.put_with_metadata("dir/", b"", FOREIGN)
    m = mount(store)
    m.ok("chmod 600 chmod && chmod 700 dir && chown 1234:1234 chown && touch -d @1600000000 touch")
    m.ok("mv moved moved2 && echo more >> rewritten")
    for key in ("chmod", "dir/", "chown", "touch", "moved2", "rewritten"):
        assert_kept(store, key)
    assert store.metadata("chmod")["mode"] == str(0o100600)
    assert store.metadata("dir/")["mode"] == str(0o40700)
    assert store.metadata("chown")["uid"] == "1234"
    assert store.get("rewritten") == b"data\nmore\n"
    m.unmount()
    # A listing that fetches no metadata (over the HEAD limit): the chmod that follows must
    # still write the object's whole metadata, its other entries included.
    m = mount(store, env={"STORAGEFS_LISTING_HEAD_LIMIT": "0"})
    m.ok("ls -l > /dev/null && chmod 640 listed")
    assert_kept(store, "listed")
    assert m.ok("stat -c %a:%u chmod dir chown") == "600:0\n700:0\n644:1234\n"


def test_xattrs_round_trip_and_survive_remount(store: Store, mount: MountFactory) -> None:
    m = mount(store)
    m.ok("echo x > f && mkdir d")
    m.ok("setfattr -n user.color -v blue f && setfattr -n user.bin -v 0sAAECAw== f")
    m.ok("setfattr -n user.dir -v yes d")
    assert m.ok("getfattr --only-values -n user.color f") == "blue"
    names = m.ok("getfattr -d -m - --absolute-names f")
    assert "user.bin=0sAAECAw==" in names and 'user.color="blue"' in names
    # On the store as s3fs writes it: one entry, URL-encoded JSON of base64 values.
    stored = json.loads(urllib.parse.unquote(store.metadata("f")["xattr"]))
    assert stored == {"user.bin": "AAECAw==", "user.color": base64.b64encode(b"blue").decode()}
    assert "xattr" in store.metadata("d/")
    target = str(m.path / "f")
    with pytest.raises(OSError) as err:
        os.setxattr(target, "user.color", b"red", os.XATTR_CREATE)
    assert err.value.errno == errno.EEXIST
    with pytest.raises(OSError) as err:
        os.setxattr(target, "user.none", b"v", os.XATTR_REPLACE)
    assert err.value.errno == errno.ENODATA
    with pytest.raises(OSError) as err:
        os.getxattr(target, "user.none")
    assert err.value.errno == errno.ENODATA
    # Other namespaces are refused, as by ext4 without ACLs and security modules. (The
    # kernel checks values of security.capability and ACLs itself before the mount sees them.)
    for name in ("security.capability", "security.selinux", "system.posix_acl_access"):
        with pytest.raises(OSError) as err:
            os.getxattr(target, name)
        assert err.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError) as err:
        os.setxattr(target, "trusted.x", b"v")
    assert err.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError) as err:
        os.setxattr(target, "user.big", b"x" * TOO_BIG[store.kind])
    assert err.value.errno == errno.ENOSPC
    # Written while open: the attribute goes with the upload of the new content.
    with open(target, "a") as f:
        f.write("y\n")
        f.flush()
        os.setxattr(target, "user.open", b"1")
    m.ok("setfattr -x user.bin f")
    m.unmount()
    m = mount(store)
    assert m.ok("cat f") == "x\ny\n"
    assert sorted(os.listxattr(m.path / "f")) == ["user.color", "user.open"]
    assert os.getxattr(m.path / "d", "user.dir") == b"yes"
    assert m.ok("getfattr --only-values -n user.color f") == "blue"
    m.ok("ls -l > /dev/null")  # (it asks for ACLs: refused at once, not an error)
    assert "xattr" not in os.listxattr(m.path / "f")


def test_rsync_ax_round_trips_xattrs(store: Store, mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_text("a\n")
    (src / "sub" / "b").write_bytes(os.urandom(3000))
    os.setxattr(src / "a", "user.origin", b"rsync")
    os.setxattr(src / "sub" / "b", "user.sum", b"\x00\xff binary")
    os.setxattr(src / "sub", "user.kind", b"folder")
    m = mount(store)
    ok(f"rsync -aX {src}/ {m.path}/dst/")
    m.unmount()
    m = mount(store)
    back = tmp_path / "back"
    ok(f"rsync -aX {m.path}/dst/ {back}/")
    dump = "getfattr -R -d -m - --absolute-names ."
    assert ok(dump, cwd=back) == ok(dump, cwd=src)
    ok(f"diff -r {src} {back}")
