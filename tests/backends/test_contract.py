"""One suite, every backend: the conventions of storagefs/backends/base.py, held.

Adding a backend: a ``_make_<kind>`` function below, an entry in ``_MAKERS`` and a param in
``BACKENDS``. Azure needs only its param line, ``pytest.param("azure", marks=pytest.mark.azure)``,
once storagefs/backends/azure.py exists.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from storagefs.backends.base import (
    META_GID,
    META_MODE,
    META_MTIME,
    META_UID,
    Backend,
    NotFound,
    peek,
)
from storagefs.backends.local import LocalBackend
from storagefs.backends.s3 import S3Backend
from storagefs.config import Settings
from tests.conftest import NOT_APPLICABLE
from tests.fakes import MemoryBackend

MiB = 1024 * 1024

BACKENDS = [
    "memory",
    "local",
    pytest.param("s3", marks=pytest.mark.s3),
    pytest.param("azure", marks=pytest.mark.azure),
]

# Makes a backend on the test's store (one bucket/container/directory per test) under a prefix;
# every call of one test shares that store, so two prefixes can be compared.
Maker = Callable[[str], Awaitable[Backend]]


def _settings(**extra: object) -> Settings:
    # The smallest multipart sizes S3 allows, so a 12 MiB object is three parts.
    return Settings(
        multipart_threshold=5 * MiB,
        multipart_chunksize=5 * MiB,
        transfer_concurrency=4,
        connect_timeout=2.0,
        request_timeout=20.0,
        **extra,  # type: ignore[arg-type]
    )


def _make_memory(request: pytest.FixtureRequest, tmp_path: Path) -> Maker:
    shared: dict[str, MemoryBackend] = {}

    async def make(prefix: str) -> Backend:
        assert not prefix, "MemoryBackend has no prefixes"
        return shared.setdefault("", MemoryBackend())

    return make


def _make_local(request: pytest.FixtureRequest, tmp_path: Path) -> Maker:
    async def make(prefix: str) -> Backend:
        root = tmp_path / "store" / prefix
        root.mkdir(parents=True, exist_ok=True)
        return LocalBackend(root)

    return make


def _make_s3(request: pytest.FixtureRequest, tmp_path: Path) -> Maker:
    endpoint_url, bucket = request.getfixturevalue("s3_bucket")

    async def make(prefix: str) -> Backend:
        return S3Backend(bucket, prefix, _settings(s3_endpoint_url=endpoint_url))

    return make


def _make_azure(request: pytest.FixtureRequest, tmp_path: Path) -> Maker:
    connection_string, container = request.getfixturevalue("azure_container")
    azure = importlib.import_module("storagefs.backends.azure")

    async def make(prefix: str) -> Backend:
        settings = _settings(azure_connection_string=connection_string)
        backend: Backend = azure.AzureBackend(container, prefix, settings)
        return backend

    return make


_MAKERS = {"memory": _make_memory, "local": _make_local, "s3": _make_s3, "azure": _make_azure}


@pytest.fixture(params=BACKENDS)
async def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Maker]:
    """Opens backends on one store; closes them all afterwards."""
    maker = _MAKERS[request.param](request, tmp_path)
    opened: list[Backend] = []

    async def make(prefix: str = "") -> Backend:
        backend = await maker(prefix)
        await backend.open()
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        await backend.close()


@pytest.fixture
async def backend(make_backend: Maker) -> Backend:
    return await make_backend("")


@pytest.fixture
def kind(request: pytest.FixtureRequest) -> str:
    """The backend kind of the current test (its make_backend param)."""
    return str(request.node.callspec.params["make_backend"])


META = {META_MODE: "33188", META_UID: "1000", META_GID: "1000", META_MTIME: "1700000000.5"}


def _file(tmp_path: Path, data: bytes, name: str = "src") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


async def _list_all(
    backend: Backend, prefix: str, delimiter: str | None = "/", limit: int = 1000
) -> tuple[list[str], list[str]]:
    """Every object key and common prefix under ``prefix``, following tokens."""
    objects: list[str] = []
    prefixes: list[str] = []
    token = None
    for _ in range(1000):
        page = await backend.list(prefix, delimiter=delimiter, token=token, limit=limit)
        assert len(page.objects) + len(page.prefixes) <= limit
        objects += [o.key for o in page.objects]
        prefixes += page.prefixes
        token = page.token
        if token is None:
            return objects, prefixes
    raise AssertionError("listing never ended")


def _byte_sorted(keys: list[str]) -> list[str]:
    return sorted(keys, key=str.encode)


# --- objects ---------------------------------------------------------------------------


async def test_write_stat_read_ranges(backend: Backend, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable
    written = await backend.write("dir/file.bin", _file(tmp_path, data), META)
    assert written.key == "dir/file.bin"
    assert written.size == len(data)

    info = await backend.stat("dir/file.bin")
    assert (info.key, info.size) == ("dir/file.bin", len(data))
    assert info.metadata == META
    assert info.etag
    assert info.mtime_ns > 1_600_000_000 * 10**9

    assert await backend.read("dir/file.bin", 0, len(data)) == data
    assert await backend.read("dir/file.bin", 100, 50) == data[100:150]
    assert await backend.read("dir/file.bin", len(data) - 10, 100) == data[-10:]  # short
    assert await backend.read("dir/file.bin", len(data), 10) == b""  # at the end
    assert await backend.read("dir/file.bin", len(data) + 5000, 10) == b""  # past the end
    assert await backend.read("dir/file.bin", 7, 0) == b""  # zero length


async def test_empty_object(backend: Backend, tmp_path: Path) -> None:
    await backend.write("empty", _file(tmp_path, b""), {})
    assert (await backend.stat("empty")).size == 0
    assert await backend.read("empty", 0, 10) == b""


async def test_metadata_round_trip(backend: Backend) -> None:
    meta = {META_MODE: "16877", META_UID: "0", META_GID: "42", META_MTIME: "1712345678.123456789"}
    await backend.write_bytes("m", b"x", meta)
    assert (await backend.stat("m")).metadata == meta
    await backend.write_bytes("none", b"x", {})
    assert (await backend.stat("none")).metadata == {}


async def test_write_over_existing_replaces_data_and_metadata(
    backend: Backend, tmp_path: Path
) -> None:
    await backend.write("k", _file(tmp_path, b"first version, longer"), {META_UID: "1"})
    first = await backend.stat("k")
    await backend.write("k", _file(tmp_path, b"second", "src2"), {META_GID: "2"})
    second = await backend.stat("k")
    assert await backend.read("k", 0, 100) == b"second"
    assert second.size == 6
    assert second.metadata == {META_GID: "2"}  # replaced, not merged
    assert second.etag != first.etag


async def test_write_bytes(backend: Backend) -> None:
    info = await backend.write_bytes("small/obj", b"hello", META)
    assert (info.key, info.size) == ("small/obj", 5)
    assert await backend.read("small/obj", 0, 5) == b"hello"
    assert (await backend.stat("small/obj")).metadata == META


async def test_large_object_multipart_and_download(
    backend: Backend, kind: str, tmp_path: Path
) -> None:
    data = os.urandom(12 * MiB + 123)
    info = await backend.write("big/blob", _file(tmp_path, data), META)
    assert info.size == len(data)
    if kind == "s3":
        assert info.etag is not None and info.etag.endswith("-3"), "not a 3-part upload"

    stat = await backend.stat("big/blob")
    assert stat.size == len(data)
    assert stat.metadata == META
    boundary = 5 * MiB  # a read across the first part boundary
    assert await backend.read("big/blob", boundary - 10, 20) == data[boundary - 10 : boundary + 10]

    dest = tmp_path / "downloaded"
    got = await backend.download("big/blob", str(dest))
    assert got.size == len(data)
    assert got.metadata == META
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("size", [5 * MiB - 1, 5 * MiB, 5 * MiB + 1, 11 * MiB + 7])
async def test_download_writes_in_place(backend: Backend, size: int, tmp_path: Path) -> None:
    """The contract (base.py): ``dest`` stays the same file, on both sides of the multipart
    threshold (5 MiB here): a descriptor opened on it first reads the object through it. A
    download that renamed a temporary file over ``dest`` lost every later change made
    through the core's staging descriptor (issue #21)."""
    data = os.urandom(size)
    await backend.write("obj", _file(tmp_path, data), META)
    dest = tmp_path / "staging"
    dest.write_bytes(b"old content, longer than nothing")
    fd = os.open(dest, os.O_RDWR)
    try:
        before = os.fstat(fd)
        await backend.download("obj", str(dest))
        after = dest.stat()
        assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino), "dest replaced"
        assert os.fstat(fd).st_size == size
        got = os.pread(fd, size + 1, 0)
    finally:
        os.close(fd)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


