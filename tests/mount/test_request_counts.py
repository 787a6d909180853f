"""Requests per operation, counted in the S3 server's log (issue #23): on real S3 each costs
10-30 ms, so the count is what users pay, and it does not depend on the machine."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from tests.mount.harness import S3, MountFactory, ok
from tests.mount.stores import S3Store, Store

pytestmark = pytest.mark.mount

REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP')  # colored


class RequestLog:
    """The requests moto logged since the mark, as (method, path)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = path.stat().st_size

    def since(self) -> list[tuple[str, str]]:
        with open(self.path, "rb") as log:
            log.seek(self.start)
            text = log.read().decode(errors="replace")
        return REQUEST.findall(text)


@pytest.mark.parametrize("store", [S3], indirect=True)
def test_cp_r_of_new_small_files_into_a_new_directory(
    store: Store, mount: MountFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """One PUT per file and the directory's marker, and one lookup of the new name (a peek
    and a one-entry listing): 103 for 100 files, where every lookup of the same new name
    used to ask again (109)."""
    assert isinstance(store, S3Store)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(100):
        (src / f"f{i:03d}").write_bytes(b"%04d" % i * 1024)
    m = mount(store)
    log = RequestLog(request.getfixturevalue("moto_server").log_path)
    ok(f"cp -r {src}/ {m.path}/new")
    made = log.since()
    kinds = Counter(method for method, _ in made)
    prefix = f"/{store.bucket}/{store.prefix}/"
    puts = sorted(path.removeprefix(prefix) for method, path in made if method == "PUT")
    assert puts == ["new/"] + [f"new/f{i:03d}" for i in range(100)], puts[:5]
    others = [(method, path) for method, path in made if method != "PUT"]
    assert len(others) <= 2, f"{len(others)} requests besides the PUTs: {others}"
    assert kinds["PUT"] == 101


@pytest.mark.parametrize("store", [S3], indirect=True)
def test_stat_of_a_missing_name_twice_asks_once(
    store: Store, mount: MountFactory, request: pytest.FixtureRequest
) -> None:
    m = mount(store)
    log = RequestLog(request.getfixturevalue("moto_server").log_path)
    for _ in range(2):
        assert m.sh("stat nothing-here").returncode != 0
    made = log.since()
    assert len(made) <= 2, f"{len(made)} requests for one missing name: {made}"


@pytest.mark.parametrize("store", [S3], indirect=True)
def test_rm_r_of_a_directory_of_100_files(
    store: Store, mount: MountFactory, request: pytest.FixtureRequest
) -> None:
    """Files this mount wrote (their metadata known): a DELETE per object and the listing
    that finds them, no HEAD before a DELETE. (Objects of other tools still cost a HEAD each
    at the lookup, for the attributes the kernel is given.)"""
    assert isinstance(store, S3Store)
    m = mount(store)
    ok(f"mkdir {m.path}/d && for i in $(seq 100); do echo $i > {m.path}/d/f$i; done")
    log = RequestLog(request.getfixturevalue("moto_server").log_path)
    ok(f"rm -r {m.path}/d")
    made = log.since()
    kinds = Counter(method for method, _ in made)
    assert kinds["HEAD"] == 0 and kinds["DELETE"] <= 101, dict(kinds)
    assert len(made) <= 103, f"{len(made)} requests: {dict(kinds)}"
    assert store.list_keys() == []
