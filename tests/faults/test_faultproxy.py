"""The fault proxy itself: each mode does to a client what its name says, switching is
immediate, and the S3 SDK reads the injected 503 as a transient error."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from storagefs.backends.base import TransientError
from storagefs.devtools.emulators import free_port
from tests.faultproxy import FaultProxy, Mode, ProxyError, send_control

WAIT = 0.5  # seconds a client waits to conclude "no answer"


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo() -> Iterator[int]:
    server = _Server(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def proxy(echo: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo) as p:
        yield p


def connect(p: FaultProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", p.port), timeout=WAIT)
    sock.settimeout(WAIT)
    return sock


def round_trip(sock: socket.socket, data: bytes = b"hello") -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def is_cut(sock: socket.socket) -> bool:
    """True when the peer reset or closed the connection (not when it merely stays quiet)."""
    try:
        sock.sendall(b"x")
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def cut_on_arrival(p: FaultProxy) -> bool:
    """True when a new connection is reset: at once (the RST can beat the client's own check
    of its connect), or at its first exchange."""
    try:
        sock = connect(p)
    except ConnectionResetError:
        return True
    with sock:
        return is_cut(sock)


def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 1000
    with connect(proxy) as sock:
        assert round_trip(sock, payload) == payload
    snap = proxy.snapshot()
    assert snap["mode"] == "pass"
    assert snap["bytes_up"] == len(payload) == snap["bytes_down"]
    assert snap["forwarded"] == 1


def test_refuse_resets_open_connections_and_refuses_new_ones(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert round_trip(sock) == b"hello"
        proxy.set_mode("refuse")
        assert is_cut(sock)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.set_mode(Mode.PASS)  # the same port listens again
    with connect(proxy) as sock:
        assert round_trip(sock) == b"hello"


def test_reset_accepts_then_cuts(proxy: FaultProxy) -> None:
    with connect(proxy) as old:
        assert round_trip(old) == b"hello"
        proxy.set_mode("reset")
        assert is_cut(old)
        assert cut_on_arrival(proxy)  # not refused: accepted, then reset
    assert proxy.snapshot()["reset"] >= 2


def test_stall_freezes_old_connections_and_never_answers_new_ones(proxy: FaultProxy) -> None:
    with connect(proxy) as old:
        assert round_trip(old) == b"hello"
        proxy.set_mode("stall")
        old.sendall(b"anyone?")
        with pytest.raises(TimeoutError):
            old.recv(1)
        with connect(proxy) as new:
            new.sendall(b"anyone?")
            with pytest.raises(TimeoutError):
                new.recv(1)
            proxy.set_mode("pass")  # the frozen connections are cut, not resumed
            assert is_cut(old)
            assert is_cut(new)
    with connect(proxy) as sock:
        assert round_trip(sock) == b"hello"


@pytest.mark.parametrize(
    ("method", "body"), [("GET", None), ("PUT", b"x" * 300_000), ("HEAD", None)]
)
def test_http503_answers_every_request(proxy: FaultProxy, method: str, body: bytes | None) -> None:
    proxy.set_mode("http503")
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        conn.request(method, "/bucket/key", body=body)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    assert response.status == 503
    assert response.getheader("Connection") == "close"
    if method == "HEAD":
        assert data == b""
    else:
        assert b"<Code>ServiceUnavailable</Code>" in data
    assert proxy.snapshot()["answered_503"] == 1
    assert proxy.snapshot()["forwarded"] == 0  # the target never saw it


def test_boto3_reads_the_503_as_transient() -> None:
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    from storagefs.backends.s3 import classify

    # No target at all: a 503 needs none.
    with FaultProxy("127.0.0.1", free_port(), mode="http503") as p:
        client = boto3.client(
            "s3",
            endpoint_url=p.url,
            config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}),
        )
        for call in (
            lambda: client.put_object(Bucket="b", Key="k", Body=b"data"),
            lambda: client.head_object(Bucket="b", Key="k"),
        ):
            with pytest.raises(botocore.exceptions.ClientError) as caught:
                call()
            assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert isinstance(classify(caught.value), TransientError)
        client.close()
        assert p.snapshot()["answered_503"] == 2


def test_target_down_resets_the_client() -> None:
    with FaultProxy("127.0.0.1", free_port()) as p:
        assert cut_on_arrival(p)


def test_control_after_stop_is_an_error(echo: int) -> None:
    p = FaultProxy("127.0.0.1", echo).start()
    p.stop()
    with pytest.raises(ProxyError):
        p.set_mode("stall")


def test_command_line_control_port(echo: int) -> None:
    listen, control = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tests.faultproxy",
            "--listen", f"127.0.0.1:{listen}", "--target", f"127.0.0.1:{echo}",
            "--control", f"127.0.0.1:{control}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status = json.loads(send_control(("127.0.0.1", control), "status"))
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "the proxy's control port never answered"
                time.sleep(0.05)
        assert status["mode"] == "pass"
        assert status["listen"] == f"127.0.0.1:{listen}"
        set_refuse = subprocess.run(
            [sys.executable, "-m", "tests.faultproxy",
             "--control", f"127.0.0.1:{control}", "--set", "refuse"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert set_refuse.returncode == 0, set_refuse.stderr
        assert set_refuse.stdout.strip() == "ok refuse"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", listen), timeout=WAIT).close()
        assert send_control(("127.0.0.1", control), "bogus").startswith("error")
        assert json.loads(send_control(("127.0.0.1", control), "status"))["mode"] == "refuse"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
