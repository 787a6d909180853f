"""``storagefs sync --primary URL --secondary URL`` as a user runs it (local directories)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.mount.harness import clean_env


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env({"STORAGEFS_CACHE_DIR": str(tmp_path / "cache")})
    return subprocess.run(
        [sys.executable, "-m", "storagefs", "sync", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_sync_between_two_directories(tmp_path: Path) -> None:
    primary, secondary = tmp_path / "primary", tmp_path / "secondary"
    (primary / "docs").mkdir(parents=True)
    secondary.mkdir()
    (primary / "docs" / "a.txt").write_text("alpha")
    (primary / "b.bin").write_bytes(b"\0" * 1000)
    urls = ["--primary", f"file://{primary}", "--secondary", f"file://{secondary}"]

    dry = run(tmp_path, *urls, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would copy docs/a.txt" in dry.stdout
    assert not (secondary / "docs" / "a.txt").exists()

    done = run(tmp_path, *urls)
    assert done.returncode == 0, done.stderr
    assert "the secondary holds everything" in done.stdout
    assert (secondary / "docs" / "a.txt").read_text() == "alpha"
    assert (secondary / "b.bin").read_bytes() == b"\0" * 1000

    again = run(tmp_path, *urls)
    assert again.returncode == 0
    assert "0 object(s), 0 B copied" in again.stdout


def test_sync_needs_a_secondary(tmp_path: Path) -> None:
    result = run(tmp_path, "--primary", f"file://{tmp_path}")
    assert result.returncode == 2
    assert result.stderr.startswith("storagefs: error: sync needs a secondary")


def test_sync_of_a_path_that_is_not_mounted(tmp_path: Path) -> None:
    result = run(tmp_path, str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == f"storagefs: error: {tmp_path} is not mounted\n"
