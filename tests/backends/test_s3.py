"""What only the S3 backend has: open() verdicts, error classification, request shapes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3.exceptions
import botocore.exceptions
import pytest
import trio
import urllib3.exceptions

from storagefs.backends import s3 as s3_module
from storagefs.backends.base import (
    BackendError,
    ConfigurationError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    TransientError,
    peek,
    start_upload,
)
from storagefs.backends.s3 import SMALL_BODY, S3Backend, classify
from storagefs.config import Settings
from storagefs.devtools.emulators import free_port
from tests.conftest import S3Bucket

pytestmark = pytest.mark.s3

MiB = 1024 * 1024


def _settings(endpoint_url: str, **extra: Any) -> Settings:
    return Settings(
        s3_endpoint_url=endpoint_url,
        multipart_threshold=5 * MiB,
        multipart_chunksize=5 * MiB,
        **extra,
    )


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener accepts connections (kernel backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


# --- open() ----------------------------------------------------------------------------


async def test_open_missing_bucket(s3_bucket: S3Bucket) -> None:
    backend = S3Backend("no-such-bucket-here", "", _settings(s3_bucket.endpoint_url))
    with trio.fail_after(5), pytest.raises(ConfigurationError) as err:
        await backend.open()
    assert str(err.value) == (
        f"s3: bucket 'no-such-bucket-here' does not exist at {s3_bucket.endpoint_url}"
    )
    with pytest.raises(ConfigurationError, match="does not exist"):
        await backend.health()  # a bucket deleted under a running mount: not retried


async def test_open_closed_port_fails_fast() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    backend = S3Backend("bucket", "", _settings(endpoint))
    start = time.monotonic()
    with pytest.raises(TransientError, match=f"^cannot reach {endpoint}: "):
        await backend.open()
    assert time.monotonic() - start < 3


async def test_open_silent_endpoint_times_out_without_retries(silent_port: int) -> None:
    endpoint = f"http://127.0.0.1:{silent_port}"
    backend = S3Backend("bucket", "", _settings(endpoint, connect_timeout=0.5, request_timeout=1.0))
    start = time.monotonic()
    with pytest.raises(TransientError, match=f"^cannot reach {endpoint}: .*ReadTimeout"):
        await backend.open()
    # One attempt of 1 s: botocore's own retries (legacy: 5 attempts) would take 5 s.
    assert 0.9 < time.monotonic() - start < 3


async def test_open_answers_in_bounded_time_whatever_the_timeouts(
    silent_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "OPEN_TIMEOUT", 0.5)
    endpoint = f"http://127.0.0.1:{silent_port}"
    backend = S3Backend("bucket", "", _settings(endpoint, request_timeout=60.0))
    start = time.monotonic()
    with pytest.raises(TransientError, match="no answer within"):
        await backend.open()
    assert time.monotonic() - start < 2


async def test_errors_never_show_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAVERYSECRETID0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-key-do-not-print")
    backend = S3Backend("bucket", "pre", _settings(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(BackendError) as err:
        await backend.stat("some/key")
    text = f"{err.value} {backend.describe()}"
    assert "some/key" in str(err.value) and "stat" in str(err.value)
    assert "AKIAVERYSECRETID0000" not in text
    assert "very-secret-key-do-not-print" not in text


# --- classify() ------------------------------------------------------------------------


def _client_error(code: str, status: int, op: str = "GetObject") -> botocore.exceptions.ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": f"{code} message"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, op)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_client_error("NoSuchKey", 404), NotFound),
        (_client_error("404", 404, "HeadObject"), NotFound),
        (_client_error("AccessDenied", 403), PermissionDenied),
        (_client_error("InvalidAccessKeyId", 403), PermissionDenied),
        (_client_error("PreconditionFailed", 412), Conflict),
        (_client_error("OperationAborted", 409), Conflict),
        (_client_error("InvalidArgument", 400), InvalidRequest),
        (_client_error("RequestTimeout", 400), TransientError),
        (_client_error("SlowDown", 503), TransientError),
        (_client_error("InternalError", 500), TransientError),
        (_client_error("Throttling", 400), TransientError),
        (_client_error("TooManyRequests", 429), TransientError),
        (_client_error("NoSuchBucket", 404), ConfigurationError),
        (_client_error("PermanentRedirect", 301), ConfigurationError),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), TransientError),
        (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://x"), TransientError),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), TransientError),
        (botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"), TransientError),
        (urllib3.exceptions.ProtocolError("Connection aborted."), TransientError),
        (botocore.exceptions.NoCredentialsError(), PermissionDenied),
        (botocore.exceptions.ParamValidationError(report="bad"), InvalidRequest),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, type) else None,
)
def test_classify(exc: BaseException, expected: type[BackendError]) -> None:
    result = classify(exc, op="read", key="a/b", where="http://127.0.0.1:1")
    assert type(result) is expected
    assert "read 'a/b' at http://127.0.0.1:1" in str(result)


def test_classify_looks_through_transfer_wrappers() -> None:
    # boto3 re-raises a part's ClientError as S3UploadFailedError inside the except block.
    try:
        try:
            raise _client_error("NoSuchBucket", 404, "UploadPart")
        except botocore.exceptions.ClientError as inner:
            raise boto3.exceptions.S3UploadFailedError(f"Failed to upload: {inner}")  # noqa: B904
    except boto3.exceptions.S3UploadFailedError as outer:
        assert type(classify(outer)) is ConfigurationError


# --- request shapes and code paths -----------------------------------------------------


class _Requests:
    """Counts the S3 operations a backend's client sends."""

    def __init__(self, backend: S3Backend) -> None:
        self.ops: list[str] = []
        backend._client.meta.events.register("before-call.s3", self._record)

    def _record(self, model: Any, **kwargs: Any) -> None:
        self.ops.append(model.name)


