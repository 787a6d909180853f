"""scripts/quickstart run again on a live mount says so and exits 0, installing nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.mount.harness import LOCAL, MountFactory, clean_env
from tests.mount.stores import Store

pytestmark = pytest.mark.mount

QUICKSTART = Path(__file__).resolve().parents[2] / "scripts" / "quickstart"


@pytest.mark.parametrize("store", [LOCAL], indirect=True)
def test_quickstart_on_a_live_mount(store: Store, mount: MountFactory) -> None:
    m = mount(store)
    result = subprocess.run(
        ["bash", str(QUICKSTART), str(m.path)],
        capture_output=True, text=True, timeout=60, env=clean_env({}), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"storagefs: {m.path} is already mounted (unmount it with: storagefs unmount {m.path})\n"
    )
    assert "==>" not in result.stdout + result.stderr  # scripts/install did not run
