"""Azure Blob Storage backend (``azure://container/optional/prefix``) over azure-storage-blob.

The synchronous SDK runs in worker threads under one CapacityLimiter per backend. The SDK's own
retries are off: retrying happens once, in :mod:`storagefs.resilience`, so this module only
moves bytes and classifies errors (:func:`classify`).
"""

from __future__ import annotations

import functools
import os
import re
import string
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, cast

import requests
import trio
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobClient, BlobPrefix, BlobProperties, ContentSettings
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from storagefs.backends.azure_auth import AzureClient, build_client
from storagefs.backends.base import (
    BackendError,
    ConfigurationError,
    Conflict,
    InvalidRequest,
    ListPage,
    NotFound,
    ObjectInfo,
    PermissionDenied,
    TransientError,
    content_type,
    datetime_to_ns,
)
from storagefs.backends.key_order import KeyOrder
from storagefs.config import Settings

T = TypeVar("T")

# open() must give a verdict on a dead endpoint quickly, whatever request_timeout says.
OPEN_TIMEOUT = 10.0
# Azure returns at most 5000 entries per List Blobs call.
MAX_PAGE = 5000
COPY_POLL_FIRST = 0.05
COPY_POLL_MAX = 1.0

# --- metadata names ----------------------------------------------------------------------
#
# Azure metadata names must be C# identifiers and are case-insensitive. Names made of
# lowercase ASCII letters and digits (not starting with a digit) are stored as they are:
# that covers mode/uid/gid/mtime, so objects are readable by s3fs-style tools on Azure too.
# Every other character -- uppercase letters, "_", "-", non-ASCII, a leading digit -- becomes
# "_" followed by two lowercase hex digits per UTF-8 byte ("x-id" -> "x_2did", "A" -> "_41").
# The result is a lowercase identifier, so the service's case folding cannot change it, and
# since "_" itself is escaped, decoding is unambiguous. Names read back are lowercased first:
# an object whose metadata another tool wrote as "Mode" means the same as "mode".

_PLAIN_FIRST = frozenset(string.ascii_lowercase)
_PLAIN_REST = frozenset(string.ascii_lowercase + string.digits)
_ESCAPE = re.compile(r"_([0-9a-f]{2})")


def encode_meta_name(name: str) -> str:
    if not name:
        raise InvalidRequest("metadata names cannot be empty")
    out: list[str] = []
    for i, ch in enumerate(name):
        if ch in (_PLAIN_REST if i else _PLAIN_FIRST):
            out.append(ch)
        else:
            out.extend(f"_{b:02x}" for b in ch.encode())
    return "".join(out)


def decode_meta_name(stored: str) -> str:
    lowered = stored.lower()
    raw = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(lowered):
        raw += lowered[pos : m.start()].encode()
        raw.append(int(m.group(1), 16))
        pos = m.end()
    raw += lowered[pos:].encode()
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return lowered  # not one of ours (another tool's "x_ab"): keep it readable


def encode_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    return {encode_meta_name(k): v for k, v in metadata.items()}


def decode_metadata(stored: Mapping[str, str] | None) -> dict[str, str]:
    return {decode_meta_name(k): v for k, v in (stored or {}).items()}


# --- errors ------------------------------------------------------------------------------

_NOT_FOUND_CODES = frozenset({"BlobNotFound", "ResourceNotFound", "CannotVerifyCopySource"})
_TRANSIENT_CODES = frozenset(
    {"ServerBusy", "OperationTimedOut", "InternalError", "IncrementalCopyOfEarlierVersion"}
)
_DENIED_CODES = frozenset(
    {
        "AuthenticationFailed",
        "AuthorizationFailure",
        "AuthorizationPermissionMismatch",
        "InsufficientAccountPermissions",
    }
)
# Query strings carry SAS signatures; "Key=value;" pairs are connection-string parts.
_QUERY = re.compile(r"\?[^\s'\"<>]*")
_SECRET_PAIR = re.compile(r"(AccountKey|SharedAccessSignature|sig)=[^\s;&'\"]*", re.IGNORECASE)


