"""The command line with real mounts: bad input ends in one clear line and exit 2; background
mounts, `storagefs unmount` and SIGTERM stop the daemon cleanly without losing data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storagefs.devtools import emulators
from tests.mount.harness import (
    LOCAL,
    S3,
    MountFactory,
    clean_env,
    is_mounted,
    ok,
    process_alive,
    wait_gone,
)
from tests.mount.stores import Store

pytestmark = pytest.mark.mount

CLI_TIMEOUT = 60.0
UNREACHABLE_WITHIN = 10.0


def storagefs(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "storagefs", *args],
        env=clean_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    err = result.stderr
    assert result.returncode == 2, (result.returncode, err)
    assert "Traceback" not in err + result.stdout, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("storagefs: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def local_env(tmp_path: Path) -> dict[str, str]:
    root = tmp_path / "bucket"
    root.mkdir()
    return {"STORAGEFS_PRIMARY": f"file://{root}", "STORAGEFS_CACHE_DIR": str(tmp_path / "cache")}


@pytest.mark.s3
@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
def test_bad_input_one_line_exit_2(
    tmp_path: Path,
    local_env: dict[str, str],
    moto_server: emulators.EmulatorProcess,
    background: bool,
) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("")
    fg = [] if background else ["--foreground"]
    moto = {**local_env, "STORAGEFS_S3_ENDPOINT_URL": moto_server.url}
    cases: list[tuple[list[str], dict[str, str], tuple[str, ...]]] = [
        (["mount", str(tmp_path / "nope"), *fg], local_env, ("does not exist",)),
        (["mount", str(afile), *fg], local_env, ("not a directory",)),
        (["mount", str(mp), "--primary", "bogus://x", *fg], local_env, ("bogus",)),
        (["mount", str(mp), "--primary", "s3://", *fg], local_env, ("bucket",)),
        (
            ["mount", str(mp), "--primary", f"file://{tmp_path}/missing-dir", *fg],
            local_env,
            ("missing-dir",),
        ),
        (
            ["mount", str(mp), "--primary", "s3://no-such-bucket-here", *fg],
            moto,
            ("no-such-bucket-here", "does not exist"),
        ),
        (
            ["mount", str(mp), *fg],
            {**local_env, "STORAGEFS_METADATA_TTL": "soon"},
            ("STORAGEFS_METADATA_TTL",),
        ),
        (
            ["mount", str(mp), *fg],
            {**local_env, "STORAGEFS_LOG_LEVEL": "LOUD"},
            ("STORAGEFS_LOG_LEVEL",),
        ),
        (["mount", str(mp), "-o", "ro,,=x", *fg], local_env, ("option",)),
    ]
    wrong = []
    for args, env, needles in cases:
        result = storagefs(args, env, tmp_path)
        try:
            assert_one_line_error(result, *needles)
        except AssertionError as exc:
            wrong.append(f"{' '.join(args)}: {exc}")
        assert not is_mounted(mp)
    assert not wrong, "\n".join(wrong)


def test_unreachable_endpoint_fails_fast(tmp_path: Path, local_env: dict[str, str]) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    closed = emulators.free_port()  # nobody listens: connections are refused
    env = {**local_env, "STORAGEFS_S3_ENDPOINT_URL": f"http://127.0.0.1:{closed}"}
    start = time.monotonic()
    result = storagefs(["mount", str(mp), "--primary", "s3://bucket"], env, tmp_path)
    elapsed = time.monotonic() - start
    assert_one_line_error(result, f"127.0.0.1:{closed}")
    assert elapsed < UNREACHABLE_WITHIN


def test_unreachable_azure_keeps_the_key_secret(tmp_path: Path, local_env: dict[str, str]) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    conn = emulators.azurite_connection_string(emulators.free_port())
    env = {**local_env, "STORAGEFS_AZURE_CONNECTION_STRING": conn}
    start = time.monotonic()
    result = storagefs(["mount", str(mp), "--primary", "azure://container"], env, tmp_path)
    assert time.monotonic() - start < UNREACHABLE_WITHIN
    assert_one_line_error(result)
    assert emulators.AZURITE_KEY not in result.stderr + result.stdout
    assert emulators.AZURITE_KEY[:20] not in result.stderr + result.stdout


@pytest.mark.parametrize("store", [LOCAL], indirect=True)
def test_already_mounted(store: Store, mount: MountFactory, tmp_path: Path) -> None:
    m = mount(store)
    env = {"STORAGEFS_PRIMARY": store.url, **store.env}
    for fg in ([], ["--foreground"]):
        result = storagefs(["mount", str(m.path), *fg], env, tmp_path)
        assert_one_line_error(result, "already mounted")
    m.ok("echo still-works > f")
    assert store.get("f") == b"still-works\n"


@pytest.mark.parametrize("store", [LOCAL, S3], indirect=True)
def test_background_mount_then_unmount(
    store: Store, tmp_path: Path, background_mounts: list[tuple[Path, int]]
) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = {
        "STORAGEFS_PRIMARY": store.url,
        "STORAGEFS_CACHE_DIR": str(tmp_path / "cache"),
        **store.env,
    }
    result = storagefs(["mount", str(mp)], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert is_mounted(mp)
    # "storagefs: mounted on MP (pid N, log PATH)"
    pid = int(result.stdout.split("(pid ")[1].split(",")[0])
    log = Path(result.stdout.split(" log ")[1].rstrip(")\n"))
    background_mounts.append((mp, pid))
    assert process_alive(pid)

    ok(f"echo hello > {mp}/f && mkdir {mp}/d")
    result = storagefs(["unmount", str(mp)], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert wait_gone(pid, 30.0), "the daemon is still running after the unmount"
    assert not is_mounted(mp)
    assert store.get("f") == b"hello\n"
    text = log.read_text()
    assert "unmounted" in text
    assert "unexpected error" not in text and "Traceback" not in text, text

    again = storagefs(["unmount", str(mp)], env, tmp_path)
    assert_one_line_error(again, "not mounted")


def test_sigterm_unmounts_and_uploads_open_files(
    store: Store, mount: MountFactory, tmp_path: Path
) -> None:
    m = mount(store)
    m.ok("echo closed > closed.txt")
    # A writer that wrote but never closed: its data sits in the daemon's staging file.
    writer = subprocess.Popen(
        ["bash", "-c", "exec 3>open.txt; printf 'still open' >&3; exec sleep 60"],
        cwd=m.path,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while m.sh("stat -c %s open.txt").stdout != f"{len('still open')}\n":
            assert time.monotonic() < deadline, "the writer's data never arrived"
            time.sleep(0.05)
        os.kill(m.pid, signal.SIGTERM)
        m.wait_exit()  # exit 0, mount gone, nothing unexpected logged
    finally:
        writer.kill()
        writer.wait()
    assert store.get("closed.txt") == b"closed\n"
    assert store.get("open.txt") == b"still open"
