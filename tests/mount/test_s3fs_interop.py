"""storagefs and s3fs-fuse read each other's files, modes, times, directories and symbolic
links (issue 10: "links intact after remount, readable by s3fs"). Both mount the same moto
bucket and prefix as real FUSE mounts; what one writes, the other is asked about.

s3fs keeps attributes as object metadata (``x-amz-meta-mode``, ``-uid``, ``-gid``,
``-mtime``) and a link as an object whose body is the target and whose mode has S_IFLNK:
docs/SEMANTICS.md says storagefs uses the same format.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storagefs.devtools.emulators import FAKE_AWS_ENV
from storagefs.mounts_table import is_mounted
from tests.mount.harness import MountFactory, ok
from tests.mount.stores import S3Store, Store

pytestmark = pytest.mark.skipif(
    shutil.which("s3fs") is None, reason="s3fs is not installed (scripts/install --test)"
)


@pytest.fixture
def s3fs_mount(store: Store, tmp_path: Path) -> Iterator[Path]:
    """s3fs over the same bucket and prefix as ``store``, with no caching of its own that
    would hide the other mount's changes."""
    assert isinstance(store, S3Store)
    endpoint = store.env["STORAGEFS_S3_ENDPOINT_URL"]
    passwd = tmp_path / "s3fs-passwd"
    passwd.write_text(
        f"{FAKE_AWS_ENV['AWS_ACCESS_KEY_ID']}:{FAKE_AWS_ENV['AWS_SECRET_ACCESS_KEY']}\n"
    )
    passwd.chmod(0o600)
    mountpoint = tmp_path / "s3fs"
    mountpoint.mkdir()
    log = open(tmp_path / "s3fs.log", "wb")  # noqa: SIM115 -- closed below
    proc = subprocess.Popen(
        [
            "s3fs",
            f"{store.bucket}:/{store.prefix}",
            str(mountpoint),
            "-f",
            "-o",
            f"url={endpoint}",
            "-o",
            "use_path_request_style",
            "-o",
            "endpoint=us-east-1",
            "-o",
            f"passwd_file={passwd}",
            "-o",
            "stat_cache_expire=1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not is_mounted(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"s3fs did not mount: {(tmp_path / 's3fs.log').read_text()}")
            time.sleep(0.1)
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_s3fs_reads_what_storagefs_wrote(
    store: Store, mount: MountFactory, s3fs_mount: Path
) -> None:
    m = mount(store)
    m.ok(
        "mkdir -p docs/deep && printf 'report\\n' > docs/report.txt && chmod 640 docs/report.txt"
        " && touch -d @1500000000 docs/report.txt"
        " && ln -s report.txt docs/latest && ln -s ../missing docs/dangling"
        " && printf 'x' > docs/deep/leaf"
    )
    s3fs = s3fs_mount
    assert (s3fs / "docs/report.txt").read_text() == "report\n"
    assert ok("stat -c '%a %Y %F' docs/report.txt", s3fs) == "640 1500000000 regular file\n"
    assert ok("readlink docs/latest docs/dangling", s3fs) == "report.txt\n../missing\n"
    assert ok("cat docs/latest", s3fs) == "report\n"  # followed by s3fs itself
    assert ok("find docs -type l | sort", s3fs) == "docs/dangling\ndocs/latest\n"
    assert ok("cat docs/deep/leaf", s3fs) == "x"


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_storagefs_reads_what_s3fs_wrote(
    store: Store, mount: MountFactory, s3fs_mount: Path
) -> None:
    ok(
        "mkdir -p src && printf 'made by s3fs\\n' > src/a.txt && chmod 600 src/a.txt"
        " && touch -d @1400000000 src/a.txt && ln -s a.txt src/link && mkdir src/empty",
        s3fs_mount,
    )
    m = mount(store)  # a fresh mount: nothing of it is cached
    assert m.ok("cat src/a.txt") == "made by s3fs\n"
    assert m.ok("stat -c '%a %Y %F' src/a.txt") == "600 1400000000 regular file\n"
    assert m.ok("readlink src/link && cat src/link") == "a.txt\nmade by s3fs\n"
    assert m.ok("stat -c %F src/link src/empty") == "symbolic link\ndirectory\n"
    # And back: storagefs changes the link and the mode, s3fs sees it.
    m.ok("ln -sfn ../elsewhere src/link && chmod 644 src/a.txt")
    deadline = time.monotonic() + 10  # s3fs's own stat cache lasts a second
    while True:
        seen = ok("readlink src/link; stat -c %a src/a.txt", s3fs_mount)
        if seen == "../elsewhere\n644\n" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert seen == "../elsewhere\n644\n"
