"""Azure-specific behaviour of AzureBackend. The shared semantics (listing, ranges, markers,
copy, delete) are held by the contract suite; here: credentials, metadata names, error
classification through the real SDK pipeline, and what users see when things are wrong."""

from __future__ import annotations

import base64
import datetime
import http.server
import logging
import os
import re
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from azure.storage.blob import (
    AccountSasPermissions,
    BlobServiceClient,
    ResourceTypes,
    generate_account_sas,
)
from hypothesis import given
from hypothesis import strategies as st

from storagefs.backends import azure as azure_mod
from storagefs.backends.azure import (
    AzureBackend,
    classify,
    decode_meta_name,
    encode_meta_name,
)
from storagefs.backends.azure_auth import account_name_from_url, build_client
from storagefs.backends.base import (
    META_GID,
    META_MODE,
    META_MTIME,
    META_UID,
    BackendError,
    ConfigurationError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    TransientError,
    datetime_to_ns,
)
from storagefs.config import Settings
from storagefs.devtools import emulators
from storagefs.devtools.emulators import AZURITE_ACCOUNT, AZURITE_KEY, EmulatorProcess
from tests.conftest import AzureContainer

CSHARP_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Recognizable secrets: none of these may ever appear in a message, a repr or a log line.
SECRET_KEY = base64.b64encode(b"KEYMARKER-do-not-print-" + b"k" * 41).decode()
SECRET_SIG = "SIGMARKERdoNotPrint42"
SECRET_SAS = f"sv=2022-11-02&ss=b&srt=co&sp=rl&se=2099-01-01T00:00:00Z&sig={SECRET_SIG}"


def settings(**kw: object) -> Settings:
    return Settings(**kw)  # type: ignore[arg-type]


def key_settings(account_url: str, key: str = AZURITE_KEY, **kw: object) -> Settings:
    return settings(
        azure_account_url=account_url,
        azure_account_name=AZURITE_ACCOUNT,
        azure_account_key=key,
        **kw,
    )


def account_url(server: EmulatorProcess) -> str:
    return f"{server.url}/{AZURITE_ACCOUNT}"


def service_for(conn: str) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(conn)


# --- metadata names ----------------------------------------------------------------------


def test_our_metadata_names_are_stored_unchanged() -> None:
    for name in (META_MODE, META_UID, META_GID, META_MTIME):
        assert encode_meta_name(name) == name
        assert decode_meta_name(name) == name


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("x-id", "x_2did"),
        ("A", "_41"),
        ("with_underscore", "with_5funderscore"),
        ("1st", "_31st"),
        ("é", "_c3_a9"),
    ],
)
def test_other_names_are_escaped_readably(name: str, stored: str) -> None:
    assert encode_meta_name(name) == stored
    assert decode_meta_name(stored) == name


@given(st.text(min_size=1, max_size=40))
def test_name_mapping_is_reversible_and_yields_case_proof_identifiers(name: str) -> None:
    stored = encode_meta_name(name)
    assert CSHARP_IDENTIFIER.match(stored), stored
    assert stored == stored.lower()  # the service's case folding cannot change it
    assert decode_meta_name(stored) == name
    assert decode_meta_name(stored.upper()) == name


def test_names_written_by_other_tools_read_sensibly() -> None:
    assert decode_meta_name("Mode") == "mode"  # names are case-insensitive in Azure
    assert decode_meta_name("hdi_isfolder") == "hdi_isfolder"  # "_is" is no escape
    assert decode_meta_name("odd_ff") == "odd_ff"  # not UTF-8 once decoded: kept as is


def test_empty_metadata_name_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        encode_meta_name("")


# --- credential selection (no I/O) -------------------------------------------------------

CONN = emulators.azurite_connection_string(10000)


def test_connection_string_wins_over_everything() -> None:
    s = settings(
        azure_connection_string=CONN,
        azure_account_name="other",
        azure_account_key=SECRET_KEY,
        azure_sas_token=SECRET_SAS,
    )
    client = build_client(s, {"AZURE_STORAGE_KEY": SECRET_KEY})
    assert client.method == "connection-string"
    assert client.account_url == f"http://127.0.0.1:10000/{AZURITE_ACCOUNT}"


