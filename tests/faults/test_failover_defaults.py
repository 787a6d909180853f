"""Failover with the default settings (issue 8): a hung, a refusing and a 503-storm primary.

No STORAGEFS_* timeout is shortened here. After the fault, the first `ls -l`, the first `stat`
and the first `cat` (each of a name the mount has not seen yet, so each really goes out) answer
from the secondary within FIRST_ANSWER_BOUND with the right data; after that the primary is
known to be unwell, /.health says so, and reads do not wait for it (their times are printed).
"""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import Rig
from tests.faults.helpers import MARKS, backend_doc, health
from tests.mount.harness import Mount, MountFactory

pytestmark = MARKS

# The bound issue 8 asks for, first call included: the one timing assert of this file.
FIRST_ANSWER_BOUND = 3.0

SEED = {
    "warm/w.txt": b"warm\n",
    "f/a.txt": b"alpha\n",
    "f/b.txt": b"bravo\n" * 100,
    "f/sub/c.txt": b"charlie\n",
    "g/e.txt": b"echo\n" * 10,
    "h/i.txt": b"india\n" * 30,
    "h/j.txt": b"juliet\n",
}


def timed(m: Mount, script: str) -> tuple[float, str]:
    start = time.monotonic()
    out = m.ok(script, timeout=120)
    return time.monotonic() - start, out


@pytest.mark.parametrize("fault", ["stall", "refuse", "http503"])
def test_first_answers_within_bound_with_default_timeouts(
    rig: Rig, chain_mount: MountFactory, fault: str
) -> None:
    for store in (rig.s3, rig.azure):  # the same objects in both, behind the mount's back
        store.put_many(SEED.items())
    m = chain_mount(defaults=True)
    assert m.ok("cat warm/w.txt").encode() == SEED["warm/w.txt"]  # S3 answers before the fault
    rig.s3_proxy.set_mode(fault)

    first_ls, listing = timed(m, "ls -l f")
    assert [line.split()[-1] for line in listing.splitlines()[1:]] == ["a.txt", "b.txt", "sub"]
    first_stat, size = timed(m, "stat -c %s g/e.txt")
    assert int(size) == len(SEED["g/e.txt"])
    first_cat, text = timed(m, "cat f/sub/c.txt")
    assert text.encode() == SEED["f/sub/c.txt"]
    later_ls, listing = timed(m, "ls h")
    assert listing.split() == ["i.txt", "j.txt"]
    later_cat, text = timed(m, "cat h/i.txt")
    assert text.encode() == SEED["h/i.txt"]
    print(
        f"{fault} S3, defaults: first ls -l {first_ls:.3f} s, stat {first_stat:.3f} s,"
        f" cat {first_cat:.3f} s; later ls {later_ls:.3f} s, cat {later_cat:.3f} s"
    )
    assert max(first_ls, first_stat, first_cat) < FIRST_ANSWER_BOUND

    # The chain knows S3 is unwell (which is what lets later reads skip it), and says so.
    files = health(m.path)
    s3 = backend_doc(files, "s3")
    assert s3["unwell"] is True, s3
    assert files.state == "degraded", files.raw_status
    assert rig.s3.get("f/a.txt") == SEED["f/a.txt"]  # moto itself was never the problem
