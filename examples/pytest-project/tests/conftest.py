"""Only for storagefs's own test of this example: note what each mount was, so that the test
can check afterwards that nothing is left (no mount, no daemon, no emulator process)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _record_mount(request: pytest.FixtureRequest) -> Iterator[None]:
    record = os.environ.get("STORAGEFS_SAMPLE_RECORD")
    if record and "storagefs_mount" in request.fixturenames:
        m = request.getfixturevalue("storagefs_mount")
        with open(record, "a") as f:
            line = {
                "path": str(m.path),
                "pid": m.pid,
                "emulator_pids": m.emulator_pids,
                "secondary": m.env.get("STORAGEFS_SECONDARY"),
            }
            f.write(json.dumps(line) + "\n")
    yield