def test_connection_string_from_azure_sdk_variable() -> None:
    client = build_client(settings(), {"AZURE_STORAGE_CONNECTION_STRING": CONN})
    assert client.method == "connection-string"


def test_account_key_from_settings_beats_sdk_variables() -> None:
    s = settings(azure_account_name="acct", azure_account_key=SECRET_KEY)
    client = build_client(s, {"AZURE_STORAGE_KEY": AZURITE_KEY, "AZURE_STORAGE_SAS_TOKEN": "x=1"})
    assert client.method == "account-key"
    assert client.account_url == "https://acct.blob.core.windows.net"
    credential = client.service.credential
    assert credential.account_name == "acct"
    assert credential.account_key == SECRET_KEY


def test_account_key_from_sdk_variables() -> None:
    env = {"AZURE_STORAGE_ACCOUNT": "acct2", "AZURE_STORAGE_KEY": AZURITE_KEY}
    client = build_client(settings(), env)
    assert client.method == "account-key"
    assert client.account_url == "https://acct2.blob.core.windows.net"


def test_account_name_derived_from_emulator_url() -> None:
    s = settings(
        azure_account_url="http://127.0.0.1:10000/devstoreaccount1/", azure_account_key=AZURITE_KEY
    )
    client = build_client(s, {})
    assert client.service.credential.account_name == AZURITE_ACCOUNT
    assert account_name_from_url("https://acct.blob.core.windows.net") == "acct"
    assert account_name_from_url("http://localhost:10000/dev1") == "dev1"


def test_sas_token_is_a_credential_not_part_of_the_url() -> None:
    s = settings(azure_account_name="acct", azure_sas_token="?" + SECRET_SAS)
    client = build_client(s, {})
    assert client.method == "sas"
    assert client.sas_token == SECRET_SAS
    assert SECRET_SIG not in client.service.url
    assert SECRET_SIG not in client.account_url


def test_sas_token_from_sdk_variable() -> None:
    env = {"AZURE_STORAGE_ACCOUNT": "acct", "AZURE_STORAGE_SAS_TOKEN": SECRET_SAS}
    assert build_client(settings(), env).method == "sas"


def test_without_secrets_default_credential_is_used() -> None:
    from azure.identity import DefaultAzureCredential

    s = settings(azure_account_url="https://acct.blob.core.windows.net")
    client = build_client(s, {})
    assert client.method == "default-credential"
    assert isinstance(client.service.credential, DefaultAzureCredential)
    client.credential_to_close.close()


def test_no_account_at_all_is_a_clear_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="STORAGEFS_AZURE_ACCOUNT_NAME"):
        build_client(settings(), {})


def test_malformed_connection_string_is_not_echoed() -> None:
    bad = f"garbage;AccountKey={SECRET_KEY}"
    with pytest.raises(ConfigurationError) as info:
        build_client(settings(azure_connection_string=bad), {})
    assert SECRET_KEY not in str(info.value)


def test_describe_names_container_prefix_and_endpoint_only() -> None:
    s = settings(azure_connection_string=CONN + f"SharedAccessSignature={SECRET_SAS}")
    backend = AzureBackend("box", "/some/prefix/", s, environ={})
    text = backend.describe()
    assert text == f"azure://box/some/prefix at http://127.0.0.1:10000/{AZURITE_ACCOUNT}"
    for secret in (AZURITE_KEY, SECRET_SIG):
        assert secret not in text
        assert secret not in repr(backend)
    assert AzureBackend("box", "", s, environ={}).describe().startswith("azure://box at ")


# --- against Azurite -----------------------------------------------------------------------


def conn_backend(box: AzureContainer, prefix: str = "", **kw: object) -> AzureBackend:
    return AzureBackend(
        box.container,
        prefix,
        settings(azure_connection_string=box.connection_string, **kw),
        environ={},
    )


