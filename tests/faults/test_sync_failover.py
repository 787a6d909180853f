"""A secondary added to a bucket that already holds 1,000 objects: the daemon's reconciliation
copies them (health says failover is incomplete meanwhile), `storagefs sync MOUNTPOINT` then
finds nothing left, and with the primary cut every file still lists and reads."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import Rig
from tests.faults.helpers import MARKS, health, missing_or_wrong, sha256, tree_sums, wait_for
from tests.mount.harness import MountFactory, clean_env

OBJECTS = int(os.environ.get("STORAGEFS_SYNC_OBJECTS", "1000"))
pytestmark = [*MARKS[:-1], pytest.mark.timeout(900)]


def secondary_doc(mountpoint: Path) -> Mapping[str, Any]:
    doc = health(mountpoint).status.get("secondary")
    assert isinstance(doc, Mapping), "status.json has no secondary section"
    return doc


def test_a_new_secondary_gets_every_existing_object(
    rig: Rig, chain_mount: MountFactory, tmp_path: Path
) -> None:
    rnd = random.Random(12)
    items = {
        f"old/d{i % 10}/f{i:04d}.txt": rnd.randbytes(rnd.randrange(0, 2000)) for i in range(OBJECTS)
    }
    rig.s3.put_many(items.items())
    expected = {key.removeprefix("old/"): sha256(data) for key, data in items.items()}
    total = sum(len(data) for data in items.values())

    m = chain_mount(
        env={
            # Paced so the pass lasts a few seconds and its progress can be seen in /.health.
            "STORAGEFS_SYNC_BYTES_PER_SECOND": str(max(total // 4, 1)),
            "STORAGEFS_SYNC_WORKERS": "8",
            # moto lists 1,000 keys in more than the rig's 1 s on a busy machine.
            "STORAGEFS_REQUEST_TIMEOUT": "10",
            "STORAGEFS_OPERATION_DEADLINE": "30",
        }
    )
    during = wait_for(
        "status.json shows the pass with objects behind",
        lambda: (lambda d: d if d.get("state") == "syncing" and d.get("behind_objects") else None)(
            secondary_doc(m.path)
        ),
        timeout=60,
        interval=0.1,
        describe=lambda: f"{secondary_doc(m.path)}\n{m.log()[-3000:]}",
    )
    status = health(m.path)
    assert status.state == "degraded", status.raw_status
    assert any("failover is incomplete" in r for r in status.status["reasons"]), status.raw_status

    done = wait_for(
        "reconciliation completes",
        lambda: (lambda d: d if d.get("state") == "complete" else None)(secondary_doc(m.path)),
        timeout=300,
        interval=0.5,
        describe=lambda: str(secondary_doc(m.path)),
    )
    assert done["behind_objects"] == 0 and done["behind_bytes"] == 0, done
    assert done["copied_objects"] == OBJECTS, done
    assert during["behind_objects"] <= OBJECTS
    on_azure = {k for k in rig.azure.list_keys() if k.startswith("old/")}
    assert on_azure == set(items)
    assert health(m.path).state == "ok"

    # The command asks the daemon for another pass: nothing is left to copy.
    cli = subprocess.run(
        [sys.executable, "-m", "storagefs", "sync", str(m.path)],
        capture_output=True, text=True, timeout=300, env=clean_env({}),
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "0 object(s), 0 B copied" in cli.stdout
    assert "the secondary holds everything" in cli.stdout

    rig.s3_proxy.set_mode("refuse")
    listed = sorted(p.name for p in (m.path / "old" / "d3").iterdir())
    assert listed == sorted(k.rsplit("/", 1)[1] for k in items if k.startswith("old/d3/"))
    assert missing_or_wrong(expected, tree_sums(m.path / "old")) == []
