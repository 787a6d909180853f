"""The primary (S3) goes down in the middle of a `cp -r`: the copy succeeds, everything reads
back during the outage, the mount says degraded, and once S3 is back the journal drains to
both stores with every byte intact."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from storagefs.cli.probe import HealthFiles
from tests.faults.conftest import Rig
from tests.faults.helpers import (
    FILES,
    MARKS,
    backend_doc,
    health,
    health_cli,
    make_tree,
    missing_or_wrong,
    store_sums,
    tree_sums,
    wait_drained,
    wait_for,
)
from tests.mount.harness import MountFactory, clean_env

pytestmark = MARKS

CP_TIMEOUT = 180.0


def test_primary_down_mid_copy(rig: Rig, chain_mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    expected = make_tree(src, FILES, seed=1)
    m = chain_mount()
    cp = subprocess.Popen(
        ["cp", "-r", str(src), str(m.path / "tree")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env({}),
    )
    try:
        # Cut S3 once a quarter of the files reached it: the copy is well under way.
        wait_for(
            "a quarter of the files reach S3",
            lambda: len(rig.s3.list_keys()) >= FILES // 4 or cp.poll() is not None,
            timeout=60,
            interval=0.05,
        )
        assert cp.poll() is None, "cp finished before the outage began: nothing was proved"
        rig.s3_proxy.set_mode("refuse")
        cut_at = time.monotonic()
        output, _ = cp.communicate(timeout=CP_TIMEOUT)
    finally:
        if cp.poll() is None:
            cp.kill()
            cp.wait()
    assert cp.returncode == 0, f"cp failed during the outage: {output}"
    on_s3_at_cut = len(rig.s3.list_keys())
    assert on_s3_at_cut < FILES, "every file reached S3: the outage came too late"
    print(f"cp -r finished {time.monotonic() - cut_at:.1f} s after the cut")

    # During the outage: every file reads back right (journal or Azure), and the mount says so.
    assert missing_or_wrong(expected, tree_sums(m.path / "tree")) == []
    files = health(m.path)
    assert files.state == "degraded", files.raw_status
    assert files.journal["pending_entries"] > 0, files.journal
    assert files.journal["backends"]["s3"]["pending_ops"] > 0, files.journal
    s3_doc = backend_doc(files, "s3")
    assert s3_doc["available"] is False, s3_doc
    assert backend_doc(files, "azure")["available"] is True
    cli = health_cli(m.path)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "DEGRADED" in cli.stdout.upper()

    rig.s3_proxy.set_mode("pass")
    wait_drained(m.path)
    assert missing_or_wrong(expected, store_sums(rig.s3, "tree")) == []
    assert missing_or_wrong(expected, store_sums(rig.azure, "tree")) == []
    assert set(store_sums(rig.s3, "tree")) == set(expected)  # nothing extra either
    final = wait_for(
        "the mount is ok again",
        lambda: ok_health(m.path),
        timeout=30,
        describe=lambda: health(m.path).raw_status,
    )
    assert final.journal["pending_entries"] == 0
    cli = health_cli(m.path)
    assert cli.returncode == 0, cli.stdout + cli.stderr


def ok_health(mountpoint: Path) -> HealthFiles | None:
    files = health(mountpoint)
    return files if files.state == "ok" else None