async def round_trip(backend: AzureBackend) -> None:
    await backend.open()
    meta = {META_MODE: "33188", META_MTIME: "1700000000.5"}
    written = await backend.write_bytes("dir/a", b"hello azure", meta)
    assert written.size == 11
    info = await backend.stat("dir/a")
    assert info.etag == written.etag
    assert info.metadata == meta
    assert await backend.read("dir/a", 6, 100) == b"azure"
    copied = await backend.copy("dir/a", "dir/b")
    assert copied.metadata == meta
    assert await backend.read("dir/b", 0, 5) == b"hello"
    page = await backend.list("dir/")
    assert [o.key for o in page.objects] == ["dir/a", "dir/b"]
    await backend.delete("dir/a")
    with pytest.raises(NotFound):
        await backend.stat("dir/a")
    await backend.close()


async def test_round_trip_with_connection_string(azure_container: AzureContainer) -> None:
    backend = conn_backend(azure_container)
    assert backend.auth_method == "connection-string"
    await round_trip(backend)


async def test_round_trip_with_account_key(
    azurite_server: EmulatorProcess, azure_container: AzureContainer
) -> None:
    s = key_settings(account_url(azurite_server))
    backend = AzureBackend(azure_container.container, "k", s, environ={})
    assert backend.auth_method == "account-key"
    await round_trip(backend)


async def test_round_trip_with_sas_token_including_server_side_copy(
    azurite_server: EmulatorProcess, azure_container: AzureContainer
) -> None:
    sas = generate_account_sas(
        AZURITE_ACCOUNT,
        AZURITE_KEY,
        resource_types=ResourceTypes(container=True, object=True),
        permission=AccountSasPermissions(
            read=True, write=True, delete=True, list=True, add=True, create=True
        ),
        expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
    )
    s = settings(azure_account_url=account_url(azurite_server), azure_sas_token=sas)
    backend = AzureBackend(azure_container.container, "", s, environ={})
    assert backend.auth_method == "sas"
    await round_trip(backend)


async def test_backend_prefix_scopes_every_operation(azure_container: AzureContainer) -> None:
    backend = conn_backend(azure_container, "/team/data/")
    await backend.write_bytes("", b"", {})  # a marker of the root itself: not an entry
    await backend.write_bytes("x/", b"", {})
    await backend.write_bytes("x/y", b"1", {})
    root = await backend.list("")
    assert root.objects == [] and root.prefixes == ["x/"]
    with service_for(azure_container.connection_string) as service:
        names = [
            b.name for b in service.get_container_client(azure_container.container).list_blobs()
        ]
    assert sorted(names) == ["team/data/", "team/data/x/", "team/data/x/y"]


async def test_listing_is_in_utf8_byte_order_and_pages_cover_everything(
    azure_container: AzureContainer,
) -> None:
    backend = conn_backend(azure_container)
    # UTF-16 order (which Azurite uses) puts the emoji before U+FF21; UTF-8 bytes do not.
    keys = ["B", "a", "a b", "d/", "d/x", "e/f", "z\uff21", "z\U0001f600", "z\u00e9"]
    for key in keys:
        await backend.write_bytes(key, b"", {})
    everything = await backend.list("", limit=100)
    entries = [o.key for o in everything.objects] + everything.prefixes
    assert everything.token is None
    assert [o.key for o in everything.objects] == sorted(
        [k for k in keys if "/" not in k], key=str.encode
    )
    assert everything.prefixes == ["d/", "e/"]

    paged: list[str] = []
    token: str | None = None
    for _ in range(20):
        page = await backend.list("", token=token, limit=2)
        assert len(page.objects) + len(page.prefixes) <= 2
        paged += [o.key for o in page.objects] + page.prefixes
        token = page.token
        if token is None:
            break
    assert sorted(paged) == sorted(entries)

    recursive = await backend.list("", delimiter=None)
    assert [o.key for o in recursive.objects] == sorted(keys, key=str.encode)


