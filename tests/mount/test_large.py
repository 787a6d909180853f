"""A large file in and out through the mount, with the daemon's memory bounded.

256 MiB rather than 1 GiB: moto copies the whole object for every ranged GET, so reading 1 GiB
back takes ~100 s here (256 MiB: ~5 s); scripts/bench measures the 1 GiB case."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.mount.harness import S3, MountFactory, ok, vm_hwm_kib
from tests.mount.stores import S3Store, Store

pytestmark = pytest.mark.mount

SIZE_MIB = 256
# The daemon streams through staging files and bounded readahead: its memory must not grow
# with the file (a buffered 256 MiB file alone would break this).
MAX_RSS_MB = 300


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.parametrize("store", [S3], indirect=True)
def test_large_file_round_trip_in_bounded_memory(
    store: Store, mount: MountFactory, tmp_path: Path
) -> None:
    assert isinstance(store, S3Store)
    src, back = tmp_path / "big", tmp_path / "back"
    ok(f"dd if=/dev/urandom of={src} bs=1M count={SIZE_MIB} status=none")
    m = mount(store)
    ok(f"cp {src} {m.path}/big", timeout=120)
    head = store.client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/big")
    assert head["ContentLength"] == SIZE_MIB << 20

    ok(f"cp {m.path}/big {back}", timeout=120)
    ok(f"cmp {src} {back}")
    peak_mb = vm_hwm_kib(m.pid) / 1024
    assert peak_mb < MAX_RSS_MB, f"daemon peak RSS {peak_mb:.0f} MB"
    # What the bucket holds is the file, byte for byte (multipart upload assembled right).
    obj = store.client.get_object(Bucket=store.bucket, Key=f"{store.prefix}/big")
    h = hashlib.sha256()
    for chunk in obj["Body"].iter_chunks(1 << 20):
        h.update(chunk)
    assert h.hexdigest() == sha256_file(src)