async def test_small_write_is_one_put(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    backend = S3Backend(s3_bucket.bucket, "", _settings(s3_bucket.endpoint_url))
    source = tmp_path / "small"
    source.write_bytes(b"x" * 1000)
    requests = _Requests(backend)
    info = await backend.write("k", str(source), {"mode": "33188"})
    assert requests.ops == ["PutObject"]
    assert (info.size, info.metadata) == (1000, {"mode": "33188"})
    assert info.etag == (await backend.stat("k")).etag


async def test_a_small_put_does_not_wait_for_100_continue(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    backend = S3Backend(s3_bucket.bucket, "", _settings(s3_bucket.endpoint_url))
    sent: list[tuple[object, object]] = []

    def record(request: Any, **kwargs: Any) -> None:
        sent.append((request.headers.get("Content-Length"), request.headers.get("Expect")))

    backend._client.meta.events.register_last("before-send.s3.PutObject", record)
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(b"s" * 4096)
    big.write_bytes(b"b" * (SMALL_BODY + 1))
    await backend.write("small", str(small), {})
    await backend.write_bytes("small2", b"t" * 10, {})
    await backend.write("big", str(big), {})  # below the multipart threshold: one PUT
    assert sent == [("4096", None), ("10", None), (str(SMALL_BODY + 1), b"100-continue")]
    assert await backend.read("small", 0, 10) == b"s" * 10
    assert await backend.read("big", SMALL_BODY - 1, 10) == b"bb"


async def test_download_reuses_its_stat(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    backend = S3Backend(s3_bucket.bucket, "", _settings(s3_bucket.endpoint_url))
    await backend.write_bytes("k", b"data", {})
    await backend.write_bytes("big", b"b" * 6 * MiB, {})
    requests = _Requests(backend)
    await backend.download("k", str(tmp_path / "out"))
    assert requests.ops == ["HeadObject", "GetObject"]
    requests.ops.clear()
    await backend.download("big", str(tmp_path / "out2"))
    assert requests.ops == ["HeadObject", "GetObject", "GetObject"]  # two ranged GETs
    assert (tmp_path / "out2").read_bytes() == b"b" * 6 * MiB


async def test_managed_copy_above_single_copy_limit(
    s3_bucket: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The >5 GiB path with a lowered limit: multipart copy through the transfer manager.
    monkeypatch.setattr(s3_module, "MAX_SINGLE_COPY", 1 * MiB)
    backend = S3Backend(s3_bucket.bucket, "pre", _settings(s3_bucket.endpoint_url))
    source = tmp_path / "big"
    source.write_bytes(bytes(range(256)) * (11 * MiB // 256))
    await backend.write("big", str(source), {"uid": "1"})
    requests = _Requests(backend)
    copied = await backend.copy("big", "copy", {"uid": "2"})
    assert "UploadPartCopy" in requests.ops
    assert copied.size == 11 * MiB
    assert copied.metadata == {"uid": "2"}
    assert (
        await backend.read("copy", 5 * MiB - 3, 6) == source.read_bytes()[5 * MiB - 3 : 5 * MiB + 3]
    )
    kept = await backend.copy("big", "copy2")
    assert kept.metadata == {"uid": "1"}


@pytest.mark.parametrize("size", [100, 6 * MiB], ids=["single-get", "ranged-gets"])
async def test_download_of_a_changed_object_is_a_conflict(
    s3_bucket: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    backend = S3Backend(s3_bucket.bucket, "", _settings(s3_bucket.endpoint_url))
    await backend.write_bytes("k", b"1" * size, {})
    real_stat = backend.stat

    async def stat_then_overwrite(key: str) -> Any:
        info = await real_stat(key)
        await backend.write_bytes(key, b"2" * size, {})  # changes between HEAD and GET
        return info

    monkeypatch.setattr(backend, "stat", stat_then_overwrite)
    with pytest.raises(Conflict):
        await backend.download("k", str(tmp_path / "out"))


# --- one change of a key at a time, abandoned threads included -------------------------


async def test_a_change_waits_for_an_abandoned_change_of_the_same_key() -> None:
    backend = S3Backend("bucket", "", _settings("http://127.0.0.1:9"))
    release = threading.Event()
    order: list[str] = []

    def slow_first() -> None:
        release.wait(5)
        order.append("first")

    with trio.move_on_after(0.1):
        await backend._call("write", "k", slow_first, changes="k")
    assert order == []  # abandoned, still running in its thread

    async def second() -> None:
        await backend._call("write", "k", lambda: order.append("second"), changes="k")

    async def other_key() -> None:
        await backend._call("write", "j", lambda: order.append("other"), changes="j")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        nursery.start_soon(other_key)
        await trio.sleep(0.2)
        assert order == ["other"]  # another key is not held up; the same key is
        release.set()
    assert order == ["other", "first", "second"]
    assert not backend._order.busy("k")


async def test_a_change_cancelled_before_it_started_releases_its_key() -> None:
    backend = S3Backend("bucket", "", _settings("http://127.0.0.1:9", max_requests=1))
    release = threading.Event()

    async def hold_the_only_slot() -> None:
        await backend._call("read", "x", lambda: release.wait(5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold_the_only_slot)
        await trio.sleep(0.05)
        with trio.move_on_after(0.1):  # cancelled while waiting for the limiter
            await backend._call("write", "k", lambda: None, changes="k")
        assert not backend._order.busy("k")
        release.set()
    with trio.fail_after(2):
        await backend._call("write", "k", lambda: None, changes="k")


def test_describe_names_bucket_prefix_and_endpoint() -> None:
    backend = S3Backend("bucket", "/a/b/", _settings("http://127.0.0.1:4566"))
    assert backend.describe() == "s3://bucket/a/b/ at http://127.0.0.1:4566"
    assert backend.prefix == "a/b/"


async def test_peek_is_one_get_with_the_stat_answer(s3_bucket: S3Bucket) -> None:
    """A cold lookup's peek: the same ObjectInfo a HEAD gives, the first bytes, one request."""
    backend = S3Backend(s3_bucket.bucket, "p", _settings(s3_bucket.endpoint_url))
    await backend.write_bytes("small", b"0123456789", {"mode": "33188"})
    await backend.write_bytes("empty", b"", {"mode": "33188"})
    requests = _Requests(backend)
    info, data = await peek(backend, "small", 4)
    assert requests.ops == ["GetObject"]
    assert data == b"0123"
    assert info == await backend.stat("small")
    info, data = await peek(backend, "empty", 4)  # no byte 0: a 416, then a HEAD
    assert (info.size, data, info.metadata) == (0, b"", {"mode": "33188"})
    with pytest.raises(NotFound):
        await peek(backend, "missing", 4)


async def test_a_streaming_upload_is_multipart_and_visible_only_once_complete(
    s3_bucket: S3Bucket,
) -> None:
    backend = S3Backend(s3_bucket.bucket, "p", _settings(s3_bucket.endpoint_url))
    first, last = b"a" * (5 * 1024 * 1024), b"tail"
    requests = _Requests(backend)
    upload = await start_upload(backend, "streamed", {"mode": "33188"})
    assert upload is not None
    await upload.put_part(2, last)  # parts may arrive in any order
    await upload.put_part(1, first)
    with pytest.raises(NotFound):
        await backend.stat("streamed")  # nothing under the key before complete()
    info = await upload.complete()
    assert requests.ops == [
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPart",
        "HeadObject",
        "CompleteMultipartUpload",
    ]
    assert (info.size, info.metadata) == (len(first) + len(last), {"mode": "33188"})
    stored = await backend.stat("streamed")
    assert (stored.etag, stored.metadata) == (info.etag, {"mode": "33188"})
    assert await backend.read("streamed", len(first) - 1, 10) == b"a" + last

    dropped = await start_upload(backend, "dropped", {})
    assert dropped is not None
    await dropped.put_part(1, b"x")
    await dropped.abort()
    with pytest.raises(NotFound):
        await backend.stat("dropped")