async def test_metadata_written_by_s3_style_tools_reads_back_identically(
    azure_container: AzureContainer,
) -> None:
    s3_style = {"mode": "33188", "uid": "1000", "gid": "1000", "mtime": "1700000000.123456789"}
    with service_for(azure_container.connection_string) as service:
        blob = service.get_blob_client(azure_container.container, "from-elsewhere")
        blob.upload_blob(b"x", metadata=s3_style)
    info = await conn_backend(azure_container).stat("from-elsewhere")
    assert info.metadata == s3_style


async def test_unusual_metadata_names_round_trip_through_the_service(
    azure_container: AzureContainer,
) -> None:
    backend = conn_backend(azure_container)
    meta = {"mode": "1", "Content-Kind": "a", "x_y": "b", "ünï": "c"}
    await backend.write_bytes("m", b"", meta)
    assert (await backend.stat("m")).metadata == meta
    with service_for(azure_container.connection_string) as service:
        raw = service.get_blob_client(azure_container.container, "m").get_blob_properties().metadata
    assert all(CSHARP_IDENTIFIER.match(name) for name in raw)
    renamed = await backend.copy("m", "m", {"Other-Name": "z"})
    assert renamed.metadata == {"Other-Name": "z"}


async def test_large_write_uses_sdk_block_upload_and_downloads_in_parallel(
    azure_container: AzureContainer, tmp_path: Path
) -> None:
    mib = 1024 * 1024
    backend = conn_backend(
        azure_container,
        multipart_threshold=5 * mib,
        multipart_chunksize=5 * mib,
        transfer_concurrency=4,
    )
    data = os.urandom(11 * mib + 7)
    source = tmp_path / "big"
    source.write_bytes(data)
    written = await backend.write("big", str(source), {"mode": "33188"})
    assert written.size == len(data)
    with service_for(azure_container.connection_string) as service:
        committed, _ = service.get_blob_client(azure_container.container, "big").get_block_list()
    assert len(committed) == 3  # 5 + 5 + 1 MiB blocks staged by the SDK
    dest = tmp_path / "back"
    info = await backend.download("big", str(dest))
    assert dest.read_bytes() == data
    assert info.metadata == {"mode": "33188"}
    assert info.etag == written.etag
    assert await backend.read("big", 5 * mib - 3, 6) == data[5 * mib - 3 : 5 * mib + 3]


async def test_small_write_is_a_single_put(azure_container: AzureContainer, tmp_path: Path) -> None:
    source = tmp_path / "small"
    source.write_bytes(b"tiny")
    written = await conn_backend(azure_container).write("small", str(source), {})
    with service_for(azure_container.connection_string) as service:
        blob = service.get_blob_client(azure_container.container, "small")
        committed, _ = blob.get_block_list()
        props = blob.get_blob_properties()
    assert committed == []  # Put Blob, no staged blocks
    assert written.etag == props.etag.strip('"')
    assert written.mtime_ns == datetime_to_ns(props.last_modified)


async def test_reads_past_the_end_and_of_empty_blobs_are_empty(
    azure_container: AzureContainer,
) -> None:
    backend = conn_backend(azure_container)
    await backend.write_bytes("empty", b"", {})
    await backend.write_bytes("five", b"12345", {})
    assert await backend.read("empty", 0, 10) == b""
    assert await backend.read("five", 5, 10) == b""
    assert await backend.read("five", 99, 10) == b""
    assert await backend.read("five", 3, 10) == b"45"
    with pytest.raises(NotFound):
        await backend.read("missing", 0, 10)


async def test_copy_of_missing_source_and_delete_of_missing_key(
    azure_container: AzureContainer,
) -> None:
    backend = conn_backend(azure_container)
    with pytest.raises(NotFound, match="'nope'"):
        await backend.copy("nope", "dst")
    await backend.delete("never-existed")


