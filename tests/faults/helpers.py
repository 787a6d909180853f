"""What the fault scenarios share: a tree of files with known checksums, what each store really
holds, the mount's health files, and polling with a deadline."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

from storagefs.cli import probe
from tests.mount.harness import clean_env
from tests.mount.stores import Store

T = TypeVar("T")

# Files per scenario. The acceptance figure is 1,000; 200 keeps the whole file within a few
# minutes on 2 cores. STORAGEFS_FAULT_FILES=1000 runs the full size by hand (docs/FAULTS.md).
FILES = int(os.environ.get("STORAGEFS_FAULT_FILES", "200"))
_SCALE = max(1, FILES // 200)
DRAIN_TIMEOUT = 90.0 * _SCALE  # seconds for the journal to reach every store again
# Every scenario: a real mount over both emulators, bounded as a whole.
MARKS = [
    pytest.mark.mount,
    pytest.mark.s3,
    pytest.mark.azure,
    pytest.mark.timeout(180 * _SCALE),
]
HEALTH_TIMEOUT = 10.0  # seconds for the health files to answer (they never call a store)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_tree(root: Path, count: int, seed: int) -> dict[str, str]:
    """``count`` files under ``root`` in a few directories, mostly small, a few of 100 KiB+;
    returns {relative path: sha256}."""
    rnd = random.Random(seed)
    sums: dict[str, str] = {}
    for i in range(count):
        rel = f"d{i % 7}/s{i % 3}/f{i:04d}.bin"
        size = rnd.randrange(100_000, 300_000) if i % 50 == 7 else rnd.randrange(0, 6000)
        data = rnd.randbytes(size)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sums[rel] = sha256(data)
    return sums


def tree_sums(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every regular file under ``root`` (read through whatever
    ``root`` is: a mount, when it is one)."""
    sums = {}
    for dirpath, _, names in os.walk(root, onerror=_raise):
        for name in names:
            path = Path(dirpath) / name
            sums[str(path.relative_to(root))] = sha256(path.read_bytes())
    return sums


def _raise(exc: OSError) -> None:
    raise exc  # an unreadable directory is a failure here, not something to skip


def store_sums(store: Store, under: str) -> dict[str, str]:
    """{path below ``under``: sha256} of what ``store`` holds, read with its own SDK."""
    prefix = under.rstrip("/") + "/"
    keys = [k for k in store.list_keys() if k.startswith(prefix) and not k.endswith("/")]
    return {k[len(prefix) :]: sha256(store.get(k)) for k in keys}


def missing_or_wrong(expected: Mapping[str, str], found: Mapping[str, str]) -> list[str]:
    return sorted(k for k, v in expected.items() if found.get(k) != v)


def health(mountpoint: Path) -> probe.HealthFiles:
    return probe.read_health(mountpoint, timeout=HEALTH_TIMEOUT)


def backend_doc(files: probe.HealthFiles, name: str) -> Mapping[str, Any]:
    doc = files.backends.get(name)
    assert doc is not None, f"no /.health/backends/{name}.json: {sorted(files.backends)}"
    return doc


def health_cli(mountpoint: Path) -> subprocess.CompletedProcess[str]:
    """``storagefs health MP`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "storagefs", "health", str(mountpoint)],
        capture_output=True,
        text=True,
        timeout=HEALTH_TIMEOUT + 20,
        env=clean_env({}),
        stdin=subprocess.DEVNULL,
    )


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    interval: float = 0.2,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` (and whatever
    ``describe`` says about the state) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            state = f"\n{describe()}" if describe is not None else ""
            raise AssertionError(f"{what}: not within {timeout:.0f} s{state}")
        time.sleep(interval)


def wait_drained(mountpoint: Path, timeout: float = DRAIN_TIMEOUT) -> probe.HealthFiles:
    """Poll journal.json until no entry is pending for any store."""
    last: list[probe.HealthFiles] = []

    def drained() -> probe.HealthFiles | None:
        files = health(mountpoint)
        last[:] = [files]
        return files if files.journal.get("pending_entries") == 0 else None

    return wait_for(
        "the journal drains",
        drained,
        timeout,
        interval=0.3,
        describe=lambda: f"journal.json: {dict(last[0].journal) if last else None}",
    )
