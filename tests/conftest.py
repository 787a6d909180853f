"""Session-wide test fixtures.

Emulators: the session runs its own moto server and Azurite on free ports in a temporary
directory (never a developer's running ones, which use the fixed ports) and stops them at the
end; they also die with the pytest process if it is killed. Tests that kill or pause an
emulator must start their own with :func:`storagefs.emulators.start_moto` /
:func:`storagefs.emulators.start_azurite`, not touch these shared ones.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from storagefs.devtools import emulators
from storagefs.devtools.emulators import EmulatorProcess


class S3Bucket(NamedTuple):
    endpoint_url: str
    bucket: str


class AzureContainer(NamedTuple):
    connection_string: str
    container: str


def unique_name(prefix: str = "test") -> str:
    """A bucket/container name valid for both S3 and Azure (lowercase, digits, dashes)."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment() -> Iterator[None]:
    # Tests talk only to local emulators: fake credentials, and nothing of the developer's
    # own setup (AWS profiles and config files, real keys, STORAGEFS_* variables left over
    # from `eval "$(scripts/emulators env)"`) may leak into a test.
    with pytest.MonkeyPatch.context() as mp:
        for var in list(os.environ):
            if var.startswith(("STORAGEFS_", "AZURE_STORAGE_")):
                mp.delenv(var)
        for var in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_REGION",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
        ):
            mp.delenv(var, raising=False)
        for var, value in emulators.FAKE_AWS_ENV.items():
            mp.setenv(var, value)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="session")
def emulator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulators")


@pytest.fixture(scope="session")
def moto_server(emulator_dir: Path) -> Iterator[EmulatorProcess]:
    proc = emulators.start_moto(
        emulator_dir / "moto", emulators.free_port(), buckets=(), die_with_parent=True
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def azurite_server(emulator_dir: Path) -> Iterator[EmulatorProcess]:
    if shutil.which("azurite-blob") is None:
        pytest.skip("azurite-blob is not on PATH (npm install -g azurite)")
    proc = emulators.start_azurite(
        emulator_dir / "azurite", emulators.free_port(), containers=(), die_with_parent=True
    )
    yield proc
    proc.stop()


@pytest.fixture
def s3_bucket(moto_server: EmulatorProcess) -> Iterator[S3Bucket]:
    """A fresh, empty bucket in the session's moto server, emptied and removed afterwards."""
    bucket = unique_name()
    emulators.create_bucket(moto_server.url, bucket)
    yield S3Bucket(moto_server.url, bucket)
    if moto_server.running():  # moto holds everything in memory: give it back
        emulators.delete_bucket(moto_server.url, bucket)


@pytest.fixture
def azure_container(azurite_server: EmulatorProcess) -> Iterator[AzureContainer]:
    """A fresh, empty container in the session's Azurite, removed afterwards."""
    container = unique_name()
    conn = emulators.azurite_connection_string(azurite_server.port)
    emulators.create_container(conn, container)
    yield AzureContainer(conn, container)
    if azurite_server.running():
        emulators.delete_container(conn, container)


# --- CI: nothing may be skipped for want of a tool -------------------------------------------
# Without Node (Azurite) or FUSE the emulator, mount and fault tiers skip themselves, which is
# right on a developer's laptop and wrong in CI: there a skip would pass a run that tested
# nothing of the failover. `.ci/run` sets STORAGEFS_TEST_REQUIRE_ALL=1; then any skipped test,
# or a run in which no fault test passed at all, fails the session.
# A skip whose reason starts with NOT_APPLICABLE is by design (a case that cannot exist for
# one parameter), not for want of a tool, and does not count.
REQUIRE_ALL = "STORAGEFS_TEST_REQUIRE_ALL"
NOT_APPLICABLE = "n/a:"
_skipped: list[str] = []
_fault_tests_passed = 0


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _fault_tests_passed
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        if not reason.startswith(f"Skipped: {NOT_APPLICABLE}"):
            _skipped.append(report.nodeid)
    elif report.when == "call" and report.passed and report.nodeid.startswith("tests/faults/"):
        _fault_tests_passed += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get(REQUIRE_ALL) != "1" or session.config.option.collectonly:
        return
    problems = [f"skipped: {nodeid}" for nodeid in _skipped]
    collected_faults = any(item.nodeid.startswith("tests/faults/") for item in session.items)
    if collected_faults and _fault_tests_passed == 0:
        problems.append("no test of the fault tier (tests/faults/) passed")
    if problems:
        print(f"\n{REQUIRE_ALL}=1 and the run was incomplete:", *problems, sep="\n  ")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
