"""The mount fixture itself must fail a test when the daemon misbehaves: otherwise a crash would
pass unnoticed behind shell tools that print nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.mount.harness import LOCAL, MountFactory, is_mounted
from tests.mount.stores import LocalStore, Store

pytestmark = pytest.mark.mount


@pytest.mark.parametrize("store", [LOCAL], indirect=True)
def test_a_killed_daemon_fails_the_test_and_is_cleaned_up(
    store: Store, mount: MountFactory
) -> None:
    m = mount(store)
    m.ok("echo x > f")
    os.kill(m.pid, signal.SIGKILL)
    m.proc.wait(10)
    with pytest.raises(pytest.fail.Exception, match="died while mounted"):
        m.unmount()
    assert not is_mounted(m.path)  # the dead mount was detached anyway


def test_a_daemon_that_cannot_mount_fails_at_once_with_its_output(
    mount: MountFactory, tmp_path: Path
) -> None:
    start = time.monotonic()
    broken = LocalStore(tmp_path / "does-not-exist")
    with pytest.raises(pytest.fail.Exception, match=r"storagefs: error:.*does-not-exist"):
        mount(broken)
    assert time.monotonic() - start < 20
    assert not is_mounted(tmp_path / "mnt")
