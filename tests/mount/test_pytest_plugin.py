"""The `storagefs_mount` fixture as a user's CI runs it: the example project's own test suite
(examples/pytest-project), in a pytest of its own that finds the fixture through the installed
entry point. It must pass, and leave nothing behind -- also when a test fails while holding a
file open in the mount."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mount.harness import clean_env, is_mounted, wait_gone

pytestmark = [pytest.mark.mount, pytest.mark.s3]

SAMPLE = Path(__file__).parents[2] / "examples" / "pytest-project"


def run_sample(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    record = tmp_path / "record.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "basetemp"), *args],
        cwd=SAMPLE,
        env=clean_env({"STORAGEFS_SAMPLE_RECORD": str(record), **(env or {})}),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    lines = record.read_text().splitlines() if record.exists() else []
    return result, [json.loads(line) for line in lines]


def assert_nothing_left(tmp_path: Path, mounts: list[dict], output: str) -> None:
    assert mounts, output
    for m in mounts:
        assert not is_mounted(Path(m["path"])), (m, output)
        assert wait_gone(m["pid"], 10.0), f"daemon {m['pid']} still runs\n{output}"
        for pid in m["emulator_pids"]:
            assert wait_gone(pid, 10.0), f"emulator {pid} still runs\n{output}"
    assert str(tmp_path) not in Path("/proc/self/mounts").read_text()


def test_sample_project_passes_and_cleans_up(tmp_path: Path) -> None:
    result, mounts = run_sample(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "3 passed, 1 skipped" in result.stdout, output
    assert len(mounts) == 3 and len({m["path"] for m in mounts}) == 3, mounts
    assert len({tuple(m["emulator_pids"]) for m in mounts}) == 1  # one moto for the session
    assert_nothing_left(tmp_path, mounts, output)


def test_failing_test_still_cleans_up(tmp_path: Path) -> None:
    result, mounts = run_sample(
        tmp_path, "tests/test_fails_on_purpose.py", env={"STORAGEFS_SAMPLE_FAIL": "1"}
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 failed" in result.stdout and "this test fails on purpose" in result.stdout, output
    assert "error" not in result.stdout.splitlines()[-1], output  # no teardown error either
    assert len(mounts) == 1
    assert_nothing_left(tmp_path, mounts, output)


@pytest.mark.azure
def test_azurite_as_the_secondary(tmp_path: Path) -> None:
    if shutil.which("azurite-blob") is None:
        pytest.skip("azurite-blob is not on PATH (npm install -g azurite)")
    result, mounts = run_sample(tmp_path, "-o", "storagefs_azure=true", "-k", "a_file_written")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "1 passed" in result.stdout, output
    assert len(mounts) == 1 and len(mounts[0]["emulator_pids"]) == 2, mounts
    assert str(mounts[0]["secondary"]).startswith("azure://"), mounts
    assert_nothing_left(tmp_path, mounts, output)


def test_plugin_is_only_fixtures() -> None:
    """Installed into every pytest of the environment (ours too): it must not act on its own."""
    import storagefs.pytest_plugin as plugin

    hooks = {name for name in dir(plugin) if name.startswith("pytest_")}
    assert hooks == {"pytest_addoption"}
    source = Path(plugin.__file__).read_text()
    assert "autouse" not in source and "getfixturevalue" not in source
