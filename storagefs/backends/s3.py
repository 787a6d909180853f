"""Amazon S3 and S3-compatible stores (moto, LocalStack, MinIO...) as a backend: ``s3://bucket/prefix``.

One boto3 client per backend, with botocore's own retries off: retrying happens once, in
:mod:`storagefs.resilience`; this module only classifies errors (:func:`classify`). Every
blocking call runs in a worker thread under a per-backend :class:`trio.CapacityLimiter` and is
abandoned on cancellation, so a deadline above us can move on while the socket times out.

An abandoned write may still reach S3 after its caller gave up. So that it can never land
*after* a later write of the same key, changes to one key are issued one at a time: a new one
waits until the thread of the previous one has really finished.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import boto3.exceptions
import botocore.exceptions
import s3transfer.exceptions
import trio
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from s3transfer.subscribers import BaseSubscriber

from storagefs.backends.base import (
    BackendError,
    ConfigurationError,
    Conflict,
    InvalidRequest,
    ListPage,
    NotFound,
    ObjectInfo,
    PermissionDenied,
    StoreBase,
    TransientError,
    content_type,
    datetime_to_ns,
)
from storagefs.backends.key_order import KeyOrder
from storagefs.config import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

T = TypeVar("T")

MAX_SINGLE_COPY = 5 * 1024**3  # S3 refuses CopyObject above 5 GiB
OPEN_TIMEOUT = 8.0
_CHUNK = 1024 * 1024  # open() answers within this even when the endpoint never responds
SMALL_BODY = 1024 * 1024  # PUTs up to this send their body without waiting for "continue"

_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404", "NoSuchUpload"}
_DENIED_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "RequestTimeTooSkewed",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestTimeout",  # a 400 on S3, but retrying is exactly what it asks for
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
}
_CONFIG_CODES = {"NoSuchBucket", "PermanentRedirect", "AuthorizationHeaderMalformed"}
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError...
    botocore.exceptions.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError...
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ChecksumError,
    urllib3.exceptions.HTTPError,
    boto3.exceptions.RetriesExceededError,  # s3transfer's download retry (set to 1 attempt)
    s3transfer.exceptions.RetriesExceededError,
)
# What boto3's transfer manager wraps an SDK error in (the original is the __context__).
_WRAPPERS: tuple[type[BaseException], ...] = (
    boto3.exceptions.S3UploadFailedError,
    s3transfer.exceptions.S3UploadFailedError,
    s3transfer.exceptions.S3DownloadFailedError,
)


def classify(exc: BaseException, *, op: str = "", key: str = "", where: str = "") -> BackendError:
    """The typed error for a botocore/boto3 exception. ``op``, ``key`` and ``where`` (the
    endpoint) make the message; credentials never appear in botocore's messages."""
    context = " ".join(
        p for p in (op, repr(key) if key else "", f"at {where}" if where else "") if p
    )
    prefix = f"s3: {context}: " if context else "s3: "
    cause = _root_cause(exc)
    if isinstance(cause, BackendError):
        return cause
    if isinstance(cause, botocore.exceptions.ClientError):
        error = cause.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"{prefix}{code or status}: {error.get('Message') or 'no message'}"
        if code in _CONFIG_CODES or status == 301:
            return ConfigurationError(text)
        if code in _TRANSIENT_CODES or status == 429 or status >= 500:
            return TransientError(text)
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFound(text)
        if code in _DENIED_CODES or status == 403:
            return PermissionDenied(text)
        if status in (409, 412) or code in ("PreconditionFailed", "OperationAborted"):
            return Conflict(text)
        if 400 <= status < 500:
            return InvalidRequest(text)
        return TransientError(text)
    text = f"{prefix}{type(cause).__name__}: {cause}"
    if isinstance(
        cause, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return PermissionDenied(text)
    if isinstance(cause, _NETWORK_ERRORS):
        return TransientError(text)
    if isinstance(cause, botocore.exceptions.ParamValidationError):
        return InvalidRequest(text)
    if isinstance(
        cause,
        botocore.exceptions.BaseEndpointResolverError | botocore.exceptions.ProfileNotFound,
    ):
        return ConfigurationError(text)
    return BackendError(text)


def _root_cause(exc: BaseException) -> BaseException:
    # The transfer manager re-raises a ClientError as S3UploadFailedError and friends (inside
    # the except block, so the original is the context): classify what S3 actually said.
    seen = 0
    while isinstance(exc, _WRAPPERS) and seen < 5:
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc, seen = inner, seen + 1
    return exc


_SDK_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    boto3.exceptions.Boto3Error,
    urllib3.exceptions.HTTPError,
    s3transfer.exceptions.RetriesExceededError,
    *_WRAPPERS,
)


