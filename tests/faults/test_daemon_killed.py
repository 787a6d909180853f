"""The daemon is SIGKILLed while its journal holds acknowledged writes that S3 (and, in the
second case, Azure too) never saw; the next mount replays them, and nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.faults.conftest import Rig
from tests.faults.helpers import (
    FILES,
    MARKS,
    health,
    make_tree,
    missing_or_wrong,
    store_sums,
    tree_sums,
    wait_drained,
)
from tests.mount.harness import FUSERMOUNT, MountFactory, is_mounted, ok, wait_gone

pytestmark = MARKS


@pytest.mark.parametrize("down", ["s3", "s3+azure"])
def test_sigkill_with_pending_journal(
    rig: Rig, chain_mount: MountFactory, tmp_path: Path, down: str
) -> None:
    before = make_tree(tmp_path / "before", 10, seed=2)
    during = make_tree(tmp_path / "during", FILES, seed=3)
    m = chain_mount()
    ok(f"cp -r {tmp_path / 'before'} {m.path}/before")
    wait_drained(m.path)

    rig.s3_proxy.set_mode("refuse")
    if down == "s3+azure":  # then the journal is the only copy of the new files
        rig.azure_proxy.set_mode("refuse")
    ok(f"cp -r {tmp_path / 'during'} {m.path}/during")  # acknowledged, every file
    files = health(m.path)
    pending = files.journal["backends"]
    assert pending["s3"]["pending_ops"] >= FILES, files.journal
    if down == "s3+azure":
        assert pending["azure"]["pending_ops"] >= FILES, files.journal
        assert store_sums(rig.azure, "during") == {}

    os.kill(m.pid, signal.SIGKILL)
    assert wait_gone(m.pid, 10), "the daemon survived SIGKILL"
    m.proc.wait(5)
    assert FUSERMOUNT is not None
    subprocess.run([FUSERMOUNT, "-u", "-z", str(m.path)], check=True, timeout=30)
    assert not is_mounted(m.path)
    m.unmounted = True  # cleaned up by hand: the fixture must not report the death we caused

    rig.heal()
    again = chain_mount()  # same cache directory: the journal of the killed daemon
    assert "recovered" in again.log(), again.log()
    wait_drained(again.path)
    for name, store in (("s3", rig.s3), ("azure", rig.azure)):
        assert missing_or_wrong(before, store_sums(store, "before")) == [], name
        assert missing_or_wrong(during, store_sums(store, "during")) == [], name
    assert missing_or_wrong(during, tree_sums(again.path / "during")) == []
    assert missing_or_wrong(before, tree_sums(again.path / "before")) == []
