"""A hung primary (the proxy accepts and never answers) in the middle of reading, with the
default timeouts: names already known, so `cat` goes straight to reading content, and that read
hangs. The chain asks Azure once S3 has not answered within its hedge delay, and from then on
asks S3 last. (The first ls/stat/cat after the fault: test_failover_defaults.py.)"""

from __future__ import annotations

import time

from tests.faults.conftest import Rig
from tests.faults.helpers import MARKS, backend_doc, health
from tests.mount.harness import Mount, MountFactory

pytestmark = MARKS

FIRST_ANSWER_BOUND = 3.0  # seconds, issue 8's bound for the first answer after the fault

SEED = {
    "hung/a.txt": b"alpha\n",
    "hung/b.txt": b"bravo\n" * 100,
    "hung/sub/c.txt": b"charlie\n",
    "hung/sub/d.txt": b"delta\n" * 50,
}


def timed(m: Mount, script: str) -> tuple[float, str]:
    start = time.monotonic()
    out = m.ok(script, timeout=120)
    return time.monotonic() - start, out


def test_hung_primary_mid_read(rig: Rig, chain_mount: MountFactory) -> None:
    for store in (rig.s3, rig.azure):
        store.put_many(SEED.items())
    # Lookups answered from memory for the whole test: only the reads of content go out.
    m = chain_mount(defaults=True, env={"STORAGEFS_METADATA_TTL": "600"})
    assert m.ok("ls -l hung/sub | wc -l").strip() == "3"
    rig.s3_proxy.set_mode("stall")

    first, text = timed(m, "cat hung/sub/c.txt")
    assert text.encode() == SEED["hung/sub/c.txt"]
    second, text = timed(m, "cat hung/sub/d.txt")
    assert text.encode() == SEED["hung/sub/d.txt"]
    print(f"hung S3 mid-read, defaults: first cat {first:.3f} s, second {second:.3f} s")
    assert first < FIRST_ANSWER_BOUND

    files = health(m.path)
    s3 = backend_doc(files, "s3")
    assert s3["unwell"] is True, s3
    assert files.state == "degraded", files.raw_status
    assert rig.s3.get("hung/a.txt") == SEED["hung/a.txt"]  # moto itself was never the problem