async def test_download_small(backend: Backend, tmp_path: Path) -> None:
    await backend.write_bytes("s", b"tiny", {META_UID: "7"})
    dest = tmp_path / "out"
    info = await backend.download("s", str(dest))
    assert dest.read_bytes() == b"tiny"
    assert (info.size, info.metadata) == (4, {META_UID: "7"})


# --- listing ---------------------------------------------------------------------------

# A tree with explicit markers for every directory: the local backend reports every directory
# as a marker, object stores only the markers that exist.
TREE = {
    "a.txt": b"a",
    "dir/": b"",
    "dir/x": b"xx",
    "dir/sub/": b"",
    "dir/sub/y": b"yyy",
    "dir/sub2/": b"",
    "dir.txt": b"d",
    "dir-z": b"z",
    "e/": b"",
    "e/f": b"f",
}


async def _write_tree(backend: Backend, tree: dict[str, bytes] = TREE) -> None:
    for key, data in tree.items():
        await backend.write_bytes(key, data, {})


async def test_list_with_delimiter(backend: Backend) -> None:
    await _write_tree(backend)

    page = await backend.list("")
    assert [o.key for o in page.objects] == ["a.txt", "dir-z", "dir.txt"]
    assert page.prefixes == ["dir/", "e/"]
    assert page.token is None
    assert [o.size for o in page.objects] == [1, 1, 1]
    assert all(o.metadata is None for o in page.objects)  # listings carry no metadata

    page = await backend.list("dir/")
    assert [o.key for o in page.objects] == ["dir/", "dir/x"]  # the marker, in its own prefix
    assert page.prefixes == ["dir/sub/", "dir/sub2/"]
    assert [o.size for o in page.objects] == [0, 2]

    page = await backend.list("dir/sub")  # a prefix that is not a whole name
    assert page.objects == []
    assert page.prefixes == ["dir/sub/", "dir/sub2/"]

    page = await backend.list("dir/sub2/")
    assert [o.key for o in page.objects] == ["dir/sub2/"]
    assert page.prefixes == []

    page = await backend.list("nothing/")
    assert (page.objects, page.prefixes, page.token) == ([], [], None)


