"""A test that fails while it holds a file open in the mount: the fixture must still unmount,
stop the daemon and the emulators. Only storagefs's own tests run it (STORAGEFS_SAMPLE_FAIL=1)."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.skipif(
    not os.environ.get("STORAGEFS_SAMPLE_FAIL"), reason="fails on purpose; see its docstring"
)


def test_fails_holding_a_file_open(storagefs_mount):
    f = open(storagefs_mount.path / "open.txt", "w")  # noqa: SIM115 - kept open on purpose
    f.write("unfinished")
    f.flush()
    assert f.closed, "this test fails on purpose"