def _etag(raw: object) -> str | None:
    return raw.strip('"') if isinstance(raw, str) else None


def _timestamp(raw: object) -> int:
    """``LastModified`` in nanoseconds, exactly (not through a float of seconds)."""
    return datetime_to_ns(raw) if isinstance(raw, datetime) else time.time_ns()


def _no_wait_for_continue(request: Any, **_: Any) -> None:
    """botocore sends every PUT body after "Expect: 100-continue", i.e. it waits one round
    trip for the server's go-ahead (2.3 ms of a 8.5 ms 4 KiB PUT on moto, a network round
    trip on S3). That wait saves sending a big body the server would refuse; for a small one
    it only costs time, so the header goes (it is not signed: SigV4 leaves ``expect`` out)."""
    length = request.headers.get("Content-Length")
    if length is not None and int(length) <= SMALL_BODY:
        request.headers.pop("Expect", None)


class S3Backend(StoreBase):
    @property
    def streams(self) -> bool:
        return True  # start_upload: a multipart upload

    def __init__(self, bucket: str, prefix: str, settings: Settings, name: str = "s3") -> None:
        self.name = name
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        region = (
            settings.s3_region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        # The SDK's timeouts are the outer bounds, never the ones a user waits for: a hung
        # metadata request or small read is cut by storagefs.resilience after
        # first_byte_timeout (and hedged by the chain sooner). read_timeout is the gap between
        # two socket reads, so it only ends a transfer that has stalled, and it frees the
        # worker thread of a request resilience has abandoned.
        config = Config(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.request_timeout,
            retries={"total_max_attempts": 1},
            s3={"addressing_style": settings.s3_addressing_style},
            max_pool_connections=settings.max_requests,
        )
        self._client: S3Client = boto3.session.Session().client(
            "s3", endpoint_url=settings.s3_endpoint_url, region_name=region, config=config
        )
        self.endpoint: str = self._client.meta.endpoint_url
        self._client.meta.events.register("before-send.s3.PutObject", _no_wait_for_continue)
        self._transfer = TransferConfig(
            multipart_threshold=settings.multipart_threshold,
            multipart_chunksize=settings.multipart_chunksize,
            max_concurrency=settings.transfer_concurrency,
            num_download_attempts=1,
            preferred_transfer_client="classic",
        )
        self._multipart_threshold = settings.multipart_threshold
        self._limiter = trio.CapacityLimiter(settings.max_requests)
        self._order = KeyOrder()  # changes of one key land in the order they were made

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint}"

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        # Unreachable is TransientError, not ConfigurationError: with a secondary the mount
        # starts degraded; a lone primary that does not answer is refused by the daemon.
        with trio.move_on_after(OPEN_TIMEOUT) as scope:
            try:
                await self._head_bucket("open")
            except TransientError as exc:
                raise TransientError(f"cannot reach {self.endpoint}: {exc}") from exc
        if scope.cancelled_caught:
            raise TransientError(
                f"cannot reach {self.endpoint}: no answer within {OPEN_TIMEOUT:.0f} s"
            )

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._client.close)

    async def health(self) -> None:
        await self._head_bucket("health")

    async def _head_bucket(self, op: str) -> None:
        try:
            await self._call(op, "", lambda: self._client.head_bucket(Bucket=self.bucket))
        except (NotFound, ConfigurationError) as exc:
            # HEAD has no body, so a missing bucket is a bare 404 here.
            if isinstance(exc, NotFound) or "NoSuchBucket" in str(exc):
                raise ConfigurationError(
                    f"s3: bucket '{self.bucket}' does not exist at {self.endpoint}"
                ) from exc
            raise

    # --- reads ---------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo:
        full = self._full(key)
        head = await self._call(
            "stat", key, lambda: self._client.head_object(Bucket=self.bucket, Key=full)
        )
        return self._head_info(key, head)

    async def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        limit: int = 1000,
    ) -> ListPage:
        if limit < 1:
            raise InvalidRequest("s3: list: limit must be positive")
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix + prefix,
            "MaxKeys": limit,
        }
        if delimiter:
            args["Delimiter"] = delimiter
        if token:
            args["ContinuationToken"] = token
        page = await self._call("list", prefix, lambda: self._client.list_objects_v2(**args))
        cut = len(self.prefix)
        objects = [
            ObjectInfo(
                key=o["Key"][cut:],
                size=o.get("Size", 0),
                mtime_ns=_timestamp(o.get("LastModified")),
                etag=_etag(o.get("ETag")),
            )
            for o in page.get("Contents", [])
            if len(o["Key"]) > cut  # the marker of the backend's own prefix is not a key
        ]
        prefixes = [p["Prefix"][cut:] for p in page.get("CommonPrefixes", [])]
        next_token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
        return ListPage(objects, prefixes, next_token)

    async def read(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise InvalidRequest(f"s3: read {key!r}: negative offset or length")
        if length == 0:
            await self.stat(key)  # still NotFound for a missing key
            return b""
        full = self._full(key)

        def get() -> bytes:
            try:
                resp = self._client.get_object(
                    Bucket=self.bucket, Key=full, Range=f"bytes={offset}-{offset + length - 1}"
                )
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
                    return b""  # the range starts at or past the end of the object
                raise
            body = resp["Body"]
            try:
                return body.read()
            finally:
                body.close()

        return await self._call("read", key, get)

    async def peek(self, key: str, length: int) -> tuple[ObjectInfo, bytes]:
        """stat + the first ``length`` bytes in one ranged GET (its headers are a HEAD's)."""
        if length <= 0:
            return await self.stat(key), b""
        full = self._full(key)

        def get() -> tuple[ObjectInfo, bytes] | None:
            try:
                resp = self._client.get_object(
                    Bucket=self.bucket, Key=full, Range=f"bytes=0-{length - 1}"
                )
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
                    return None  # an empty object has no byte 0
                raise
            body = resp["Body"]
            try:
                data = body.read()
            finally:
                body.close()
            total = str(resp.get("ContentRange", "")).rpartition("/")[2]
            size = int(total) if total.isdigit() else int(resp.get("ContentLength", len(data)))
            head = {**resp, "ContentLength": size}
            return self._head_info(key, head), data

        found = await self._call("peek", key, get)
        if found is None:
            return await self.stat(key), b""
        return found

    async def download(self, key: str, dest: str) -> ObjectInfo:
        full = self._full(key)
        info = await self.stat(key)
        # Every GET carries If-Match with the ETag we just saw, so the file is exactly the
        # version ``info`` describes, or the download fails with a Conflict.
        etag = f'"{info.etag}"' if info.etag else None

        def get_small() -> None:
            args: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
            if etag:
                args["IfMatch"] = etag
            body = self._client.get_object(**args)["Body"]
            try:
                with open(dest, "wb") as out:
                    for chunk in body.iter_chunks(_CHUNK):
                        out.write(chunk)
            finally:
                body.close()

        def get_parallel() -> None:
            # Given the size and ETag, the transfer manager skips its own HEAD and adds
            # If-Match to each ranged GET (its single-GET path would not: hence get_small).
            # A file object, not the name: given a name, s3transfer downloads into a
            # temporary file and renames it over ``dest``, and the contract is in place.
            # Its one I/O thread seeks and writes the ranges as they arrive.
            known = _KnownObject(info.size, etag)
            with (
                open(dest, "wb") as out,
                create_transfer_manager(self._client, self._transfer) as manager,
            ):
                manager.download(self.bucket, full, out, subscribers=[known]).result()

        small = info.size < self._multipart_threshold
        await self._call("download", key, get_small if small else get_parallel)
        return info

    # --- writes --------------------------------------------------------------------------

    async def write(self, key: str, source: str, metadata: Mapping[str, str]) -> ObjectInfo:
        full = self._full(key)
        size = Path(source).stat().st_size  # a local stat: cheaper inline than a thread hop
        if size < self._multipart_threshold:

            def put() -> dict[str, Any]:
                with open(source, "rb") as body:
                    return dict(
                        self._client.put_object(
                            Bucket=self.bucket,
                            Key=full,
                            Body=body,
                            Metadata=dict(metadata),
                            ContentType=content_type(key),
                        )
                    )

            resp = await self._call("write", key, put, changes=full)
            return ObjectInfo(key, size, time.time_ns(), _etag(resp.get("ETag")), dict(metadata))

        await self._call(
            "write",
            key,
            lambda: self._client.upload_file(
                source,
                self.bucket,
                full,
                ExtraArgs={"Metadata": dict(metadata), "ContentType": content_type(key)},
                Config=self._transfer,
            ),
            changes=full,
        )
        # upload_file returns nothing; the multipart ETag is only known to S3.
        return await self.stat(key)

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        full = self._full(key)
        resp = await self._call(
            "write",
            key,
            lambda: self._client.put_object(
                Bucket=self.bucket,
                Key=full,
                Body=data,
                Metadata=dict(metadata),
                ContentType=content_type(key),
            ),
            changes=full,
        )
        return ObjectInfo(key, len(data), time.time_ns(), _etag(resp.get("ETag")), dict(metadata))

    async def copy(
        self, src: str, dst: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        src_full, dst_full = self._full(src), self._full(dst)
        source = await self.stat(src)
        if src == dst and metadata is None:
            return source  # S3 refuses a copy onto itself that changes nothing
        meta = dict(metadata) if metadata is not None else dict(source.metadata or {})
        # CopySourceIfMatch: copy the version we just looked at, or fail with a Conflict.
        if_match = f'"{source.etag}"' if source.etag else None
        directive = "REPLACE" if metadata is not None else "COPY"
        if source.size <= MAX_SINGLE_COPY:

            def copy_object() -> dict[str, Any]:
                args: dict[str, Any] = {
                    "Bucket": self.bucket,
                    "Key": dst_full,
                    "CopySource": {"Bucket": self.bucket, "Key": src_full},
                    "MetadataDirective": directive,
                }
                if metadata is not None:  # REPLACE: the type is the new name's
                    args["Metadata"] = meta
                    args["ContentType"] = content_type(dst)
                if if_match:
                    args["CopySourceIfMatch"] = if_match
                return dict(self._client.copy_object(**args))

            resp = await self._call("copy", src, copy_object, changes=dst_full)
            result = resp.get("CopyObjectResult", {})
            return ObjectInfo(
                dst,
                source.size,
                _timestamp(result.get("LastModified")),
                _etag(result.get("ETag")),
                meta,
            )
        # Above 5 GiB: the transfer manager copies in parts (UploadPartCopy).
        extra: dict[str, Any] = {"MetadataDirective": directive}
        if metadata is not None:
            extra["Metadata"] = meta
            extra["ContentType"] = content_type(dst)
        if if_match:
            extra["CopySourceIfMatch"] = if_match
        await self._call(
            "copy",
            src,
            lambda: self._client.copy(
                {"Bucket": self.bucket, "Key": src_full},
                self.bucket,
                dst_full,
                ExtraArgs=extra,
                Config=self._transfer,
            ),
            changes=dst_full,
        )
        return await self.stat(dst)

    async def start_upload(self, key: str, metadata: Mapping[str, str]) -> S3Upload:
        """A multipart upload of ``key`` whose parts are put while the file is written."""
        full = self._full(key)
        resp = await self._call(
            "start_upload",
            key,
            lambda: self._client.create_multipart_upload(
                Bucket=self.bucket, Key=full, Metadata=dict(metadata)
            ),
        )
        return S3Upload(self, key, full, str(resp["UploadId"]), dict(metadata))

    async def delete(self, key: str) -> None:
        full = self._full(key)
        await self._call(
            "delete",
            key,
            lambda: self._client.delete_object(Bucket=self.bucket, Key=full),
            changes=full,
        )

    # --- helpers -------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        if not key:
            raise InvalidRequest("s3: the empty key names no object")
        return self.prefix + key

    def _head_info(self, key: str, head: Mapping[str, Any]) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=int(head.get("ContentLength", 0)),
            mtime_ns=_timestamp(head.get("LastModified")),
            etag=_etag(head.get("ETag")),
            metadata={k.lower(): v for k, v in head.get("Metadata", {}).items()},
        )

    async def _call(
        self, op: str, key: str, fn: Callable[[], T], *, changes: str | None = None
    ) -> T:
        """Run one blocking SDK call in a worker thread; classify what it raises.

        ``changes``: the full key the call modifies; the call then waits for every earlier
        change of that key to have really finished (see the module docstring).
        """
        if changes is None:
            return await self._in_thread(op, key, fn)
        return await self._order.change(
            changes, fn, lambda wrapped: self._in_thread(op, key, wrapped)
        )

    async def _in_thread(self, op: str, key: str, fn: Callable[[], T]) -> T:
        try:
            return await trio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=self._limiter)
        except BackendError:
            raise
        except Exception as exc:
            if isinstance(exc, _SDK_ERRORS):
                raise classify(exc, op=op, key=key, where=self.endpoint) from exc
            raise