async def test_list_recursive(backend: Backend) -> None:
    await _write_tree(backend)
    objects, prefixes = await _list_all(backend, "", delimiter=None)
    assert objects == _byte_sorted(list(TREE))
    assert prefixes == []
    objects, _ = await _list_all(backend, "dir/", delimiter=None)
    assert objects == ["dir/", "dir/sub/", "dir/sub/y", "dir/sub2/", "dir/x"]


async def test_pagination_lists_everything_in_order(backend: Backend) -> None:
    expected_objects = ["p/"] + [f"p/k{i:02d}" for i in range(20)]
    expected_prefixes = [f"p/k{i:02d}-d/" for i in range(0, 20, 4)]
    await backend.write_bytes("p/", b"", {})
    for key in expected_objects[1:]:
        await backend.write_bytes(key, key.encode(), {})
    for prefix in expected_prefixes:
        await backend.write_bytes(prefix, b"", {})
        await backend.write_bytes(prefix + "inner", b"i", {})

    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = await backend.list("p/", token=token, limit=4)
        pages += 1
        entries = [o.key for o in page.objects] + page.prefixes
        assert 0 < len(entries) <= 4
        seen += _byte_sorted(entries)
        token = page.token
        if token is None:
            break
        assert pages < 50
    assert seen == _byte_sorted(expected_objects + expected_prefixes)  # complete, in order
    assert pages == 7  # 26 entries, 4 a page

    objects, _ = await _list_all(backend, "p/", delimiter=None, limit=3)
    inner = [p + "inner" for p in expected_prefixes]
    assert objects == _byte_sorted(expected_objects + expected_prefixes + inner)


async def test_reverse_recursive_listing_deletes_a_tree(backend: Backend) -> None:
    await _write_tree(backend)
    objects, _ = await _list_all(backend, "", delimiter=None, limit=4)
    for key in reversed(objects):
        await backend.delete(key)
    assert await _list_all(backend, "", delimiter=None) == ([], [])


async def test_directory_marker(backend: Backend) -> None:
    info = await backend.write_bytes("empty dir/", b"", {META_MODE: "16877"})
    assert (info.key, info.size) == ("empty dir/", 0)
    stat = await backend.stat("empty dir/")
    assert (stat.size, stat.metadata) == (0, {META_MODE: "16877"})
    assert (await backend.list("")).prefixes == ["empty dir/"]
    await backend.delete("empty dir/")
    with pytest.raises(NotFound):
        await backend.stat("empty dir/")


# --- copy, delete, missing keys --------------------------------------------------------


async def test_copy_keeps_metadata(backend: Backend) -> None:
    await backend.write_bytes("src", b"payload", META)
    info = await backend.copy("src", "dst/copied")
    assert (info.key, info.size) == ("dst/copied", 7)
    assert await backend.read("dst/copied", 0, 100) == b"payload"
    assert (await backend.stat("dst/copied")).metadata == META
    assert await backend.read("src", 0, 100) == b"payload"  # the source stays


async def test_copy_replaces_metadata(backend: Backend) -> None:
    await backend.write_bytes("src", b"payload", META)
    new = {META_MODE: "33261", META_UID: "5"}
    info = await backend.copy("src", "dst", new)
    assert info.metadata == new
    assert (await backend.stat("dst")).metadata == new
    assert (await backend.stat("src")).metadata == META


