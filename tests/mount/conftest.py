"""A real FUSE mount in a subprocess, over each backend kind, always cleaned up.

``mount(store)`` starts ``python -m storagefs mount MP --foreground``, waits until MP shows in
/proc/self/mounts (failing at once, with the daemon's log, if the daemon died), and hands back a
:class:`Mount`. Every mount is unmounted in the finalizer, also when the test failed:
``fusermount3 -u``, then a lazy ``-u -z`` if that failed, then SIGTERM and SIGKILL. A daemon
that crashed, exited non-zero after a clean unmount, or logged an unexpected error fails the
test: the adapter answers EIO to such errors, and a shell tool alone could miss them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.mount.harness import (
    AZURE,
    FUSERMOUNT,
    LOCAL,
    S3,
    Mount,
    MountFactory,
    clean_env,
    is_mounted,
    wait_gone,
)
from tests.mount.stores import AzureStore, LocalStore, S3Store, Store


@pytest.fixture(autouse=True)
def _need_fuse() -> None:
    if not Path("/dev/fuse").exists():
        pytest.skip("/dev/fuse is missing: FUSE mounts are not possible here")
    if FUSERMOUNT is None:
        pytest.skip("fusermount3 is not installed (apt-get install fuse3)")


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[MountFactory]:
    """``mount(store, options=(), env={}, mountpoint=None, cache_dir=None) -> Mount``.

    The cache directory defaults to one per test, so a second mount in the same test (a
    remount) finds the first one's cache, as a user's would."""
    mounts: list[Mount] = []
    counter = 0

    def start(
        store: Store,
        *,
        options: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        mountpoint: Path | None = None,
        cache_dir: Path | None = None,
    ) -> Mount:
        nonlocal counter
        counter += 1
        mp = mountpoint or tmp_path / "mnt"
        mp.mkdir(exist_ok=True)
        log_path = tmp_path / f"daemon-{counter}.log"
        full_env = clean_env(
            {
                "STORAGEFS_PRIMARY": store.url,
                "STORAGEFS_CACHE_DIR": str(cache_dir or tmp_path / "cache"),
                "PYTHONUNBUFFERED": "1",
                **store.env,
                **(env or {}),
            }
        )
        argv = [sys.executable, "-m", "storagefs", "mount", str(mp), "--foreground"]
        for opt in options:
            argv += ["-o", opt]
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=full_env,
                cwd=tmp_path,  # python -m puts the cwd first on sys.path: keep it neutral
            )
        m = Mount(mp, proc, log_path)
        mounts.append(m)
        m.wait_live()
        return m

    yield start
    failures: list[str] = []
    for m in mounts:
        try:
            m.unmount()
        except pytest.fail.Exception as exc:
            failures.append(str(exc))
        finally:
            m._stop_process()
    if failures:
        pytest.fail("\n\n".join(failures))


# --- stores, one per backend kind ------------------------------------------------------


def _azure_available() -> bool:
    return importlib.util.find_spec("storagefs.backends.azure") is not None


@pytest.fixture(params=[LOCAL, S3, AZURE])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The store under the mount; tests narrow the kinds with
    ``@pytest.mark.parametrize("store", [LOCAL, S3], indirect=True)``."""
    kind: str = request.param
    if kind == "local":
        root = tmp_path / "bucket"
        root.mkdir()
        return LocalStore(root)
    if kind == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        return S3Store(bucket.endpoint_url, bucket.bucket, "data")
    if kind == "azure":
        if not _azure_available():
            pytest.skip("storagefs/backends/azure.py is not there yet")
        container = request.getfixturevalue("azure_container")
        return AzureStore(container.connection_string, container.container, "data")
    raise AssertionError(f"unknown store kind {kind}")


@pytest.fixture
def background_mounts() -> Iterator[list[tuple[Path, int]]]:
    """(mountpoint, daemon pid) of mounts a test made with the CLI's background mode; whatever
    the test left mounted is unmounted and its daemon stopped here."""
    made: list[tuple[Path, int]] = []
    yield made
    for path, pid in made:
        if is_mounted(path) and FUSERMOUNT is not None:
            result = subprocess.run([FUSERMOUNT, "-u", str(path)], capture_output=True)
            if result.returncode != 0:
                subprocess.run([FUSERMOUNT, "-u", "-z", str(path)], capture_output=True)
        if wait_gone(pid, 10.0):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