class S3Upload:
    """One multipart upload (see :class:`storagefs.backends.base.Upload`)."""

    def __init__(
        self, backend: S3Backend, key: str, full: str, upload_id: str, metadata: dict[str, str]
    ) -> None:
        self._backend = backend
        self._client = backend._client
        self._key = key
        self._full = full
        self._id = upload_id
        self._metadata = metadata
        self._parts: dict[int, tuple[str, int]] = {}  # number -> (etag, size)

    async def put_part(self, number: int, data: bytes | bytearray) -> None:
        resp = await self._backend._call(
            "upload_part",
            self._key,
            lambda: self._client.upload_part(
                Bucket=self._backend.bucket,
                Key=self._full,
                UploadId=self._id,
                PartNumber=number,
                Body=data,  # type: ignore[arg-type]  # botocore signs and sends a bytearray as bytes
            ),
        )
        self._parts[number] = (str(resp["ETag"]), len(data))

    async def complete(self) -> ObjectInfo:
        parts = [{"PartNumber": n, "ETag": e} for n, (e, _) in sorted(self._parts.items())]
        resp = await self._backend._call(
            "complete_upload",
            self._key,
            lambda: self._client.complete_multipart_upload(
                Bucket=self._backend.bucket,
                Key=self._full,
                UploadId=self._id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            ),
            changes=self._full,
        )
        size = sum(n for _, n in self._parts.values())
        return ObjectInfo(self._key, size, time.time_ns(), _etag(resp.get("ETag")), self._metadata)

    async def abort(self) -> None:
        await self._backend._call(
            "abort_upload",
            self._key,
            lambda: self._client.abort_multipart_upload(
                Bucket=self._backend.bucket, Key=self._full, UploadId=self._id
            ),
        )


class _KnownObject(BaseSubscriber):
    def __init__(self, size: int, etag: str | None) -> None:
        self._size = size
        self._etag = etag

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self._size)
        if self._etag is not None:
            future.meta.provide_object_etag(self._etag)
