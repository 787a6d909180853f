"""rsync onto a mount: every file is uploaded once, under its final name (issue 12).

rsync writes each file under a temporary name (``.name.XXXXXX``), closes it, sets its times
and mode, and renames it. Those changes fold into the journaled upload of the temporary name
(held for a moment in write-through mode, the default; every change waits in write-back mode),
and the rename uploads it once under the final name (docs/SEMANTICS.md, "Renames"): the store
sees one PUT per file, no server-side copy and no DELETE of the temporary name. Counted from
the moto server's request log: a server-side copy would show as a second PUT of the final
key, an upload of the temporary name as a PUT of a dot-name.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mount.harness import MountFactory, clean_env, ok
from tests.mount.stores import S3Store, Store

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "rsync"], capture_output=True).returncode != 0,
    reason="rsync is not installed (scripts/install --test installs it)",
)


def _tree(root: Path) -> dict[str, bytes]:
    files = {
        f"d{d}/f{i}.txt": b"file %d of dir %d\n" % (i, d) * (i + 1)
        for d in range(2)
        for i in range(8)
    }
    files["top.bin"] = bytes(range(256)) * 1000
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


@pytest.mark.parametrize("mode", ["through", "back"])
@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_rsync_uploads_each_file_once_under_its_final_name(
    mount: MountFactory, store: Store, tmp_path: Path, request: pytest.FixtureRequest, mode: str
) -> None:
    assert isinstance(store, S3Store)
    moto_log: Path = request.getfixturevalue("moto_server").log_path
    source = tmp_path / "src"
    files = _tree(source)
    m = mount(store, env={"STORAGEFS_WRITE_MODE": mode})
    start = moto_log.stat().st_size
    ok(f"rsync -a {source}/ {m.path}/copy/")
    if mode == "through":
        # Write-through: each rename waited for the primary, as a close does.
        assert {k for k in store.list_keys() if not k.endswith("/")} == {
            f"copy/{rel}" for rel in files
        }
    # Everything journaled reaches the store (the flush does not wait out the delay).
    subprocess.run(
        [sys.executable, "-m", "storagefs", "flush", str(m.path), "--timeout", "60"],
        check=True,
        env=clean_env({}),
        cwd=tmp_path,
    )
    with open(moto_log, "rb") as log:
        log.seek(start)
        requests = log.read().decode(errors="replace")
    prefix = f"/{store.bucket}/{store.prefix}/"
    puts = re.findall(rf'"PUT {re.escape(prefix)}(\S+) HTTP', requests)
    file_puts = sorted(p for p in puts if not p.endswith("/"))  # directory markers aside
    assert file_puts == sorted(f"copy/{rel}" for rel in files)  # once each, no temp name
    assert re.findall(r'"DELETE (\S+) HTTP', requests) == []  # no temp name to delete
    assert {k: store.get(k) for k in store.list_keys() if not k.endswith("/")} == {
        f"copy/{rel}": data for rel, data in files.items()
    }
    assert (m.path / "copy/top.bin").read_bytes() == files["top.bin"]
    assert ok(f"rsync -a --dry-run --itemize-changes {source}/ {m.path}/copy/").strip() == ""
