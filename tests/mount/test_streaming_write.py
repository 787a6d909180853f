"""A file written sequentially into a mount over S3 is uploaded in parts while it is written;
one written with seeks is uploaded whole from its staging file. Both read back exactly."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.mount.harness import MountFactory, ok
from tests.mount.stores import S3Store, Store

PART = 5 * 1024 * 1024  # S3's smallest part


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_sequential_writes_stream_parts_and_seeks_fall_back(
    mount: MountFactory, store: Store, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    assert isinstance(store, S3Store)
    moto_log: Path = request.getfixturevalue("moto_server").log_path
    m = mount(store, env={"STORAGEFS_MULTIPART_CHUNKSIZE": str(PART)})
    data = os.urandom(2 * PART + 12345)
    (tmp_path / "src").write_bytes(data)
    start = moto_log.stat().st_size
    ok(f"dd if={tmp_path}/src of={m.path}/streamed bs=128k status=none")
    with open(moto_log, "rb") as log:
        log.seek(start)
        requests = log.read().decode(errors="replace")
    key = re.escape(f"/{store.bucket}/{store.prefix}/streamed")
    assert len(re.findall(rf'"PUT {key}\?uploadId=\S+&partNumber=\d+ ', requests)) == 3
    assert len(re.findall(rf'"POST {key}\?uploadId=', requests)) == 1  # completed once
    assert store.get("streamed") == data

    # A writer that goes back to patch its header: the staging file is uploaded whole.
    with open(m.path / "patched", "wb") as f:
        f.write(data)
        f.seek(0)
        f.write(b"HEADER")
    assert store.get("patched") == b"HEADER" + data[6:]
    assert (m.path / "patched").read_bytes() == b"HEADER" + data[6:]