async def test_missing_container_is_a_configuration_error(
    azurite_server: EmulatorProcess,
) -> None:
    conn = emulators.azurite_connection_string(azurite_server.port)
    backend = AzureBackend("no-such-box", "", settings(azure_connection_string=conn), environ={})
    expected = f"container 'no-such-box' does not exist at {account_url(azurite_server)}"
    with pytest.raises(ConfigurationError) as info:
        await backend.open()
    assert str(info.value) == expected
    with pytest.raises(ConfigurationError):
        await backend.stat("k")


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (in the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


async def test_unreachable_endpoint_fails_open_quickly(closed_port: int) -> None:
    s = key_settings(f"http://127.0.0.1:{closed_port}/{AZURITE_ACCOUNT}")
    backend = AzureBackend("box", "", s, environ={})
    started = time.monotonic()
    with pytest.raises(TransientError, match="unreachable"):
        await backend.open()
    assert time.monotonic() - started < azure_mod.OPEN_TIMEOUT
    with pytest.raises(TransientError):  # at run time the same failure is worth a retry
        await backend.health()


async def test_silent_endpoint_fails_open_at_the_open_timeout(
    silent_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(azure_mod, "OPEN_TIMEOUT", 0.5)
    s = key_settings(f"http://127.0.0.1:{silent_port}/{AZURITE_ACCOUNT}", request_timeout=30)
    backend = AzureBackend("box", "", s, environ={})
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"no answer in 0\.5 s"):
        await backend.open()
    assert time.monotonic() - started < 5


class HoldingServer:
    """Accepts connections, reads nothing, answers nothing; counts who came."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)  # accept() cannot be interrupted by close() otherwise
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.conns.append(conn)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
        for conn in self.conns:
            conn.close()  # the stuck requests fail now instead of at read_timeout


async def wait_for_connections(server: HoldingServer, count: int) -> None:
    with trio.fail_after(5):
        while len(server.conns) < count:  # noqa: ASYNC110 - another thread appends
            await trio.sleep(0.02)


async def test_abandoned_write_holds_back_the_next_write_of_that_key() -> None:
    server = HoldingServer()
    try:
        s = key_settings(f"http://127.0.0.1:{server.port}/{AZURITE_ACCOUNT}", request_timeout=30)
        backend = AzureBackend("box", "", s, environ={})
        with trio.move_on_after(0.2):
            await backend.write_bytes("k", b"old", {})  # times out above us; thread goes on
        await wait_for_connections(server, 1)
        with trio.move_on_after(0.5):
            await backend.write_bytes("k", b"new", {})
        assert len(server.conns) == 1  # the newer write never left: the old one may land yet
        with trio.move_on_after(0.5):
            await backend.write_bytes("other", b"x", {})
        await wait_for_connections(server, 2)  # other keys are not held up
    finally:
        server.close()
    with trio.fail_after(10), pytest.raises(TransientError):
        # Once the stuck request has failed, "k" can be written (here: refused) again.
        await backend.write_bytes("k", b"new", {})


# --- classification through the real SDK pipeline ----------------------------------------


class FixedAnswer(http.server.BaseHTTPRequestHandler):
    """Every request gets the same status and Azure error code; requests are counted."""

    status = 503
    code = "ServerBusy"
    count = 0

    def _answer(self) -> None:
        type(self).count += 1
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{self.code}</Code>'
            f"<Message>made up</Message></Error>"
        ).encode()
        self.send_response(self.status)
        self.send_header("x-ms-error-code", self.code)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fixed_server() -> Iterator[tuple[str, type[FixedAnswer]]]:
    handler = type("Handler", (FixedAnswer,), {"count": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{AZURITE_ACCOUNT}", handler
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (503, "ServerBusy", TransientError),
        (500, "OperationTimedOut", TransientError),
        (500, "InternalError", TransientError),
        (429, "TooManyRequests", TransientError),
        (404, "BlobNotFound", NotFound),
        (404, "ContainerNotFound", ConfigurationError),
        (403, "AuthenticationFailed", PermissionDenied),
        (403, "AuthorizationFailure", PermissionDenied),
        (409, "LeaseIdMissing", Conflict),
        (412, "ConditionNotMet", Conflict),
        (400, "InvalidHeaderValue", InvalidRequest),
    ],
)
async def test_service_answers_are_classified_and_never_retried_by_the_sdk(
    fixed_server: tuple[str, type[FixedAnswer]],
    status: int,
    code: str,
    expected: type[BackendError],
) -> None:
    url, handler = fixed_server
    handler.status, handler.code = status, code
    backend = AzureBackend("box", "", key_settings(url), environ={})
    for op in (backend.stat("k"), backend.read("k", 0, 10)):
        with pytest.raises(expected) as info:
            await op
        assert type(info.value) is expected
        assert "'k'" in str(info.value) and url in str(info.value)
    assert handler.count == 2  # one request per call: retrying is resilience.py's job


def test_classify_without_a_response() -> None:
    where = "azure://box at http://h"
    assert isinstance(
        classify(ServiceRequestError("refused"), op="x", key="k", where=where), TransientError
    )
    assert isinstance(
        classify(HttpResponseError("odd"), op="x", key="k", where=where), TransientError
    )
    from azure.core.exceptions import ClientAuthenticationError

    denied = classify(ClientAuthenticationError("no identity"), op="x", key="k", where=where)
    assert isinstance(denied, PermissionDenied)


def test_classify_scrubs_urls_and_key_pairs_from_sdk_text() -> None:
    # Older SDK/requests versions quote the request URL (with the SAS) in connection errors.
    raw = ServiceRequestError(
        f"Max retries exceeded with url: /box/k?{SECRET_SAS} (AccountKey={SECRET_KEY};x)\nmore"
    )
    message = str(classify(raw, op="stat", key="k", where="azure://box at http://h"))
    assert SECRET_SIG not in message and SECRET_KEY not in message
    assert "Max retries exceeded" in message and "more" not in message


# --- secrets -------------------------------------------------------------------------------


def _all_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


async def test_secrets_never_appear_in_messages_reprs_or_logs(
    azurite_server: EmulatorProcess,
    azure_container: AzureContainer,
    closed_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="azure")
    caplog.set_level(logging.DEBUG, logger="storagefs")
    dead = f"http://127.0.0.1:{closed_port}/{AZURITE_ACCOUNT}"
    secret_conn = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={SECRET_KEY};"
        f"BlobEndpoint={account_url(azurite_server)};"
    )
    sas_conn = f"BlobEndpoint={dead};SharedAccessSignature={SECRET_SAS}"
    backends = [
        # Wrong key, reachable service: 403 from Azurite.
        AzureBackend(
            azure_container.container,
            "",
            key_settings(account_url(azurite_server), SECRET_KEY),
            environ={},
        ),
        AzureBackend(
            azure_container.container, "", settings(azure_connection_string=secret_conn), environ={}
        ),
        # SAS over a dead endpoint: the SDK's connection error quotes the URL with the SAS.
        AzureBackend(
            "box", "", settings(azure_account_url=dead, azure_sas_token=SECRET_SAS), environ={}
        ),
        AzureBackend("box", "", settings(azure_connection_string=sas_conn), environ={}),
    ]
    errors: list[BaseException] = []
    for backend in backends:
        for attempt in (
            backend.open(),
            backend.stat("k"),
            backend.read("k", 0, 1),
            backend.copy("a", "b"),
        ):
            with pytest.raises(BackendError) as info:
                await attempt
            errors.append(info.value)
    assert {type(e) for e in errors} >= {PermissionDenied, TransientError}
    texts = [_all_text(e) for e in errors] + [b.describe() for b in backends]
    texts += [repr(b) for b in backends] + [r.getMessage() for r in caplog.records]
    for text in texts:
        for secret in (SECRET_KEY, SECRET_SIG, secret_conn, sas_conn):
            assert secret not in text, text
    # The messages still say what failed and where.
    assert any(account_url(azurite_server) in str(e) for e in errors)
    assert any(dead in str(e) for e in errors)