def _scrub(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = _SECRET_PAIR.sub(r"\1=<redacted>", _QUERY.sub("?<redacted>", first))
    return first[:200]


def _error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    if code is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        if headers is not None:
            code = headers.get("x-ms-error-code")
    return str(code.value if hasattr(code, "value") else code) if code else None


def classify(exc: BaseException, *, op: str, key: str, where: str) -> BackendError:
    """One typed error for one SDK or network failure; the message names op, key and place.

    The message is built from the status code, the service's error code and a scrubbed first
    line of the SDK's text: SDK messages can quote request URLs, and with a SAS those carry
    the signature.
    """
    status = getattr(exc, "status_code", None)
    code = _error_code(exc)
    if isinstance(exc, HttpResponseError) and status is not None:
        reason = f"HTTP {status}" + (f" {code}" if code else "")
    else:
        reason = f"{type(exc).__name__}: {_scrub(str(exc))}".rstrip(": ")
    target = f" {key!r}" if key else ""
    message = f"azure {op}{target} in {where}: {reason}"

    if code == "ContainerNotFound":
        return ConfigurationError(message)
    if code in _NOT_FOUND_CODES or isinstance(exc, ResourceNotFoundError) or status == 404:
        return NotFound(message)
    if code in _DENIED_CODES or status in (401, 403):
        return PermissionDenied(message)
    if code in _TRANSIENT_CODES or (status is not None and (status >= 500 or status in (408, 429))):
        return TransientError(message)
    if isinstance(exc, ResourceExistsError | ResourceModifiedError) or status in (409, 412):
        return Conflict(message)
    if isinstance(exc, ClientAuthenticationError):
        # No status: the credential itself failed (no managed identity, expired login).
        return PermissionDenied(message)
    if status is not None and 400 <= status < 500:
        return InvalidRequest(message)
    if isinstance(exc, ServiceRequestError | ServiceResponseError | OSError | TimeoutError):
        return TransientError(message)
    # Any other SDK error without a status is a transport-level failure (decode, stream).
    return TransientError(message)


# --- the backend -------------------------------------------------------------------------


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None


def _normalize_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def _utf8(text: str) -> bytes:
    return text.encode()


class AzureBackend:
    def __init__(
        self,
        container: str,
        prefix: str,
        settings: Settings,
        name: str = "azure",
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._container_name = container
        self._prefix = _normalize_prefix(prefix)
        self._settings = settings
        self._limiter = trio.CapacityLimiter(settings.max_requests)
        self._key_order = KeyOrder()
        self._client: AzureClient = build_client(
            settings,
            environ,
            transport=self._transport(settings),
            retry_total=0,
            max_single_put_size=settings.multipart_threshold,
            max_block_size=settings.multipart_chunksize,
            max_single_get_size=settings.multipart_threshold,
            max_chunk_get_size=settings.multipart_chunksize,
        )
        self._container = self._client.service.get_container_client(container)
        self._where = f"{self.url()} at {self._client.account_url}"

    @staticmethod
    def _transport(settings: Settings) -> RequestsTransport:
        # The SDK's default pool keeps 10 connections; we run up to max_requests requests,
        # each download or upload fanning out to transfer_concurrency more.
        session = requests.Session()
        adapter = HTTPAdapter(
            pool_connections=4,
            pool_maxsize=settings.max_requests + settings.transfer_concurrency,
            max_retries=Retry(total=False, redirect=False, raise_on_status=False),
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # As for S3: outer bounds only (resilience cuts a hung small request after
        # first_byte_timeout); read_timeout ends a stalled transfer and frees the thread of an
        # abandoned request.
        return RequestsTransport(
            session=session,
            session_owner=True,
            connection_timeout=settings.connect_timeout,
            read_timeout=settings.request_timeout,
        )

    def url(self) -> str:
        """``azure://container/prefix`` (no trailing slash), as the user would write it."""
        return f"azure://{self._container_name}/{self._prefix}".rstrip("/")

    @property
    def auth_method(self) -> str:
        return self._client.method

    @property
    def account_url(self) -> str:
        return self._client.account_url

    def describe(self) -> str:
        return self._where

    # --- plumbing ----------------------------------------------------------------------

    def _blob_name(self, key: str) -> str:
        return self._prefix + key

    def _blob(self, key: str) -> BlobClient:
        return self._container.get_blob_client(self._blob_name(key))

    async def _run(
        self, op: str, key: str, fn: Callable[[], T], *, changes: str | None = None
    ) -> T:
        """``fn`` in a worker thread, its SDK errors classified.

        ``changes``: the key ``fn`` modifies; it then starts only after every earlier change of
        that key has ended, so an abandoned (timed-out) write cannot land after a newer one.
        """
        try:
            if changes is None:
                return await self._in_thread(fn)
            return await self._key_order.change(self._blob_name(changes), fn, self._in_thread)
        except AzureError as exc:
            # "from None": the SDK exception's text may quote URLs with a SAS signature.
            raise classify(exc, op=op, key=key, where=self._where) from None

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=self._limiter)

    def _info(self, key: str, props: BlobProperties, *, with_meta: bool) -> ObjectInfo:
        modified = props.last_modified
        return ObjectInfo(
            key=key,
            size=int(props.size),
            mtime_ns=datetime_to_ns(modified) if modified else 0,
            etag=_etag(props.etag),
            metadata=decode_metadata(props.metadata) if with_meta else None,
        )

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        # Unreachable is TransientError: with a secondary the mount starts degraded; a lone
        # primary that does not answer is refused by the daemon.
        with trio.move_on_after(OPEN_TIMEOUT):
            try:
                await self.health()
            except TransientError as exc:
                raise TransientError(f"endpoint unreachable: {exc}") from None
            return
        raise TransientError(f"cannot reach {self._where}: no answer in {OPEN_TIMEOUT:g} s")

    async def close(self) -> None:
        def close_all() -> None:
            self._client.service.close()
            if self._client.credential_to_close is not None:
                self._client.credential_to_close.close()

        await trio.to_thread.run_sync(close_all)

    async def health(self) -> None:
        try:
            await self._run("health", "", self._container.get_container_properties)
        except (NotFound, ConfigurationError):
            raise ConfigurationError(
                f"container {self._container_name!r} does not exist at {self._client.account_url}"
            ) from None

    # --- reads -------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo:
        props = await self._run("stat", key, self._blob(key).get_blob_properties)
        return self._info(key, props, with_meta=True)

    async def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        limit: int = 1000,
    ) -> ListPage:
        per_page = max(1, min(limit, MAX_PAGE))
        full_prefix = self._blob_name(prefix)

        def one_page() -> tuple[list[BlobProperties | BlobPrefix], str | None]:
            pages: Iterator[Iterator[BlobProperties | BlobPrefix]]
            if delimiter is None:
                pages = self._container.list_blobs(
                    name_starts_with=full_prefix, results_per_page=per_page
                ).by_page(continuation_token=token)
            else:
                pages = self._container.walk_blobs(
                    name_starts_with=full_prefix, delimiter=delimiter, results_per_page=per_page
                ).by_page(continuation_token=token)
            items: list[BlobProperties | BlobPrefix] = list(next(pages, iter(())))
            return items, cast(Any, pages).continuation_token or None

        items, next_token = await self._run("list", prefix, one_page)
        cut = len(self._prefix)
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        for item in items:
            key = item.name[cut:]
            if not key:
                continue  # the marker of our own root is not an entry in it
            if isinstance(item, BlobPrefix):
                prefixes.append(key)
            else:
                objects.append(self._info(key, item, with_meta=False))
        # The service sorts by UTF-16 code units in places (Azurite does), and the SDK returns
        # prefixes and blobs as two runs: restore the contract's UTF-8 byte order.
        objects.sort(key=lambda o: _utf8(o.key))
        prefixes.sort(key=_utf8)
        return ListPage(objects=objects, prefixes=prefixes, token=next_token)

    async def read(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            await self.stat(key)  # nothing to read, but a missing key is still NotFound
            return b""

        def ranged() -> bytes:
            try:
                return self._blob(key).download_blob(offset=offset, length=length).readall()
            except HttpResponseError as exc:
                if exc.status_code == 416:  # offset at or past the end (or an empty blob)
                    return b""
                raise

        return await self._run("read", key, ranged)

    async def download(self, key: str, dest: str) -> ObjectInfo:
        concurrency = self._settings.transfer_concurrency

        def fetch() -> BlobProperties:
            stream = self._blob(key).download_blob(max_concurrency=concurrency)
            with open(dest, "wb") as f:
                stream.readinto(f)
            return stream.properties

        props = await self._run("download", key, fetch)
        return self._info(key, props, with_meta=True)

    # --- writes ------------------------------------------------------------------------

    def _written(
        self, key: str, size: int, response: Mapping[str, Any], metadata: Mapping[str, str]
    ) -> ObjectInfo:
        modified = response.get("last_modified")
        return ObjectInfo(
            key=key,
            size=size,
            mtime_ns=datetime_to_ns(modified) if modified is not None else 0,
            etag=_etag(response.get("etag")),
            metadata=dict(metadata),
        )

    async def write(self, key: str, source: str, metadata: Mapping[str, str]) -> ObjectInfo:
        stored = encode_metadata(metadata)
        concurrency = self._settings.transfer_concurrency

        def upload() -> tuple[int, dict[str, Any]]:
            with open(source, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                # Above max_single_put_size the SDK stages blocks in parallel and commits.
                response = self._blob(key).upload_blob(
                    f,
                    length=size,
                    overwrite=True,
                    metadata=stored,
                    max_concurrency=concurrency,
                    content_settings=ContentSettings(content_type=content_type(key)),
                )
            return size, response

        size, response = await self._run("write", key, upload, changes=key)
        return self._written(key, size, response, metadata)

    async def write_bytes(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        stored = encode_metadata(metadata)
        payload = bytes(data)

        def upload() -> dict[str, Any]:
            return self._blob(key).upload_blob(
                payload,
                length=len(payload),
                overwrite=True,
                metadata=stored,
                content_settings=ContentSettings(content_type=content_type(key)),
            )

        response = await self._run("write", key, upload, changes=key)
        return self._written(key, len(payload), response, metadata)

    async def delete(self, key: str) -> None:
        def remove() -> None:
            try:
                self._blob(key).delete_blob(delete_snapshots="include")
            except ResourceNotFoundError as exc:
                if _error_code(exc) == "ContainerNotFound":
                    raise
                # Already gone: deleting is idempotent.

        await self._run("delete", key, remove, changes=key)

    async def copy(
        self, src: str, dst: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        target = self._blob(dst)
        if src == dst:
            if metadata is not None:
                stored = encode_metadata(metadata)
                await self._run("copy", src, lambda: target.set_blob_metadata(stored), changes=dst)
            return await self.stat(dst)

        source_url = self._blob(src).url
        sas = self._client.sas_token
        if sas and "?" not in source_url:
            # With a SAS credential the service authorizes the source from its URL alone.
            source_url = f"{source_url}?{sas}"
        stored_meta = encode_metadata(metadata) if metadata is not None else None

        def start() -> dict[str, Any]:
            return target.start_copy_from_url(source_url, metadata=stored_meta)

        started = await self._run("copy", src, start, changes=dst)
        if started.get("copy_status") != "success":
            await self._wait_for_copy(dst, target)
        return await self.stat(dst)

    async def _wait_for_copy(self, dst: str, target: BlobClient) -> None:
        """Poll until a pending server-side copy ends; bounded by operation_deadline."""
        delay = COPY_POLL_FIRST
        deadline = trio.current_time() + self._settings.operation_deadline
        while True:
            props = await self._run("copy", dst, target.get_blob_properties)
            status = props.copy.status if props.copy else None
            if status in (None, "success"):
                return
            if status != "pending":
                raise TransientError(
                    f"azure copy {dst!r} in {self._where}: server-side copy ended as {status}"
                )
            if trio.current_time() + delay > deadline:
                copy_id = props.copy.id
                if copy_id:
                    try:
                        await self._run("copy", dst, functools.partial(target.abort_copy, copy_id))
                    except BackendError:
                        pass  # it may have finished meanwhile; the caller retries anyway
                raise TransientError(
                    f"azure copy {dst!r} in {self._where}: still pending after "
                    f"{self._settings.operation_deadline:g} s"
                )
            await trio.sleep(delay)
            delay = min(delay * 2, COPY_POLL_MAX)

    def __repr__(self) -> str:
        return f"AzureBackend({self._where!r}, auth={self._client.method})"
