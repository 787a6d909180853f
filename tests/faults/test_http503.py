"""S3 answers every request with HTTP 503 (the proxy injects it): the mount retries, counts the
failures in /.health, acknowledges writes through the journal, and loses nothing."""

from __future__ import annotations

from pathlib import Path

from tests.faults.conftest import Rig
from tests.faults.helpers import (
    FILES,
    MARKS,
    backend_doc,
    health,
    make_tree,
    missing_or_wrong,
    store_sums,
    tree_sums,
    wait_drained,
)
from tests.mount.harness import MountFactory, ok

pytestmark = MARKS


def test_http503_from_primary(rig: Rig, chain_mount: MountFactory, tmp_path: Path) -> None:
    expected = make_tree(tmp_path / "src", FILES // 2, seed=6)
    m = chain_mount()
    rig.s3_proxy.set_mode("http503")
    ok(f"cp -r {tmp_path / 'src'} {m.path}/tree")
    assert missing_or_wrong(expected, tree_sums(m.path / "tree")) == []

    files = health(m.path)
    s3 = backend_doc(files, "s3")
    stats = s3["stats"]
    assert stats["retries"] > 0, s3  # each 503 was tried again before giving up
    assert stats["failures"] > 0, s3
    message = str((s3["last_error"] or {}).get("message"))
    assert "503" in message or "ServiceUnavailable" in message, s3
    assert files.journal["backends"]["s3"]["pending_ops"] > 0, files.journal
    assert files.state == "degraded", files.raw_status
    assert rig.s3_proxy.snapshot()["answered_503"] >= stats["retries"]
    assert store_sums(rig.s3, "tree") == {}  # nothing got past the proxy

    rig.s3_proxy.set_mode("pass")
    wait_drained(m.path)
    for name, store in (("s3", rig.s3), ("azure", rig.azure)):
        assert missing_or_wrong(expected, store_sums(store, "tree")) == [], name