async def test_copy_to_self_with_new_metadata(backend: Backend) -> None:
    await backend.write_bytes("same", b"content", META)
    new = {**META, META_MODE: "33152"}
    await backend.copy("same", "same", new)
    stat = await backend.stat("same")
    assert stat.metadata == new
    assert await backend.read("same", 0, 100) == b"content"
    await backend.copy("same", "same")  # nothing to change: allowed, changes nothing
    assert (await backend.stat("same")).metadata == new


async def test_delete(backend: Backend) -> None:
    await backend.write_bytes("gone/soon", b"x", {})
    await backend.delete("gone/soon")
    with pytest.raises(NotFound):
        await backend.stat("gone/soon")
    assert "gone/soon" not in (await _list_all(backend, "", delimiter=None))[0]
    await backend.delete("gone/soon")  # again: still fine
    await backend.delete("never/existed")


async def test_missing_keys_raise_not_found(backend: Backend, tmp_path: Path) -> None:
    await backend.write_bytes("present", b"x", {})
    with pytest.raises(NotFound):
        await backend.stat("absent")
    with pytest.raises(NotFound):
        await backend.read("absent", 0, 10)
    with pytest.raises(NotFound):
        await backend.read("absent", 0, 0)
    with pytest.raises(NotFound):
        await backend.copy("absent", "elsewhere")
    with pytest.raises(NotFound):
        await backend.download("absent", str(tmp_path / "out"))
    with pytest.raises(NotFound):
        await backend.stat("present/")  # a marker is a different key
    with pytest.raises(NotFound):
        await backend.stat("present/child")
    with pytest.raises(NotFound):
        await backend.stat("elsewhere")  # the failed copy created nothing


@pytest.fixture
def with_prefixes(kind: str) -> None:
    if kind == "memory":
        pytest.skip(f"{NOT_APPLICABLE} MemoryBackend has no prefixes")


@pytest.mark.usefixtures("with_prefixes")
async def test_prefix_isolation(make_backend: Maker) -> None:
    one = await make_backend("tenant-one")
    two = await make_backend("tenant-two/nested")
    await one.write_bytes("shared/name", b"one", {})
    await two.write_bytes("shared/name", b"two", {})
    await one.write_bytes("only-one", b"1", {})

    assert await one.read("shared/name", 0, 10) == b"one"
    assert await two.read("shared/name", 0, 10) == b"two"
    with pytest.raises(NotFound):
        await two.stat("only-one")
    one_keys, _ = await _list_all(one, "", delimiter=None)
    two_keys, _ = await _list_all(two, "", delimiter=None)
    assert [k for k in one_keys if not k.endswith("/")] == ["only-one", "shared/name"]
    assert [k for k in two_keys if not k.endswith("/")] == ["shared/name"]
    await two.delete("shared/name")
    assert await one.read("shared/name", 0, 10) == b"one"


async def test_unicode_and_spaces_in_keys(backend: Backend, tmp_path: Path) -> None:
    keys = ["dir with space/ünï cødé ✓.txt", "日本語/ファイル 1", "emoji 🎉/a+b=c&d%20e"]
    for i, key in enumerate(keys):
        await backend.write(key, _file(tmp_path, f"data {i}".encode(), f"s{i}"), META)
    for i, key in enumerate(keys):
        info = await backend.stat(key)
        assert (info.key, info.size, info.metadata) == (key, 6, META)
        assert await backend.read(key, 0, 10) == f"data {i}".encode()
    objects, _ = await _list_all(backend, "", delimiter=None)
    assert [k for k in objects if not k.endswith("/")] == _byte_sorted(keys)
    page = await backend.list("dir with space/")
    assert [o.key for o in page.objects if not o.key.endswith("/")] == [keys[0]]
    copied = await backend.copy(keys[0], "日本語/copie é")
    assert copied.key == "日本語/copie é"
    assert await backend.read("日本語/copie é", 0, 10) == b"data 0"
    await backend.delete(keys[1])
    with pytest.raises(NotFound):
        await backend.stat(keys[1])


async def test_health_and_describe(backend: Backend) -> None:
    await backend.health()
    assert backend.describe()
    assert isinstance(backend.name, str) and backend.name


async def test_peek_is_stat_plus_the_first_bytes(backend: Backend) -> None:
    await backend.write_bytes("p/k", b"abcdef", {"mode": "33188"})
    await backend.write_bytes("p/empty", b"", {})
    info, data = await peek(backend, "p/k", 4)
    stat = await backend.stat("p/k")
    assert data == b"abcd"
    assert (info.size, info.etag, dict(info.metadata or {})) == (
        stat.size,
        stat.etag,
        dict(stat.metadata or {}),
    )
    assert (await peek(backend, "p/k", 100))[1] == b"abcdef"
    assert (await peek(backend, "p/empty", 4))[1] == b""
    with pytest.raises(NotFound):
        await peek(backend, "p/missing", 4)
