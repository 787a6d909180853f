"""Local S3 (moto server) and Azure Blob (Azurite) emulators as plain background processes.

Used two ways: ``scripts/emulators start|stop|status|env`` for developers, and the Python API
(:func:`start_moto`, :func:`start_azurite`) by the test fixtures, which run their own instances
on free ports so they never touch a developer's running ones.

Limits worth knowing:

* moto keeps everything in memory: after :meth:`EmulatorProcess.kill` + ``restart()`` the
  server is empty again (the buckets named at start are re-created, their objects are gone).
* Azurite keeps its data under its ``--location`` directory and survives ``stop()`` +
  ``start()``/``restart()``. It saves its index every few seconds, though: after a SIGKILL
  (``kill()``) blobs written in the last ~5 seconds are gone, so a test that must find every
  acknowledged write on Azurite afterwards should use ``stop()`` (SIGTERM; connections still
  drop mid-request) or wait that long before ``kill()``.
  :meth:`EmulatorProcess.pause` (SIGSTOP) simulates an outage that keeps state: the kernel
  still accepts connections, nothing answers.
* The Azurite account key below is the public, documented development key every Azurite
  install shares; it opens nothing but a local emulator.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import platformdirs

HOST = "127.0.0.1"
DEFAULT_S3_PORT = 4566  # LocalStack's port: docker-compose users get the same environment
DEFAULT_AZURE_PORT = 10000  # Azurite's own default
DEFAULT_BUCKET = "storagefs"
DEFAULT_CONTAINER = "storagefs"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
# moto accepts any credentials; these are the conventional placeholders.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
READY_TIMEOUT = 30.0
STOP_GRACE = 5.0


class EmulatorError(RuntimeError):
    """An emulator could not be started or stopped; the message says why (with its log tail)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now.

    Chosen below the kernel's ephemeral range when possible: a port from that range can be
    taken as the source port of any outgoing connection between this call and the listen.
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(50):
        port = rng.randrange(20000, low) if low > 20100 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            chosen: int = s.getsockname()[1]
            return chosen
    raise EmulatorError("no free TCP port found on 127.0.0.1")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def default_state_dir() -> Path:
    env = os.environ.get("STORAGEFS_EMULATOR_DIR")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("storagefs")) / "emulators"


def s3_port() -> int:
    return _port_from_env("STORAGEFS_EMULATOR_S3_PORT", DEFAULT_S3_PORT)


def azure_port() -> int:
    return _port_from_env("STORAGEFS_EMULATOR_AZURE_PORT", DEFAULT_AZURE_PORT)


def _port_from_env(var: str, default: int) -> int:
    raw = os.environ.get(var)
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise EmulatorError(f"{var}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise EmulatorError(f"{var}={raw!r} is not a port number")
    return port


def azurite_connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};BlobEndpoint=http://{HOST}:{port}/{AZURITE_ACCOUNT};"
    )


