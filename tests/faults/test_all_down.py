"""Both stores down (each behind its own proxy, refusing): files read before the outage are
served from the local cache, new writes wait in the journal, health says down; once the stores
return every byte arrives on both."""

from __future__ import annotations

import time
from pathlib import Path

from tests.faults.conftest import METADATA_TTL, Rig
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
)
from tests.mount.harness import MountFactory, ok

pytestmark = MARKS


def test_both_remotes_down(rig: Rig, chain_mount: MountFactory, tmp_path: Path) -> None:
    old = make_tree(tmp_path / "old", 20, seed=4)
    new = make_tree(tmp_path / "new", FILES // 2, seed=5)
    m = chain_mount()
    ok(f"cp -r {tmp_path / 'old'} {m.path}/old")
    wait_drained(m.path)
    assert missing_or_wrong(old, tree_sums(m.path / "old")) == []  # read once: cached

    rig.s3_proxy.set_mode("refuse")
    rig.azure_proxy.set_mode("refuse")
    time.sleep(METADATA_TTL * 2)  # what the mount remembers of names and sizes runs out

    assert missing_or_wrong(old, tree_sums(m.path / "old")) == []
    files = health(m.path)
    assert files.status["stale_reads"] > 0, files.raw_status  # the cache answered, no store

    ok(f"cp -r {tmp_path / 'new'} {m.path}/new")
    files = health(m.path)
    assert files.state == "down", files.raw_status
    for name in ("s3", "azure"):
        assert files.journal["backends"][name]["pending_ops"] >= len(new), files.journal
        assert backend_doc(files, name)["available"] is False
    assert files.journal["pending_entries"] >= len(new)
    assert missing_or_wrong(new, tree_sums(m.path / "new")) == []  # from the journal
    cli = health_cli(m.path)
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert store_sums(rig.s3, "new") == {} and store_sums(rig.azure, "new") == {}

    rig.heal()
    wait_drained(m.path)
    for name, store in (("s3", rig.s3), ("azure", rig.azure)):
        assert missing_or_wrong(old, store_sums(store, "old")) == [], name
        assert missing_or_wrong(new, store_sums(store, "new")) == [], name
    files = health(m.path)
    # Not ok yet, and rightly: the stale reads keep the mount degraded for rules.stale_window
    # (60 s, docs/HEALTH.md), and that is the only reason left.
    assert files.state == "degraded", files.raw_status
    assert all(r["available"] for r in files.status["remotes"]), files.raw_status
    assert all("local cache" in reason for reason in files.status["reasons"]), files.raw_status
    assert health_cli(m.path).returncode == 1
