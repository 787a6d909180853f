"""A TCP proxy that breaks on command: the network faults of the fault tests.

Put it between the daemon and an emulator (moto, Azurite) and switch its mode while the mount
runs; the emulator itself keeps running and keeps its data, which a killed moto would not.

Modes:

* ``pass``: bytes flow both ways unchanged.
* ``refuse``: the listening socket is closed, so new connections are refused, and every open
  connection is reset (RST): a server that was killed.
* ``reset``: connections are accepted and reset at once, open ones too: a crashing server, or
  a load balancer with no healthy target.
* ``stall``: connections are accepted and never answered; open connections freeze where they
  are (what the client sends is swallowed): a hung server.
* ``http503``: every new connection gets one ``HTTP/1.1 503 Service Unavailable`` with an
  S3-style XML error body (and Azure's ``x-ms-error-code`` header) and ``Connection: close``;
  open connections are reset.

Every change of mode resets the connections opened under the previous one, except a change to
``stall``, which freezes them instead (a hung server does not close anything). When the proxy
leaves ``stall`` the frozen connections are reset: their clients gave up long ago.

Use from Python (it runs its own asyncio loop in a daemon thread)::

    with FaultProxy("127.0.0.1", moto_port) as proxy:
        ... point the client at proxy.url ...
        proxy.set_mode("stall")

or from a shell, with a line-based control port::

    python -m storagefs.devtools.faultproxy --listen 127.0.0.1:9000 --target 127.0.0.1:4566 \\
        --control 127.0.0.1:9001
    python -m storagefs.devtools.faultproxy --control 127.0.0.1:9001 --set stall
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import json
import socket
import struct
import sys
import threading
import time
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any

HOST = "127.0.0.1"
_CHUNK = 64 * 1024
_CONTROL_TIMEOUT = 10.0  # seconds a control call may wait for the proxy's loop
_HEADER_LIMIT = 64 * 1024  # bytes of request head read before answering 503 anyway
_HEAD_WAIT = 10.0  # seconds a 503 connection waits for a request head
_DRAIN_WAIT = 5.0  # seconds a 503 connection keeps reading what the client still sends
_CONNECT_TIMEOUT = 5.0


class Mode(enum.Enum):
    PASS = "pass"
    REFUSE = "refuse"
    RESET = "reset"
    STALL = "stall"
    HTTP503 = "http503"


class ProxyError(RuntimeError):
    """The proxy could not start, or did not carry out a control request in time."""


def _s3_error_body(request_id: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
        "<Message>Service Unavailable (injected by the storagefs fault proxy)</Message>"
        f"<RequestId>{request_id}</RequestId></Error>"
    ).encode()


def http_503(method: str, request_id: str = "faultproxy") -> bytes:
    """The whole 503 response for a request with ``method`` (no body for HEAD)."""
    body = _s3_error_body(request_id)
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"x-amz-request-id: {request_id}\r\n"
        "x-ms-error-code: ServerBusy\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head if method.upper() == "HEAD" else head + body


_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN, as a dying server's kernel would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


@dataclasses.dataclass
class ProxyStats:
    accepted: int = 0  # connections accepted (in any mode)
    forwarded: int = 0  # connections relayed to the target
    answered_503: int = 0  # 503 responses sent
    reset: int = 0  # connections reset by the proxy
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client


class _Connection:
    __slots__ = ("client", "dropped", "frozen", "mode", "tasks", "upstream")

    def __init__(self, client: socket.socket, mode: Mode) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.mode = mode  # the mode it was accepted under
        self.frozen = False
        self.dropped = False
        self.tasks: set[asyncio.Task[None]] = set()


class FaultProxy:
    """One listening port forwarding to ``target_host:target_port``, with a switchable mode.

    All state lives on the proxy's own event loop; the public methods may be called from any
    thread and return once the loop has carried them out.

    Sockets are closed only by the task that waits on them, once it has ended: closing a
    socket under a pending ``sock_recv`` would let a new connection reuse its descriptor while
    the event loop still watches the old one.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = HOST,
        listen_port: int = 0,
        mode: Mode | str = Mode.PASS,
    ) -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port = listen_port  # the real port once started
        self._mode = Mode(mode)
        self.stats = ProxyStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._connections: set[_Connection] = set()
        self._stopped: asyncio.Event | None = None

    # --- public API (any thread) --------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def url(self) -> str:
        return f"http://{self.listen_host}:{self.port}"

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> FaultProxy:
        if self._thread is not None:
            return self
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._main(started, failure))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="faultproxy", daemon=True)
        self._thread.start()
        if not started.wait(_CONTROL_TIMEOUT):
            raise ProxyError("the fault proxy did not start in time")
        if failure:
            self._thread.join(_CONTROL_TIMEOUT)
            self._thread = None
            raise ProxyError(f"the fault proxy could not listen: {failure[0]}") from failure[0]
        return self

    def stop(self) -> None:
        """Reset every connection, stop listening, end the thread (bounded)."""
        thread, loop, stopped = self._thread, self._loop, self._stopped
        if thread is None or loop is None or stopped is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopped.set)
        thread.join(_CONTROL_TIMEOUT)
        self._thread = None

    def set_mode(self, mode: Mode | str) -> None:
        """Switch to ``mode``; returns once open connections were reset or frozen and the
        port is closed (``refuse``) or listening (any other mode)."""
        self._call(self._apply(Mode(mode)))

    def snapshot(self) -> dict[str, Any]:
        """Mode, port, target and counters (a copy)."""
        return {
            "mode": self._mode.value,
            "listen": f"{self.listen_host}:{self.port}",
            "target": f"{self.target[0]}:{self.target[1]}",
            "open_connections": sum(1 for c in list(self._connections) if not c.dropped),
            **dataclasses.asdict(self.stats),
        }

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            coro.close()
            raise ProxyError("the fault proxy is not running")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            future.result(_CONTROL_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ProxyError("the fault proxy did not answer a control request") from None

    # --- the loop -----------------------------------------------------------------------

    async def _main(self, started: threading.Event, failure: list[BaseException]) -> None:
        self._stopped = asyncio.Event()
        try:
            if self._mode is not Mode.REFUSE:
                await self._listen()
            elif self.port == 0:
                raise ProxyError("cannot start in refuse mode without a fixed port")
        except (OSError, ProxyError) as exc:
            failure.append(exc)
            started.set()
            return
        started.set()
        try:
            await self._stopped.wait()
        finally:
            await self._unlisten()
            tasks = [t for conn in list(self._connections) for t in conn.tasks]
            for conn in list(self._connections):
                self._drop(conn)
            if tasks:
                await asyncio.wait(tasks, timeout=_CONTROL_TIMEOUT)

    async def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Listening again on our own port after `refuse`: TIME_WAIT must not block it.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            deadline = time.monotonic() + 2.0
            while True:
                try:
                    listener.bind((self.listen_host, self.port))
                    break
                except OSError:
                    if self.port == 0 or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            listener.listen(128)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        self._accept_task = asyncio.get_running_loop().create_task(self._accept(listener))

    async def _unlisten(self) -> None:
        task, self._accept_task = self._accept_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # it closes the listener on its way out

    async def _apply(self, mode: Mode) -> None:
        old, self._mode = self._mode, mode
        if mode is old:
            return
        for conn in list(self._connections):
            if mode is Mode.STALL and conn.mode is Mode.PASS:
                conn.frozen = True
            else:
                self._drop(conn)
        if mode is Mode.REFUSE:
            await self._unlisten()
        elif self._accept_task is None:
            await self._listen()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                client, _ = await loop.sock_accept(listener)
                client.setblocking(False)
                self.stats.accepted += 1
                mode = self._mode
                if mode in (Mode.RESET, Mode.REFUSE):
                    self.stats.reset += 1
                    _reset(client)
                    continue
                conn = _Connection(client, mode)
                self._connections.add(conn)
                if mode is Mode.PASS:
                    self._spawn(conn, self._relay(conn))
                elif mode is Mode.STALL:
                    conn.frozen = True
                    self._spawn(conn, self._swallow(client))
                else:
                    self._spawn(conn, self._answer_503(conn))
        finally:
            listener.close()

    def _spawn(self, conn: _Connection, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        conn.tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            conn.tasks.discard(finished)
            if not finished.cancelled():
                finished.exception()  # retrieved: a failed connection is not worth a warning
            if not conn.tasks:
                self._close(conn)

        task.add_done_callback(done)

    def _drop(self, conn: _Connection) -> None:
        """Reset both sides of ``conn``: its tasks end, and the last one closes the sockets."""
        if conn.dropped:
            return
        conn.dropped = True
        self.stats.reset += 1
        for sock in (conn.client, conn.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        for task in conn.tasks:
            task.cancel()
        if not conn.tasks:
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        conn.client.close()
        if conn.upstream is not None:
            conn.upstream.close()

    # --- per connection -----------------------------------------------------------------

    async def _relay(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        conn.upstream = upstream
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await loop.sock_connect(upstream, self.target)
        except (OSError, TimeoutError):
            self._drop(conn)  # the target is down: so are we
            return
        self.stats.forwarded += 1
        self._spawn(conn, self._pump(conn, upstream, conn.client, up=False))
        await self._pump(conn, conn.client, upstream, up=True)

    async def _pump(
        self, conn: _Connection, src: socket.socket, dst: socket.socket, *, up: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(src, _CHUNK)
            except OSError:
                self._drop(conn)
                return
            if conn.frozen:
                if not data:
                    return
                continue  # a hung server answers nothing; swallow until reset
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            # Counted before sending, so a client that got the bytes sees them counted.
            if up:
                self.stats.bytes_up += len(data)
            else:
                self.stats.bytes_down += len(data)
            try:
                await loop.sock_sendall(dst, data)
            except OSError:
                self._drop(conn)
                return

    @staticmethod
    async def _swallow(sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while await loop.sock_recv(sock, _CHUNK):
                pass

    async def _answer_503(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        sock = conn.client
        head = b""
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(_HEAD_WAIT):
                while b"\r\n\r\n" not in head and len(head) < _HEADER_LIMIT:
                    data = await loop.sock_recv(sock, _CHUNK)
                    if not data:
                        return  # the client left without asking
                    head += data
        method = head.split(b" ", 1)[0].decode("ascii", "replace") or "GET"
        self.stats.answered_503 += 1
        try:
            await loop.sock_sendall(sock, http_503(method, f"fp{self.stats.answered_503}"))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        # Keep reading whatever body the client still sends: closing a socket with unread
        # data resets it, and the client could lose the 503 it has not read yet.
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(_DRAIN_WAIT):
                while await loop.sock_recv(sock, _CHUNK):
                    pass


# --- command line ----------------------------------------------------------------------------


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host or HOST, int(port)


def send_control(control: tuple[str, int], line: str, timeout: float = 5.0) -> str:
    """Send one command (``pass``, ``stall``, ..., ``status``) to a proxy's control port."""
    with socket.create_connection(control, timeout=timeout) as sock:
        sock.sendall(line.strip().encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            data = sock.recv(4096)
            if not data:
                break
            reply += data
    return reply.decode().strip()


def _serve_control(proxy: FaultProxy, control: tuple[str, int]) -> None:
    """Answer one command per connection: a mode name switches, ``status`` reports."""
    with socket.create_server(control) as server:
        while proxy.running():
            client, _ = server.accept()
            with client:
                client.settimeout(5.0)
                try:
                    command = client.recv(256).decode(errors="replace").strip().lower()
                    if command == "status":
                        reply = json.dumps(proxy.snapshot())
                    else:
                        proxy.set_mode(command)
                        reply = f"ok {command}"
                except ValueError:
                    reply = "error: commands are " + ", ".join(m.value for m in Mode) + ", status"
                except (OSError, ProxyError) as exc:
                    reply = f"error: {exc}"
                with contextlib.suppress(OSError):
                    client.sendall(reply.encode() + b"\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m storagefs.devtools.faultproxy",
        description="A TCP proxy whose faults (refuse, reset, stall, http503) are switched at"
        " run time through a control port.",
    )
    parser.add_argument("--listen", type=_address, help="HOST:PORT to listen on")
    parser.add_argument("--target", type=_address, help="HOST:PORT to forward to")
    parser.add_argument("--control", type=_address, required=True, help="HOST:PORT for commands")
    parser.add_argument("--mode", default="pass", choices=[m.value for m in Mode])
    parser.add_argument("--set", metavar="COMMAND", help="send COMMAND to a running proxy, exit")
    args = parser.parse_args(argv)
    if args.set:
        try:
            reply = send_control(args.control, args.set)
        except OSError as exc:
            print(f"faultproxy: no proxy answers on {args.control}: {exc}", file=sys.stderr)
            return 1
        print(reply)
        return 1 if reply.startswith("error") else 0
    if args.listen is None or args.target is None:
        parser.error("--listen and --target are needed to run a proxy")
    proxy = FaultProxy(
        *args.target, listen_host=args.listen[0], listen_port=args.listen[1], mode=args.mode
    )
    try:
        proxy.start()
    except ProxyError as exc:
        print(f"faultproxy: {exc}", file=sys.stderr)
        return 1
    print(
        f"faultproxy: {proxy.listen_host}:{proxy.port} -> {args.target[0]}:{args.target[1]}"
        f" ({proxy.mode.value}); control on {args.control[0]}:{args.control[1]}",
        flush=True,
    )
    try:
        _serve_control(proxy, args.control)
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