def answers_http(port: int, timeout: float = 1.0) -> bool:
    """True once anything speaks HTTP on the port (any status counts: Azurite answers 400)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((HOST, port)) == 0


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _die_with_parent() -> Callable[[], None]:
    # Test-owned emulators must not outlive a pytest that was killed: ask the kernel to send
    # SIGTERM when the parent goes away (PR_SET_PDEATHSIG survives exec). libc is loaded
    # here, before the fork, so the child only makes one call.
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc (None when the PID does not exist)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _proc_args(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


class EmulatorProcess:
    """One emulator process: started by us (``popen``) or adopted from a PID file."""

    def __init__(
        self,
        kind: str,
        argv: Sequence[str],
        port: int,
        state_dir: Path,
        *,
        env: dict[str, str] | None = None,
        setup: Callable[[EmulatorProcess], None] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.kind = kind  # "moto" or "azurite"
        self.argv = list(argv)
        self.port = port
        self.state_dir = state_dir
        self.url = f"http://{HOST}:{port}"
        self.log_path = state_dir / f"{kind}.log"
        self.pid_path = state_dir / f"{kind}.pid"
        self._env = env
        self._setup = setup
        self._die_with_parent = die_with_parent
        self._popen: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Launch, wait until it answers HTTP, run the setup (bucket/container creation)."""
        if self.running():
            return
        if _port_in_use(self.port):
            raise EmulatorError(
                f"{self.kind}: port {self.port} on {HOST} is already in use by another process"
                f" (set STORAGEFS_EMULATOR_{'S3' if self.kind == 'moto' else 'AZURE'}_PORT)"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(self._env or {})}
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,  # a Ctrl-C in the starting terminal must not reach it
                preexec_fn=_die_with_parent() if self._die_with_parent else None,
            )
        self.pid = self._popen.pid
        self._write_pid_file()
        try:
            self._wait_ready(timeout)
            if self._setup is not None:
                self._setup(self)
        except BaseException:
            self.kill()
            raise

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds. Only ever the PID we started."""
        if self.running():
            self._signal(signal.SIGTERM)
            if not self._wait_exit(grace):
                self._signal(signal.SIGKILL)
                self._wait_exit(grace)
        self._forget()

    def kill(self) -> None:
        """SIGKILL, for fault tests: the store vanishes mid-request."""
        if self.running():
            self._signal(signal.SIGKILL)
            self._wait_exit(STOP_GRACE)
        self._forget()

    def restart(self, timeout: float = READY_TIMEOUT) -> None:
        """Stop if running, then start again on the same port and state directory."""
        self.stop()
        deadline = time.monotonic() + timeout
        # The kernel may need a moment to release the listening socket of the dead process.
        while _port_in_use(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start(timeout=max(1.0, deadline - time.monotonic()))

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def running(self) -> bool:
        if self.pid is None:
            return False
        if self._popen is not None:
            return self._popen.poll() is None
        state = _proc_state(self.pid)
        return state is not None and state not in ("Z", "X") and self._is_ours(self.pid)

    # --- PID files (the CLI's memory between invocations) -------------------------------

    def adopt(self) -> bool:
        """Take over the live process recorded in the PID file; False (and cleanup) if none.

        The recorded process wins over this object's settings (it may have been started with
        other ports), so ``status`` and ``stop`` talk about the process that really runs.
        """
        try:
            record = json.loads(self.pid_path.read_text())
            pid = int(record["pid"])
            port = int(record["port"])
            argv = [str(a) for a in record["argv"]]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        saved = (self.argv, self.port, self.url)
        self.pid, self.argv, self.port, self.url = pid, argv, port, f"http://{HOST}:{port}"
        if self.running():
            return True
        self.pid = None
        self.argv, self.port, self.url = saved
        with contextlib.suppress(OSError):
            self.pid_path.unlink()
        return False

    def _write_pid_file(self) -> None:
        record = {"pid": self.pid, "port": self.port, "argv": self.argv}
        self.pid_path.write_text(json.dumps(record) + "\n")

    def _is_ours(self, pid: int) -> bool:
        # Guards against PID reuse: the live process must run our arguments. Azurite runs as
        # "node /usr/bin/azurite-blob ...", so compare everything after the program name.
        args = _proc_args(pid)
        tail = self.argv[1:]
        return len(args) >= len(tail) and args[len(args) - len(tail) :] == tail

    def _forget(self) -> None:
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=0)
        self._popen = None
        self.pid = None
        with contextlib.suppress(OSError):
            self.pid_path.unlink()

    # --- helpers -------------------------------------------------------------------------

    def _signal(self, sig: signal.Signals) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._popen is not None:
                try:
                    self._popen.wait(timeout=0.05)
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if not self.running():
                return True
            time.sleep(0.05)
        return not self.running()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._popen is not None and self._popen.poll() is not None:
                raise EmulatorError(
                    f"{self.kind} exited with status {self._popen.returncode} while starting;"
                    f" last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if answers_http(self.port):
                return
            if time.monotonic() > deadline:
                raise EmulatorError(
                    f"{self.kind} did not answer on {self.url} within {timeout:.0f} s;"
                    f" last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def __repr__(self) -> str:
        return f"<EmulatorProcess {self.kind} {self.url} pid={self.pid}>"


# --- the two emulators -----------------------------------------------------------------


def moto_process(
    state_dir: Path,
    port: int,
    *,
    buckets: Sequence[str] = (DEFAULT_BUCKET,),
    die_with_parent: bool = False,
) -> EmulatorProcess:
    """An unstarted moto server (same interpreter as ours) that creates ``buckets`` on start."""

    def create_buckets(proc: EmulatorProcess) -> None:
        for bucket in buckets:
            create_bucket(proc.url, bucket)

    return EmulatorProcess(
        "moto",
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        port,
        state_dir,
        env={"PYTHONUNBUFFERED": "1"},
        setup=create_buckets,
        die_with_parent=die_with_parent,
    )


def azurite_process(
    state_dir: Path,
    port: int,
    *,
    containers: Sequence[str] = (DEFAULT_CONTAINER,),
    die_with_parent: bool = False,
) -> EmulatorProcess:
    """An unstarted Azurite blob service that keeps its data under ``state_dir/azurite``."""
    program = shutil.which("azurite-blob")
    if program is None:
        raise EmulatorError("azurite-blob is not on PATH (npm install -g azurite)")
    data_dir = state_dir / "azurite"

    def create_containers(proc: EmulatorProcess) -> None:
        for container in containers:
            create_container(azurite_connection_string(proc.port), container)

    return EmulatorProcess(
        "azurite",
        [
            program,
            "--blobHost",
            HOST,
            "--blobPort",
            str(port),
            "--location",
            str(data_dir),
            "--silent",
            "--loose",
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ],
        port,
        state_dir,
        setup=create_containers,
        die_with_parent=die_with_parent,
    )


def start_moto(
    state_dir: Path,
    port: int,
    *,
    buckets: Sequence[str] = (DEFAULT_BUCKET,),
    die_with_parent: bool = False,
) -> EmulatorProcess:
    """Start moto on ``port`` and wait until it answers; ``.stop()`` it when done."""
    proc = moto_process(state_dir, port, buckets=buckets, die_with_parent=die_with_parent)
    proc.start()
    return proc


def start_azurite(
    state_dir: Path,
    port: int,
    *,
    containers: Sequence[str] = (DEFAULT_CONTAINER,),
    die_with_parent: bool = False,
) -> EmulatorProcess:
    """Start Azurite on ``port`` and wait until it answers; ``.stop()`` it when done."""
    proc = azurite_process(state_dir, port, containers=containers, die_with_parent=die_with_parent)
    proc.start()
    return proc


def _s3_client(endpoint_url: str) -> Any:
    import boto3  # here: the CLI's stop/status/env need not pay for the import

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=FAKE_AWS_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=FAKE_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )


def create_bucket(endpoint_url: str, bucket: str) -> None:
    """Create ``bucket`` in moto; an existing one is fine."""
    client = _s3_client(endpoint_url)
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    finally:
        client.close()


def delete_bucket(endpoint_url: str, bucket: str) -> None:
    """Empty and remove ``bucket`` (test cleanup: moto holds every byte in memory)."""
    client = _s3_client(endpoint_url)
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        for upload in uploads:
            client.abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        client.delete_bucket(Bucket=bucket)
    finally:
        client.close()


def create_container(connection_string: str, container: str) -> None:
    """Create ``container`` in Azurite; an existing one is fine."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(connection_string) as service:
        try:
            service.create_container(container)
        except ResourceExistsError:
            pass


