"""Errors that say what is wrong, without a mount: one line, the right name, the right code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from storagefs.config import ConfigError, check_variables
from tests.mount.harness import clean_env


def storagefs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "storagefs", *args],
        capture_output=True, text=True, timeout=60, env=clean_env(env or {}),
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def one_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("storagefs: error: "), result.stderr
    return lines[0]


def test_a_misspelled_variable_names_the_closest_setting(tmp_path: Path) -> None:
    line = one_line(storagefs("mount", str(tmp_path), env={"STORAGEFS_CACHEDIR": "/x"}))
    assert "unknown variable STORAGEFS_CACHEDIR: did you mean STORAGEFS_CACHE_DIR?" in line


def test_variable_check() -> None:
    with pytest.raises(ConfigError, match="did you mean STORAGEFS_METADATA_TTL"):
        check_variables({"STORAGEFS_METADATA_TLL": "3"})
    with pytest.raises(ConfigError, match="unknown variable STORAGEFS_XYZZY"):
        check_variables({"STORAGEFS_XYZZY": "1"})
    # Settings, lowercase spellings of them, and the tools' own variables are fine.
    check_variables(
        {
            "STORAGEFS_PRIMARY": "file:///x",
            "storagefs_log_level": "DEBUG",
            "STORAGEFS_EMULATOR_S3_PORT": "4566",
            "STORAGEFS_FAULT_FILES": "1000",
            "HOME": "/root",
        }
    )


def test_a_bad_flag_value_names_the_flag(tmp_path: Path) -> None:
    line = one_line(storagefs("mount", str(tmp_path), "--log-level", "LOUD"))
    assert "invalid --log-level 'LOUD'" in line
    line = one_line(storagefs("flush", str(tmp_path), "--timeout", "abc"))
    assert "'--timeout'" in line


def test_mount_without_a_mountpoint_is_one_line() -> None:
    line = one_line(storagefs("mount"))
    assert "Missing argument 'MOUNTPOINT'" in line


def test_health_usage_errors_are_not_down() -> None:
    # 2 means "down" to a probe: a usage error must not look like one.
    line = one_line(storagefs("health", "--timeout", "x"), code=64)
    assert "'--timeout'" in line
