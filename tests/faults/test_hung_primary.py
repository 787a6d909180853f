"""A hung primary (the proxy accepts and never answers): `ls` and `cat` answer from Azure within
a bounded time instead of hanging, and at once when S3's breaker is open."""

from __future__ import annotations

import time

from tests.faults.conftest import (
    BREAKER_FAILURES,
    OPERATION_DEADLINE,
    REQUEST_TIMEOUT,
    RETRY_ATTEMPTS,
    RETRY_MAX_BACKOFF,
    Rig,
)
from tests.faults.helpers import MARKS, backend_doc, health
from tests.mount.harness import Mount, MountFactory

pytestmark = MARKS

# The worst case of one failed operation in storagefs.resilience: every attempt runs out its
# timeout and the longest backoff separates them, unless the operation deadline cuts it first.
# (Seeded objects are tiny, so the size allowance of transfer timeouts adds nothing.)
OPERATION_WORST = min(
    RETRY_ATTEMPTS * REQUEST_TIMEOUT + (RETRY_ATTEMPTS - 1) * RETRY_MAX_BACKOFF,
    max(OPERATION_DEADLINE, REQUEST_TIMEOUT),
)
# A command may have to wait out up to BREAKER_FAILURES failed operations in a row before the
# breaker opens (a lookup HEADs the name, then lists name/: two). After that S3 is not asked.
# Slack for process start-up and a loaded machine.
FIRST_ANSWER_BOUND = BREAKER_FAILURES * OPERATION_WORST + 2.0
# Once S3 is avoided (breaker open, or the chain asking it last), it is not even asked: well
# under one attempt's timeout.
OPEN_BREAKER_BOUND = REQUEST_TIMEOUT
LONG_RESET = 60.0  # the breaker stays open for the whole test: no probe gets in the way

SEED = {
    "hung/a.txt": b"alpha\n",
    "hung/b.txt": b"bravo\n" * 100,
    "hung/sub/c.txt": b"charlie\n",
    "hung/sub/d.txt": b"delta\n" * 50,
}


def timed(m: Mount, script: str) -> tuple[float, str]:
    start = time.monotonic()
    out = m.ok(script, timeout=FIRST_ANSWER_BOUND * 4)
    return time.monotonic() - start, out


def test_hung_primary_answers_from_secondary(rig: Rig, chain_mount: MountFactory) -> None:
    for store in (rig.s3, rig.azure):  # the same objects in both, behind the mount's back
        store.put_many(SEED.items())
    m = chain_mount(env={"STORAGEFS_BREAKER_RESET": str(LONG_RESET)})
    rig.s3_proxy.set_mode("stall")

    first_ls, listing = timed(m, "ls -1 hung")
    assert listing.split() == ["a.txt", "b.txt", "sub"]
    first_cat, text = timed(m, "cat hung/a.txt")
    assert text.encode() == SEED["hung/a.txt"]
    print(f"hung S3: first ls {first_ls:.2f} s, first cat {first_cat:.2f} s")
    assert first_ls < FIRST_ANSWER_BOUND
    assert first_cat < FIRST_ANSWER_BOUND

    files = health(m.path)
    s3 = backend_doc(files, "s3")
    # S3 is avoided from here on: by its open breaker, or (sooner) by the chain, which asks a
    # remote that just failed last for breaker_reset seconds. Either way it is not available.
    assert s3["breaker"] == "open" or s3["available"] is False, s3
    assert s3["stats"]["timeouts"] > 0, s3  # it was the timeouts, not refusals
    assert files.state == "degraded", files.raw_status

    second_ls, listing = timed(m, "ls -1 hung/sub")
    assert listing.split() == ["c.txt", "d.txt"]
    second_cat, text = timed(m, "cat hung/b.txt")
    assert text.encode() == SEED["hung/b.txt"]
    print(f"breaker open: ls {second_ls:.2f} s, cat {second_cat:.2f} s")
    assert second_ls < min(first_ls, OPEN_BREAKER_BOUND)
    assert second_cat < OPEN_BREAKER_BOUND
    assert rig.s3.get("hung/a.txt") == SEED["hung/a.txt"]  # moto itself was never the problem


def test_hung_primary_mid_read(rig: Rig, chain_mount: MountFactory) -> None:
    """Names already known, so `cat` goes straight to reading content, and that read hangs."""
    for store in (rig.s3, rig.azure):
        store.put_many(SEED.items())
    m = chain_mount(
        env={
            "STORAGEFS_BREAKER_RESET": str(LONG_RESET),
            "STORAGEFS_BREAKER_FAILURES": "1",
            "STORAGEFS_METADATA_TTL": "60",  # lookups answered from memory: only reads go out
        }
    )
    assert m.ok("ls -l hung/sub | wc -l").strip() == "3"
    rig.s3_proxy.set_mode("stall")

    first, text = timed(m, "cat hung/sub/c.txt")
    assert text.encode() == SEED["hung/sub/c.txt"]
    second, text = timed(m, "cat hung/sub/d.txt")
    assert text.encode() == SEED["hung/sub/d.txt"]
    print(f"hung S3 mid-read: first cat {first:.2f} s, second {second:.2f} s")
    assert first < OPERATION_WORST + 2.0
    assert first > REQUEST_TIMEOUT  # it really waited for S3 (else the read never went there)
    assert second < OPEN_BREAKER_BOUND
    assert backend_doc(health(m.path), "s3")["breaker"] == "open"