def delete_container(connection_string: str, container: str) -> None:
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(connection_string) as service:
        try:
            service.delete_container(container)
        except ResourceNotFoundError:
            pass


# --- command line ----------------------------------------------------------------------


def _managed(state_dir: Path) -> list[EmulatorProcess]:
    procs = [moto_process(state_dir, s3_port())]
    if shutil.which("azurite-blob") is not None:
        procs.append(azurite_process(state_dir, azure_port()))
    return procs


def env_lines(s3: int, azure: int) -> list[str]:
    lines = [f"export STORAGEFS_PRIMARY=s3://{DEFAULT_BUCKET}"]
    lines.append(f"export STORAGEFS_S3_ENDPOINT_URL=http://{HOST}:{s3}")
    lines += [f"export {k}={v}" for k, v in FAKE_AWS_ENV.items()]
    lines.append(f"export STORAGEFS_AZURE_CONNECTION_STRING='{azurite_connection_string(azure)}'")
    lines.append(f"# export STORAGEFS_SECONDARY=azure://{DEFAULT_CONTAINER}  # S3 -> Azure chain")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: emulators start|stop|status|env"
    if len(args) != 1 or args[0] not in ("start", "stop", "status", "env"):
        print(usage, file=sys.stderr)
        return 2
    command = args[0]
    try:
        if command == "env":
            print("\n".join(env_lines(s3_port(), azure_port())))
            return 0
        state_dir = default_state_dir()
        procs = _managed(state_dir)
        all_running = True
        if command != "stop" and shutil.which("azurite-blob") is None:
            # Stopping needs nothing installed: there is nothing of Azurite's to stop.
            print("azurite: not installed (npm install -g azurite)", file=sys.stderr)
            all_running = False
        for proc in procs:
            live = proc.adopt()
            if command == "start":
                if live:
                    print(f"{proc.kind}: already running at {proc.url} (pid {proc.pid})")
                else:
                    proc.start()
                    print(f"{proc.kind}: started at {proc.url} (pid {proc.pid})")
            elif command == "stop":
                if live:
                    proc.stop()
                    print(f"{proc.kind}: stopped")
                else:
                    print(f"{proc.kind}: not running")
            else:
                state = f"running at {proc.url} (pid {proc.pid})" if live else "stopped"
                print(f"{proc.kind}: {state}")
                all_running = all_running and live
        if command == "start":
            print(f'state in {state_dir}; eval "$(scripts/emulators env)" to use them')
        return 0 if all_running else 1
    except EmulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
