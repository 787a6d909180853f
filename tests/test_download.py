"""`storagefs download`: a tree arrives whole (content, mtime, mode) from a local directory and
from S3 (moto); resume skips exactly what is complete; a failing object is reported while the
rest arrives; bad input ends in one line and exit 2 (the CLI in a subprocess)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from rich.console import Console

from storagefs.backends import backend_from_url
from storagefs.backends.base import (
    Backend,
    ListPage,
    ObjectInfo,
    TransientError,
)
from storagefs.backends.local import LocalBackend
from storagefs.chain.fallback import FallbackChain
from storagefs.config import Settings
from storagefs.download.progress import PlainProgress, RichProgress
from storagefs.download.run import (
    BulkDownload,
    DownloadError,
    download_with_settings,
    mtime_ns,
    normalize_prefix,
    opened_stack,
    plan_tree,
)
from storagefs.download.state import STATE_NAME, is_part_name, part_name
from storagefs.fs.attrs import pointer_metadata, text_to_ns
from storagefs.fs.links import pointer_body
from storagefs.fs.names import inode_key
from storagefs.resilience.backend import ResilientBackend, RetryPolicy
from tests.conftest import S3Bucket

MiB = 1024 * 1024
PREFIX = "photos/2024"
BIG = "photos/2024/big.bin"
TIMED = "photos/2024/nested/deeper/timed.txt"  # carries mtime and mode metadata
SETUID = "photos/2024/tools/run.sh"
TIMED_MTIME = "1600000000.25"
FAST: dict[str, Any] = {
    "retry_attempts": 3,
    "retry_initial_backoff": 0.001,
    "retry_max_backoff": 0.005,
    "operation_deadline": 10.0,
    "request_timeout": 10.0,
}


Objects = dict[str, tuple[bytes, dict[str, str]]]


def tree() -> Objects:
    rng = random.Random(7)
    return {
        "photos/2024/a.txt": (b"alpha\n", {}),
        TIMED: (b"timed\n", {"mtime": TIMED_MTIME, "mode": str(0o100600)}),
        SETUID: (b"#!/bin/sh\n", {"mode": str(0o104755)}),
        "photos/2024/ünïcødé/日本語 ファイル.txt": ("こんにちは\n".encode(), {}),
        "photos/2024/Ωmega/ß/€.bin": (bytes(range(256)), {}),
        BIG: (rng.randbytes(6 * MiB + 123), {}),
        "photos/2024/empty/": (b"", {}),  # a directory marker: an empty directory
        "photos/2023/older.txt": (b"not under the prefix\n", {}),
        "photos/2024x/sibling.txt": (b"a sibling prefix, not a subfolder\n", {}),
    }


def expected_files() -> dict[str, bytes]:
    """Path below DEST -> content, for everything under PREFIX."""
    cut = len(PREFIX) + 1
    return {
        k[cut:]: data
        for k, (data, _) in tree().items()
        if k.startswith(PREFIX + "/") and not k.endswith("/")
    }


@dataclasses.dataclass
class Source:
    settings: Settings
    store: Backend  # the raw backend, to seed and inspect the store behind the download's back


async def seed(store: Backend, objects: Mapping[str, tuple[bytes, dict[str, str]]]) -> None:
    for key, (data, meta) in objects.items():
        await store.write_bytes(key, data, meta)


@pytest.fixture(params=["local", "s3"])
async def source(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Source]:
    if request.param == "local":
        root = tmp_path / "bucket"
        root.mkdir()
        settings = Settings(primary=f"file://{root}", cache_dir=tmp_path / "cache", **FAST)
    else:
        s3: S3Bucket = request.getfixturevalue("s3_bucket")
        settings = Settings(
            primary=f"s3://{s3.bucket}/root",
            s3_endpoint_url=s3.endpoint_url,
            cache_dir=tmp_path / "cache",
            # 6 MiB is then a parallel ranged download, not one GET.
            multipart_threshold=5 * MiB,
            multipart_chunksize=5 * MiB,
            **FAST,
        )
    assert settings.primary is not None
    store = backend_from_url(settings.primary, settings)
    await store.open()
    await seed(store, tree())
    yield Source(settings, store)
    await store.close()


def local_files(dest: Path) -> dict[str, bytes]:
    found = {}
    for path in dest.rglob("*"):
        if path.is_file() and path.name != STATE_NAME:
            found[path.relative_to(dest).as_posix()] = path.read_bytes()
    return found


def part_files(dest: Path) -> list[Path]:
    return [p for p in dest.rglob("*") if is_part_name(p.name)]


async def test_tree_arrives_with_content_mtime_and_mode_then_resumes(
    source: Source, tmp_path: Path
) -> None:
    dest = tmp_path / "out" / "new"  # created, parents too
    summary = await download_with_settings(source.settings, PREFIX, dest, jobs=3)

    want = expected_files()
    assert summary.exit_code() == 0 and not summary.failed
    assert summary.downloaded == summary.files == len(want)
    assert summary.downloaded_bytes == sum(len(d) for d in want.values())
    assert local_files(dest) == want  # nothing from photos/2023 or the sibling photos/2024x
    assert (dest / "empty").is_dir() and not any((dest / "empty").iterdir())
    assert part_files(dest) == []
    for rel in want:
        info = await source.store.stat(f"{PREFIX}/{rel}")
        meta = info.metadata or {}
        st = (dest / rel).stat()
        want_mtime = text_to_ns(meta["mtime"]) if "mtime" in meta else info.mtime_ns
        assert st.st_mtime_ns == want_mtime, rel
    # S3 keeps user metadata for certain: the metadata's mtime wins over LastModified, exactly.
    if source.settings.primary and source.settings.primary.startswith("s3://"):
        assert (dest / "nested/deeper/timed.txt").stat().st_mtime_ns == 1_600_000_000_250_000_000
    if "mode" in ((await source.store.stat(TIMED)).metadata or {}):
        assert (dest / "nested/deeper/timed.txt").stat().st_mode & 0o7777 == 0o600
        assert (dest / "tools/run.sh").stat().st_mode & 0o7777 == 0o755  # no setuid from a bucket

    again = await download_with_settings(source.settings, PREFIX, dest)
    assert (again.downloaded, again.skipped) == (0, len(want))

    # Changed behind our back: a local file edited (new mtime), an object replaced in the store.
    os.utime(dest / "a.txt", (1_000_000_000, 1_000_000_000))
    await source.store.write_bytes(TIMED, b"timed, version 2\n", {"mtime": "1700000000"})
    third = await download_with_settings(source.settings, PREFIX, dest)
    assert third.downloaded == 2 and third.skipped == len(want) - 2
    assert (dest / "nested/deeper/timed.txt").read_bytes() == b"timed, version 2\n"
    assert (dest / "a.txt").stat().st_mtime != 1_000_000_000

    fresh = await download_with_settings(source.settings, PREFIX, dest, resume=False)
    assert (fresh.downloaded, fresh.skipped) == (len(want), 0)
    # The run's private chain directory is gone; the cache directory itself stays.
    assert list(source.settings.cache_dir.iterdir()) == []


async def test_hard_linked_files_arrive_with_their_content(source: Source, tmp_path: Path) -> None:
    # A mount stores a hard-linked file's names as pointers to one inode object under the
    # root's reserved .storagefs (storagefs/fs/links.py): each name arrives with the content,
    # mode and time of that object, and the reserved objects themselves do not arrive.
    link_id = "0123456789abcdef"
    body = b"linked content\n"
    await seed(
        source.store,
        {
            inode_key(link_id): (
                body,
                {"mode": str(0o100640), "mtime": "1500000000", "storagefs-nlink": "2"},
            ),
            f"{PREFIX}/one.txt": (pointer_body(link_id), pointer_metadata(link_id)),
            f"{PREFIX}/deeper/two.txt": (pointer_body(link_id), pointer_metadata(link_id)),
        },
    )
    dest = tmp_path / "out"
    summary = await download_with_settings(source.settings, PREFIX, dest)
    assert summary.exit_code() == 0 and not summary.failed
    for rel in ("one.txt", "deeper/two.txt"):
        assert (dest / rel).read_bytes() == body
        assert (dest / rel).stat().st_mtime == 1_500_000_000
    everything = tmp_path / "all"
    await download_with_settings(source.settings, "", everything)
    assert not (everything / ".storagefs").exists()
    assert (everything / PREFIX / "one.txt").read_bytes() == body


async def test_s3_keys_that_are_no_local_path_and_file_directory_clashes(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    settings = Settings(
        primary=f"s3://{s3_bucket.bucket}",
        s3_endpoint_url=s3_bucket.endpoint_url,
        cache_dir=tmp_path / "cache",
        **FAST,
    )
    store = backend_from_url(settings.resolved_primary(), settings)
    await store.open()
    bad = ["d/../escape.txt", "d//double.txt", "d/./dot.txt", "d/" + "n" * 256]
    await seed(
        store,
        {
            **{k: (b"bad", {}) for k in bad},
            "d/ok.txt": (b"ok", {}),
            "d/clash": (b"a file named like a directory", {}),
            "d/clash/inner.txt": (b"inner", {}),
            "d/marked": (b"a file named like a marker", {}),
            "d/marked/": (b"", {}),
            "d/.x.storagefs-part": (b"a reserved name", {}),
        },
    )
    await store.close()
    dest = tmp_path / "out"
    summary = await download_with_settings(settings, "/", dest)  # "/" is everything
    assert sorted(summary.invalid_keys) == sorted([*bad, "d/.x.storagefs-part"])
    assert summary.conflicts == ["d/clash", "d/marked"]  # the directories won
    assert summary.exit_code() == 0  # skipped keys are reported, not failures
    assert local_files(dest) == {"d/ok.txt": b"ok", "d/clash/inner.txt": b"inner"}
    assert (dest / "d/marked").is_dir()
    assert not (tmp_path / "escape.txt").exists()


class Interruptible:
    """The chain, with downloads counted; download number ``hang_at`` writes half a part file
    and then waits forever (what a Ctrl-C or a kill finds in flight)."""

    def __init__(self, inner: Backend, hang_at: int | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.hang_at = hang_at
        self.downloads: list[str] = []
        self.hanging = trio.Event()

    def describe(self) -> str:
        return self.inner.describe()

    async def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        limit: int = 1000,
    ) -> ListPage:
        return await self.inner.list(prefix, delimiter=delimiter, token=token, limit=limit)

    async def download(self, key: str, dest: str) -> ObjectInfo:
        self.downloads.append(key)
        if len(self.downloads) == self.hang_at:
            Path(dest).write_bytes(b"half a fi")
            self.hanging.set()
            await trio.sleep_forever()
        return await self.inner.download(key, dest)


async def test_interrupted_run_leaves_complete_files_and_the_next_run_does_the_rest(
    tmp_path: Path,
) -> None:
    root = tmp_path / "bucket"
    root.mkdir()
    settings = Settings(primary=f"file://{root}", cache_dir=tmp_path / "cache", **FAST)
    objects: Objects = {
        f"{PREFIX}/dir{i % 3}/file{i:02}.txt": (f"file {i}\n".encode(), {}) for i in range(12)
    }
    await seed(LocalBackend(root), objects)
    dest = tmp_path / "out"
    k = 5
    async with opened_stack(settings) as stack:
        chain = Interruptible(stack.chain, hang_at=k + 1)
        bulk = BulkDownload(chain, PREFIX, dest, jobs=1)  # one at a time: exactly k complete
        async with trio.open_nursery() as nursery:

            async def interrupt() -> None:
                await chain.hanging.wait()
                bulk.stop()

            nursery.start_soon(interrupt)
            first = await bulk.run()
    assert first.interrupted and first.exit_code() == 130
    assert first.downloaded == k
    done = local_files(dest)
    assert len(done) == k
    for rel, data in done.items():  # complete files only, each under its final name
        assert data == objects[f"{PREFIX}/{rel}"][0]
    assert part_files(dest) == []  # the cancelled download removed its part
    # What a SIGKILL leaves instead: parts of ours and of the S3 transfer manager.
    (dest / "dir0" / part_name("file09.txt")).write_bytes(b"partial")
    (dest / "dir1" / (part_name("file10.txt") + ".a1B2c3D4")).write_bytes(b"partial")
    state = json.loads((dest / STATE_NAME).read_text())
    assert len(state["objects"]) == k

    async with opened_stack(settings) as stack:
        chain = Interruptible(stack.chain)
        second = await BulkDownload(chain, PREFIX, dest, jobs=4).run()
    assert second.exit_code() == 0
    assert second.parts_discarded == 2 and part_files(dest) == []
    assert sorted(chain.downloads) == sorted(set(objects) - {f"{PREFIX}/{r}" for r in done})
    assert (second.downloaded, second.skipped) == (len(objects) - k, k)
    assert local_files(dest) == {k[len(PREFIX) + 1 :]: v[0] for k, v in objects.items()}


async def test_resume_survives_a_kill_between_log_and_state_file(tmp_path: Path) -> None:
    """Records are appended as files land; a run killed before folding them into the state
    file still counts them next time (and a torn last line is ignored)."""
    root = tmp_path / "bucket"
    root.mkdir()
    await seed(LocalBackend(root), {f"p/f{i}": (b"x" * i, {}) for i in range(4)})
    dest = tmp_path / "out"
    backend = LocalBackend(root)
    await BulkDownload(backend, "p", dest).run()
    state = dest / STATE_NAME
    records = json.loads(state.read_text())["objects"]
    state.unlink()
    log_lines = [json.dumps({"key": key, **rec}) for key, rec in records.items()]
    (dest / (STATE_NAME + ".log")).write_text("\n".join(log_lines) + '\n{"key": "p/f3", "si')
    counted = Interruptible(backend)
    again = await BulkDownload(counted, "p", dest).run()
    assert counted.downloads == [] and again.skipped == 4


class FailingKeys:
    """A raw backend whose downloads of ``keys`` fail transiently, after writing junk."""

    def __init__(self, inner: Backend, keys: set[str], name: str) -> None:
        self.inner = inner
        self.keys = keys
        self.name = name
        self.attempts = 0

    def __getattr__(self, attr: str) -> object:
        return getattr(self.inner, attr)

    async def download(self, key: str, dest: str) -> ObjectInfo:
        if key in self.keys:
            self.attempts += 1
            Path(dest).write_bytes(b"junk")
            raise TransientError(f"injected: {key}")
        return await self.inner.download(key, dest)

    async def stat(self, key: str) -> ObjectInfo:
        return await self.inner.stat(key)


def chain_of(settings: Settings, remotes: list[Any], work: Path) -> FallbackChain:
    policy = RetryPolicy.from_settings(settings)
    resilient: list[Backend] = [ResilientBackend(r, policy) for r in remotes]
    private = settings.model_copy(update={"cache_max_bytes": 0})
    return FallbackChain.from_settings(resilient, private, directory=work)


async def test_failing_object_is_reported_the_rest_arrive_and_a_secondary_covers_it(
    tmp_path: Path,
) -> None:
    objects: Objects = {f"{PREFIX}/f{i}.txt": (f"content {i}\n".encode(), {}) for i in range(6)}
    bad = f"{PREFIX}/f3.txt"
    roots = [tmp_path / "primary", tmp_path / "secondary"]
    for root in roots:
        root.mkdir()
        await seed(LocalBackend(root), objects)
    settings = Settings(cache_dir=tmp_path / "cache", **FAST)

    alone = FailingKeys(LocalBackend(roots[0]), {bad}, "primary")
    chain = chain_of(settings, [alone], tmp_path / "work1")
    await chain.open()
    dest = tmp_path / "out"
    try:
        summary = await BulkDownload(chain, PREFIX, dest).run()
    finally:
        await chain.close()
    assert [f.key for f in summary.failed] == [bad] and summary.exit_code() == 1
    assert "BackendUnavailable" in summary.failed[0].error
    assert alone.attempts == settings.retry_attempts  # the chain's retries happened first
    assert summary.downloaded == len(objects) - 1
    assert not (dest / "f3.txt").exists() and part_files(dest) == []
    assert len(local_files(dest)) == len(objects) - 1

    # Through a chain with a healthy secondary, the same object fails over and arrives, and
    # resume fetches only it.
    primary = FailingKeys(LocalBackend(roots[0]), {bad}, "primary")
    secondary = LocalBackend(roots[1], name="secondary")
    chain = chain_of(settings, [primary, secondary], tmp_path / "work2")
    await chain.open()
    try:
        counted = Interruptible(chain)
        retry = await BulkDownload(counted, PREFIX, dest).run()
    finally:
        await chain.close()
    assert retry.exit_code() == 0 and counted.downloads == [bad] and primary.attempts > 0
    assert (dest / "f3.txt").read_bytes() == objects[bad][0]


async def test_unusable_destination_and_store_raise_download_error(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    root = tmp_path / "bucket"
    root.mkdir()
    settings = Settings(primary=f"file://{root}", cache_dir=tmp_path / "cache", **FAST)
    with pytest.raises(DownloadError, match="not a directory"):
        await download_with_settings(settings, "", afile)
    with pytest.raises(DownloadError, match="cannot create destination"):
        await download_with_settings(settings, "", afile / "sub")
    missing = settings.model_copy(update={"primary": f"file://{tmp_path}/nope"})
    with pytest.raises(DownloadError, match="does not exist"):
        await download_with_settings(missing, "", tmp_path / "out")
    summary = await download_with_settings(settings, "no/such/prefix", tmp_path / "out")
    assert summary.nothing_to_do and summary.exit_code() == 0
    assert summary.lines() == ["storagefs: nothing to download"]


# --- pure parts -------------------------------------------------------------------------------


def info(key: str, size: int = 1) -> ObjectInfo:
    return ObjectInfo(key, size, 0, "e")


def test_plan_sorts_files_directories_invalid_keys_and_clashes() -> None:
    prefix = normalize_prefix("/top/")
    assert prefix == "top/" and normalize_prefix("/") == normalize_prefix("") == ""
    plan = plan_tree(
        prefix,
        [
            info("top/"),  # the prefix's own marker: nothing to do
            info("top/a/b/c.txt"),
            info("top/a"),  # a file where a directory must be
            info("top/m/"),
            info("top/m"),
            info("top/e/"),
            info("top/../x"),
            info("top/.."),
            info("top//x"),
            info("top/x/"[:-1] + "\0y"),
            info("top/.storagefs-download.json"),
            info("top/sub/.name.storagefs-part"),
            info("top/sub/.storagefs-download.json"),  # only reserved at the top
            info("other/z"),
        ],
    )
    assert [f.rel for f in plan.files] == ["a/b/c.txt", "sub/.storagefs-download.json"]
    assert plan.directories == ["e", "m"]
    assert plan.conflicts == ["top/a", "top/m"]
    assert sorted(k for k, _ in plan.invalid) == sorted(
        [
            "top/../x",
            "top/..",
            "top//x",
            "top/x\0y",
            "top/.storagefs-download.json",
            "top/sub/.name.storagefs-part",
            "other/z",
        ]
    )


def test_part_names_stay_recognisable_and_within_name_max() -> None:
    assert part_name("a.txt") == ".a.txt.storagefs-part"
    long = "é" * 127  # 254 bytes: a legal name whose plain part name would not be
    assert len(part_name(long).encode()) <= 246 and is_part_name(part_name(long))
    assert is_part_name(part_name("a.txt") + ".0aF39b7c")  # s3transfer's temporary file
    assert not is_part_name("a.txt.storagefs-part")  # not hidden: not ours
    assert not is_part_name(".a.storagefs-part.txt")


def test_mtime_prefers_metadata_and_survives_junk() -> None:
    def at(meta: dict[str, str] | None) -> int:
        return mtime_ns(ObjectInfo("k", 0, 1_700_000_000_500_000_000, None, meta))

    assert at({"mtime": "1600000000.123456789"}) == 1_600_000_000_123_456_789
    assert at({"mtime": "garbage"}) == at(None) == at({"mtime": "-5"}) == 1_700_000_000_500_000_000


def test_progress_displays() -> None:
    out = io.StringIO()
    clock = iter([0.0, 0.0, 1.0, 2.0, 2.0, 2.0])
    plain = PlainProgress(out, io.StringIO(), interval=0.5, clock=lambda: next(clock))
    plain.planned(3, 3 * MiB, 1, MiB)
    plain.advanced(MiB)
    plain.advanced(MiB)
    plain.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "storagefs: 1 of 3 files already complete"
    assert lines[1].startswith("storagefs: 2/3 files, 2.0 MiB/3.0 MiB, 1.0 MiB/s")
    assert lines[2].startswith("storagefs: 3/3 files, 3.0 MiB/3.0 MiB, 1.0 MiB/s")

    screen = io.StringIO()
    rich = RichProgress(Console(file=screen, force_terminal=True, width=120))
    rich.listed(10)
    rich.planned(2, 2048, 0, 0)
    rich.advanced(1024)
    rich.advanced(1024)
    rich.close()
    assert "2/2 files" in screen.getvalue()


# --- the command line -------------------------------------------------------------------------


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STORAGEFS_")}
    return subprocess.Popen(
        [sys.executable, "-m", "storagefs", "download", *args],
        env={**clean, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_cli_exit_codes_and_one_line_errors(tmp_path: Path, moto_server: object) -> None:
    from storagefs.devtools.emulators import EmulatorProcess

    assert isinstance(moto_server, EmulatorProcess)
    root = tmp_path / "bucket"
    (root / "p" / "sub").mkdir(parents=True)
    (root / "p" / "a.txt").write_text("a")
    (root / "p" / "sub" / "b.txt").write_text("b")
    afile = tmp_path / "afile"
    afile.write_text("")
    env = {"STORAGEFS_PRIMARY": f"file://{root}", "STORAGEFS_CACHE_DIR": str(tmp_path / "cache")}
    moto = {**env, "STORAGEFS_S3_ENDPOINT_URL": moto_server.url}
    bad_cases = {
        "dest is a file": (["p", str(afile)], env, "is not a directory"),
        "dest not creatable": (["p", str(afile / "x")], env, "cannot create destination"),
        "bad url": (["p", str(tmp_path / "o1"), "--primary", "ftp://h/x"], env, "unknown scheme"),
        "missing dir": (
            ["p", str(tmp_path / "o2"), "--primary", f"file://{tmp_path}/nope"],
            env,
            "does not exist",
        ),
        "missing bucket": (
            ["p", str(tmp_path / "o3"), "--primary", "s3://no-such-bucket-here"],
            moto,
            "does not exist",
        ),
        "bad setting": (
            ["p", str(tmp_path / "o4")],
            {**env, "STORAGEFS_RETRY_ATTEMPTS": "0"},
            "STORAGEFS_RETRY_ATTEMPTS",
        ),
    }
    dest = tmp_path / "out"
    (dest / "a.txt").mkdir(parents=True)  # a directory where a file must go: that one fails
    procs = {name: run_cli(args, e) for name, (args, e, _) in bad_cases.items()}
    procs["partly failing"] = run_cli(["p", str(dest), "--json"], env)
    procs["nothing"] = run_cli(["no/such", str(tmp_path / "o5")], env)
    results = {name: finish(proc) for name, proc in procs.items()}

    for name, (_, _, needle) in bad_cases.items():
        code, out, err = results[name]
        lines = err.strip().splitlines()
        assert code == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("storagefs: error: "), (name, err)
        assert needle in lines[0], (name, lines[0])
        assert "Traceback" not in out + err

    code, out, err = results["partly failing"]
    assert code == 1, err
    summary = json.loads(out)  # stdout is the JSON alone
    assert [f["key"] for f in summary["failed"]] == ["p/a.txt"]
    assert summary["downloaded"] == 1 and summary["exit_code"] == 1
    assert "p/a.txt" in err and (dest / "sub" / "b.txt").read_text() == "b"

    code, out, err = results["nothing"]
    assert (code, out.strip()) == (0, "storagefs: nothing to download"), err

    # Plain progress when stdout is not a terminal; then everything is complete.
    (dest / "a.txt").rmdir()
    code, out, err = finish(run_cli(["p", str(dest)], env))
    assert code == 0, err
    assert "2/2 files" in out and "1 file(s) downloaded" in out and "1 already complete" in out
