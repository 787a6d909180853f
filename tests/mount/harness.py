"""The pieces of a mount test that are not fixtures: the daemon process, shell helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from storagefs.mounts_table import is_mounted

FUSERMOUNT = shutil.which("fusermount3")
CHECKOUT = Path(__file__).resolve().parents[2]  # the checkout these tests belong to
MOUNT_TIMEOUT = 30.0  # seconds for the mount to appear (imports + backend open)
EXIT_TIMEOUT = 30.0  # seconds for the daemon to exit after the unmount (uploads dirty files)
# Lines in a daemon log that mean a bug, whatever the shell tools saw.
BAD_LOG_MARKERS = ("unexpected error", "Traceback (most recent call last)")

FUSERMOUNT = shutil.which("fusermount3")


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment without any STORAGEFS_* of the developer's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORAGEFS_")}
    env["LC_ALL"] = "C"  # shell tools' error messages in English
    # The daemons run from a neutral cwd, where the venv's editable install would import the
    # package from wherever it was installed (another checkout or worktree): the code under
    # test comes first.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH", "")) if p
    )
    env.update(extra)
    return env


def sh(
    script: str, cwd: Path | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with bash; output captured as text. Never raises on failure."""
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env({}),
    )


def ok(script: str, cwd: Path | None = None, timeout: float = 120.0) -> str:
    """Run ``script`` and return its stdout; fail the test with both outputs if it failed."""
    result = sh(script, cwd, timeout)
    if result.returncode != 0:
        pytest.fail(
            f"`{script}` exited {result.returncode}\nstdout: {result.stdout[-2000:]}"
            f"\nstderr: {result.stderr[-2000:]}"
        )
    return result.stdout


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a process (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


class Mount:
    def __init__(self, path: Path, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.path = path
        self.proc = proc
        self.log_path = log_path
        self.unmounted = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def sh(self, script: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return sh(script, self.path, timeout)

    def ok(self, script: str, timeout: float = 120.0) -> str:
        return ok(script, self.path, timeout)

    def wait_live(self) -> None:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(self.path):
            if self.proc.poll() is not None:
                self.unmounted = True  # nothing left to unmount: the finalizer has no more to say
                pytest.fail(
                    f"the daemon exited with {self.proc.returncode} before mounting:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                self.unmounted = True
                self._stop_process()
                pytest.fail(f"no mount on {self.path} within {MOUNT_TIMEOUT:.0f} s:\n{self.log()}")
            time.sleep(0.05)

    def unmount(self) -> None:
        """Unmount, wait for the daemon, and fail unless all of that went cleanly."""
        if self.unmounted:
            return
        problems: list[str] = []
        if self.proc.poll() is not None:
            problems.append(f"the daemon died while mounted (exit {self.proc.returncode})")
        elif is_mounted(self.path):
            assert FUSERMOUNT is not None
            result = subprocess.run(
                [FUSERMOUNT, "-u", str(self.path)], capture_output=True, text=True
            )
            if result.returncode != 0:
                problems.append(f"fusermount3 -u failed: {result.stderr.strip()}")
                subprocess.run([FUSERMOUNT, "-u", "-z", str(self.path)], capture_output=True)
        self.wait_exit(problems)

    def wait_exit(self, problems: list[str] | None = None) -> None:
        """Wait for a daemon that was told to stop (unmount, signal); fail unless it exited 0,
        removed its mount and logged no unexpected error."""
        self.unmounted = True
        problems = list(problems or [])
        try:
            code = self.proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._stop_process()
            problems.append(f"the daemon did not exit within {EXIT_TIMEOUT:.0f} s")
        else:
            if code != 0 and not problems:
                problems.append(f"the daemon exited with {code}")
        if is_mounted(self.path):
            problems.append(f"{self.path} is still mounted after the daemon exited")
            self._stop_process()
        log = self.log()
        bad = [m for m in BAD_LOG_MARKERS if m in log]
        if bad:
            problems.append(f"the daemon log contains {bad}")
        if problems:
            pytest.fail("; ".join(problems) + f"\n--- daemon log ---\n{log[-6000:]}")

    def _stop_process(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if is_mounted(self.path) and FUSERMOUNT is not None:
            subprocess.run([FUSERMOUNT, "-u", "-z", str(self.path)], capture_output=True)


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# mount(store, *, options=(), env=None, mountpoint=None, cache_dir=None) -> Mount
MountFactory = Callable[..., Mount]


# Backend kinds for the ``store`` fixture, marked so `-m "not azure"` and friends select them:
#   @pytest.mark.parametrize("store", [LOCAL, S3], indirect=True)
LOCAL = pytest.param("local", id="local")
S3 = pytest.param("s3", id="s3", marks=pytest.mark.s3)
AZURE = pytest.param("azure", id="azure", marks=pytest.mark.azure)
