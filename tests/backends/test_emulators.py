"""scripts/emulators and the storagefs.emulators API, with real processes on free ports."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from storagefs.devtools import emulators
from storagefs.devtools.emulators import EmulatorError, EmulatorProcess

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "emulators"
needs_azurite = pytest.mark.skipif(
    shutil.which("azurite-blob") is None, reason="azurite-blob is not on PATH"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for the CLI: its own state directory and free ports; stops what it left."""
    env = {
        **os.environ,
        "STORAGEFS_EMULATOR_DIR": str(tmp_path / "state"),
        "STORAGEFS_EMULATOR_S3_PORT": str(emulators.free_port()),
        "STORAGEFS_EMULATOR_AZURE_PORT": str(emulators.free_port()),
        "VIRTUAL_ENV": str(Path(sys.executable).parent.parent),
    }
    yield env
    subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=30)


def _cli(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=60
    )


def _pids(state: Path) -> dict[str, int]:
    return {p.stem: int(json.loads(p.read_text())["pid"]) for p in sorted(state.glob("*.pid"))}


@needs_azurite
def test_cli_start_twice_status_stop(cli_env: dict[str, str]) -> None:
    state = Path(cli_env["STORAGEFS_EMULATOR_DIR"])
    assert _cli(cli_env, "status").returncode == 1  # nothing yet

    first = _cli(cli_env, "start")
    assert first.returncode == 0, first.stderr
    pids = _pids(state)
    assert set(pids) == {"moto", "azurite"}

    second = _cli(cli_env, "start")  # harmless: the same processes, nothing new
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already running") == 2
    assert _pids(state) == pids

    status = _cli(cli_env, "status")
    assert status.returncode == 0
    assert f"http://127.0.0.1:{cli_env['STORAGEFS_EMULATOR_S3_PORT']}" in status.stdout

    # The bucket and the container the env output points at exist.
    s3 = boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{cli_env['STORAGEFS_EMULATOR_S3_PORT']}"
    )
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["storagefs"]
    conn = emulators.azurite_connection_string(int(cli_env["STORAGEFS_EMULATOR_AZURE_PORT"]))
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(conn) as service:
        assert [c.name for c in service.list_containers()] == ["storagefs"]

    stop = _cli(cli_env, "stop")
    assert stop.returncode == 0
    assert not any(_alive(pid) for pid in pids.values())
    assert _cli(cli_env, "status").returncode == 1
    assert list(state.glob("*.pid")) == []


def test_cli_stop_kills_only_what_it_started(cli_env: dict[str, str], tmp_path: Path) -> None:
    state = Path(cli_env["STORAGEFS_EMULATOR_DIR"])
    state.mkdir(parents=True)
    # A stranger whose PID ended up in our PID file (PID reuse after a reboot, say).
    stranger = subprocess.Popen(["sleep", "60"])
    # And a moto this CLI did not start, on another port.
    other = emulators.start_moto(tmp_path / "other", emulators.free_port(), buckets=())
    try:
        port = int(cli_env["STORAGEFS_EMULATOR_S3_PORT"])
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        record = {"pid": stranger.pid, "port": port, "argv": argv}
        (state / "moto.pid").write_text(json.dumps(record))
        result = _cli(cli_env, "stop")
        assert result.returncode == 0
        assert "not running" in result.stdout
        assert stranger.poll() is None, "stop killed a process it did not start"
        assert other.running()
    finally:
        stranger.kill()
        stranger.wait()
        other.stop()


def test_cli_env_output_parses(cli_env: dict[str, str]) -> None:
    script = f'eval "$({SCRIPT} env)" && env'
    out = subprocess.run(
        ["bash", "-c", script], env=cli_env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    got = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    s3_port = cli_env["STORAGEFS_EMULATOR_S3_PORT"]
    assert got["STORAGEFS_PRIMARY"] == "s3://storagefs"
    assert got["STORAGEFS_S3_ENDPOINT_URL"] == f"http://127.0.0.1:{s3_port}"
    assert (got["AWS_ACCESS_KEY_ID"], got["AWS_SECRET_ACCESS_KEY"]) == ("test", "test")
    assert got["AWS_DEFAULT_REGION"] == "us-east-1"
    conn = got["STORAGEFS_AZURE_CONNECTION_STRING"]
    assert conn == emulators.azurite_connection_string(
        int(cli_env["STORAGEFS_EMULATOR_AZURE_PORT"])
    )
    assert "AccountName=devstoreaccount1;" in conn
    assert "STORAGEFS_SECONDARY" not in got  # only a hint, commented out
    assert "# export STORAGEFS_SECONDARY=azure://storagefs" in _cli(cli_env, "env").stdout


def test_cli_rejects_unknown_commands(cli_env: dict[str, str]) -> None:
    result = _cli(cli_env, "restart")
    assert result.returncode == 2
    assert "usage" in result.stderr


def test_free_port_is_bindable_and_outside_the_ephemeral_range() -> None:
    low = emulators._ephemeral_low()
    for _ in range(5):
        port = emulators.free_port()
        assert low == 0 or port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_start_twice_is_harmless_and_stop_ends_it(tmp_path: Path) -> None:
    proc = emulators.start_moto(tmp_path, emulators.free_port(), buckets=("one", "two"))
    try:
        pid = proc.pid
        proc.start()
        assert proc.pid == pid
        client = boto3.client("s3", endpoint_url=proc.url)
        assert sorted(b["Name"] for b in client.list_buckets()["Buckets"]) == ["one", "two"]
    finally:
        proc.stop()
    assert pid is not None and not _alive(pid)
    assert not proc.running()


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EmulatorError, match=f"port {port} .* already in use"):
            emulators.start_moto(tmp_path, port)


def test_an_emulator_that_dies_reports_its_log(tmp_path: Path) -> None:
    proc = EmulatorProcess(
        "moto",
        [sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"],
        emulators.free_port(),
        tmp_path,
    )
    with pytest.raises(EmulatorError, match=r"(?s)exited with status 3.*boom: bad config"):
        proc.start(timeout=10)


def test_kill_and_restart_moto_on_the_same_port(tmp_path: Path) -> None:
    proc = emulators.start_moto(tmp_path, emulators.free_port(), buckets=("keep",))
    try:
        url, old_pid = proc.url, proc.pid
        proc.kill()
        assert old_pid is not None and not _alive(old_pid)
        proc.restart()
        assert (proc.url, proc.running()) == (url, True)
        client = boto3.client("s3", endpoint_url=proc.url)
        # moto keeps state in memory: the named bucket is back, empty.
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["keep"]
    finally:
        proc.stop()


@needs_azurite
def test_azurite_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    from azure.storage.blob import BlobServiceClient

    proc = emulators.start_azurite(tmp_path, emulators.free_port())
    try:
        conn = emulators.azurite_connection_string(proc.port)
        with BlobServiceClient.from_connection_string(conn) as service:
            service.get_container_client("storagefs").upload_blob("survivor", b"still here")
        old_pid = proc.pid
        proc.restart()
        assert proc.pid != old_pid
        with BlobServiceClient.from_connection_string(conn) as service:
            blob = service.get_container_client("storagefs").download_blob("survivor")
            assert blob.readall() == b"still here"
    finally:
        proc.stop()


def test_pause_keeps_the_port_open_but_silent(tmp_path: Path) -> None:
    proc = emulators.start_moto(tmp_path, emulators.free_port(), buckets=())
    try:
        proc.pause()
        assert not emulators.answers_http(proc.port, timeout=0.5)
        proc.resume()
        assert emulators.answers_http(proc.port, timeout=5)
    finally:
        proc.resume()
        proc.stop()
