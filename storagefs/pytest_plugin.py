"""A pytest plugin for users' own CI: a real storagefs mount over a local S3 emulator.

Installed with the package (entry point ``pytest11``), so a project that has ``storagefs[pytest]``
installed gets the fixture without a line of setup::

    def test_report_lands_in_the_bucket(storagefs_mount):
        (storagefs_mount.path / "report.csv").write_text("a,b\\n")
        body = storagefs_mount.client.get_object(Bucket=storagefs_mount.bucket, Key="report.csv")
        assert body["Body"].read() == b"a,b\\n"

``storagefs_mount`` gives each test a fresh, empty bucket mounted on a fresh directory. One moto
server (and, with the ini option ``storagefs_azure = true``, one Azurite as the secondary
backend) serves the whole session. Everything is undone at the end, also when a test fails:
the mount is unmounted (lazily if the test left a file open), the daemon stopped, the bucket
deleted, the emulators stopped; emulators and daemon also die with a killed pytest.

Fixtures only: nothing here runs unless a test asks for ``storagefs_mount``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storagefs.devtools import emulators

MOUNT_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0  # a clean unmount uploads files still open with changes first
LAZY_EXIT_TIMEOUT = 5.0  # after a lazy unmount the daemon waits for files the test holds open


@dataclasses.dataclass
class StoragefsMount:
    """What a test gets: the mounted directory and the bucket behind it."""

    path: Path  # the mountpoint: use it like any directory
    bucket: str
    client: Any  # a boto3 S3 client for the emulator, to check or seed the bucket directly
    endpoint_url: str
    env: dict[str, str]  # STORAGEFS_* and AWS_* of this mount, e.g. to run `storagefs` commands
    pid: int  # the daemon's
    log_path: Path
    emulator_pids: list[int]
    azure_container: str | None = None
    azure_connection_string: str | None = dataclasses.field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "storagefs_azure",
        "storagefs_mount: add an Azurite container as the secondary backend",
        type="bool",
        default=False,
    )


@dataclasses.dataclass
class _Emulators:
    moto: emulators.EmulatorProcess
    azurite: emulators.EmulatorProcess | None


@pytest.fixture(scope="session")
def storagefs_emulators(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[_Emulators]:
    """The session's moto server (and Azurite when ``storagefs_azure`` is set)."""
    state = tmp_path_factory.mktemp("storagefs-emulators")
    started: list[emulators.EmulatorProcess] = []
    try:
        moto = emulators.start_moto(
            state / "moto", emulators.free_port(), buckets=(), die_with_parent=True
        )
        started.append(moto)
        azurite = None
        if pytestconfig.getini("storagefs_azure"):
            azurite = emulators.start_azurite(
                state / "azurite", emulators.free_port(), containers=(), die_with_parent=True
            )
            started.append(azurite)
        yield _Emulators(moto, azurite)
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture
def storagefs_mount(
    storagefs_emulators: _Emulators, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StoragefsMount]:
    """A fresh bucket mounted with storagefs; unmounted and removed after the test."""
    import boto3

    if shutil.which("fusermount3") is None or not Path("/dev/fuse").exists():
        pytest.skip("storagefs_mount needs FUSE: /dev/fuse and fusermount3 (apt-get install fuse3)")
    work = tmp_path_factory.mktemp("storagefs")
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    moto = storagefs_emulators.moto
    emulators.create_bucket(moto.url, bucket)
    env = {
        "STORAGEFS_PRIMARY": f"s3://{bucket}",
        "STORAGEFS_S3_ENDPOINT_URL": moto.url,
        "STORAGEFS_CACHE_DIR": str(work / "cache"),
        **emulators.FAKE_AWS_ENV,
    }
    container = conn = None
    azurite = storagefs_emulators.azurite
    if azurite is not None:
        container = bucket
        conn = emulators.azurite_connection_string(azurite.port)
        emulators.create_container(conn, container)
        env["STORAGEFS_SECONDARY"] = f"azure://{container}"
        env["STORAGEFS_AZURE_CONNECTION_STRING"] = conn
    client = boto3.client(
        "s3",
        endpoint_url=moto.url,
        aws_access_key_id=emulators.FAKE_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=emulators.FAKE_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=emulators.FAKE_AWS_ENV["AWS_DEFAULT_REGION"],
    )
    mountpoint = work / "mnt"
    mountpoint.mkdir()
    daemon = _start_daemon(mountpoint, env, work / "daemon.log")
    try:
        yield StoragefsMount(
            path=mountpoint,
            bucket=bucket,
            client=client,
            endpoint_url=moto.url,
            env=env,
            pid=daemon.pid,
            log_path=work / "daemon.log",
            emulator_pids=[p.pid for p in (moto, azurite) if p is not None and p.pid],
            azure_container=container,
            azure_connection_string=conn,
        )
    finally:
        problem = _stop_daemon(daemon, mountpoint)
        with contextlib.suppress(Exception):
            emulators.delete_bucket(moto.url, bucket)
        if azurite is not None and conn is not None and container is not None:
            with contextlib.suppress(Exception):
                emulators.delete_container(conn, container)
    if problem:
        pytest.fail(f"storagefs_mount: {problem}\n--- daemon log ---\n{_tail(work / 'daemon.log')}")


def _start_daemon(mountpoint: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    # The user's own STORAGEFS_* must not change what the test mounts.
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STORAGEFS_")}
    full_env.update(env, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "storagefs", "mount", str(mountpoint), "--foreground"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=full_env,
            cwd=mountpoint.parent,
            preexec_fn=emulators._die_with_parent(),  # SIGTERM: it unmounts on the way out
        )
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not _is_mounted(mountpoint):
        if daemon.poll() is not None or time.monotonic() > deadline:
            _stop_daemon(daemon, mountpoint)
            pytest.fail(f"storagefs_mount: no mount on {mountpoint}:\n{_tail(log_path)}")
        time.sleep(0.05)
    return daemon


def _stop_daemon(daemon: subprocess.Popen[bytes], mountpoint: Path) -> str | None:
    """Unmount and wait for the daemon; a description of what went wrong, if anything did."""
    problem = None
    wait = EXIT_TIMEOUT
    if daemon.poll() is not None and _is_mounted(mountpoint):
        problem = f"the daemon died while mounted (exit {daemon.returncode})"
    if _is_mounted(mountpoint) and _fusermount("-u", mountpoint) != 0:
        # Busy: the test left a file open (a traceback keeps its frame alive). Detach now;
        # the daemon ends when the last file is closed, or by SIGTERM below.
        _fusermount("-u", "-z", mountpoint)
        wait = LAZY_EXIT_TIMEOUT
    try:
        daemon.wait(wait)
    except subprocess.TimeoutExpired:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
            problem = problem or "the daemon did not exit; killed"
    if _is_mounted(mountpoint):
        _fusermount("-u", "-z", mountpoint)
    return problem


def _fusermount(*args: str | Path) -> int:
    tool = shutil.which("fusermount3") or "fusermount3"
    return subprocess.run([tool, *map(str, args)], capture_output=True).returncode


def _is_mounted(path: Path) -> bool:
    from storagefs.mounts_table import is_mounted

    return is_mounted(path)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
