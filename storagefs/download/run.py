"""``storagefs download PREFIX DEST``: copy every object under a prefix into a local directory,
without a mount, through the same fallback chain (retries, breakers, failover) the daemon uses.

How it goes:

1. DEST is created if needed and must be writable.
2. The whole tree under PREFIX is listed first (the totals drive the progress display, and a
   key that is both a file and a directory can only be told from the complete listing).
3. Keys that cannot be local paths (empty, ``.`` or ``..`` components, a leading ``/``,
   components over 255 bytes, names a download keeps for itself) are skipped with a warning.
   A key that is a file *and* a directory prefix (``a`` and ``a/b``): the directory wins, the
   file is skipped and reported. Neither makes the exit code non-zero: no later run could
   download them either.
4. Parts left by an interrupted run are deleted; files the resume rule calls complete
   (:meth:`storagefs.download.state.ResumeState.is_complete`) are skipped.
5. Up to ``jobs`` objects at once are downloaded to ``.NAME.storagefs-part`` beside their final
   name, given the object's ``mode`` (permission bits only) and ``mtime`` (from its metadata,
   else the store's last-modified time), and renamed onto the final name, so a final name
   never holds half a file. A failed object is reported; the others carry on.

The run uses a private, throwaway work directory under the cache directory for its chain:
a mount using the same cache directory may be running, and its journal is not ours to replay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import signal
import stat as stat_mod
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import trio

from storagefs import exit_codes
from storagefs.backends.base import (
    BackendError,
    ListPage,
    ObjectInfo,
)
from storagefs.config import ConfigError, Settings
from storagefs.download.progress import DownloadProgress, SilentProgress, human_bytes
from storagefs.download.state import (
    STATE_NAME,
    Record,
    ResumeState,
    is_part_name,
    is_reserved_name,
    part_name,
)
from storagefs.fs.attrs import link_of, stored_mode, stored_mtime_ns
from storagefs.fs.names import inode_key, is_reserved
from storagefs.observability.metric_names import TASK_BULK_DOWNLOAD
from storagefs.observability.redact import redact
from storagefs.posix_names import component_problem

if TYPE_CHECKING:
    from storagefs.stack import Stack

log = logging.getLogger("storagefs.download")

DEFAULT_JOBS = 8
LIST_PAGE = 1000
SHOWN_MAX = 50  # keys listed one by one in the human summary; --json lists them all


class ObjectSource(Protocol):
    """The part of the Backend protocol a download uses (the chain, in the command)."""

    async def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        limit: int = 1000,
    ) -> ListPage: ...

    async def download(self, key: str, dest: str) -> ObjectInfo: ...


class DownloadError(Exception):
    """The download cannot start (bad destination, backend, listing): one line for the user."""


# --- what to download ---------------------------------------------------------------------


def normalize_prefix(prefix: str) -> str:
    """``"photos/2024"`` and ``"/photos/2024/"`` -> ``"photos/2024/"``; ``"/"`` -> ``""``."""
    inner = prefix.strip("/")
    return f"{inner}/" if inner else ""


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedFile:
    key: str
    rel: str  # "/"-separated path below the destination
    info: ObjectInfo  # from the listing (no metadata)


@dataclasses.dataclass
class Plan:
    files: list[PlannedFile]
    directories: list[str]  # from directory markers, relative, in creation order
    invalid: list[tuple[str, str]]  # (key, why)
    conflicts: list[str]  # file keys shadowed by a directory of the same name


def _path_problem(rel: str, is_dir: bool) -> str | None:
    parts = rel.split("/")
    for part in parts:
        problem = component_problem(part)
        if problem is not None:
            return problem
    # The state files live at the top only; parts sit beside any file.
    if is_reserved_name(parts[0]) or (not is_dir and is_part_name(parts[-1])):
        return "a name storagefs download keeps for itself"
    return None


def plan_tree(prefix: str, objects: Iterable[ObjectInfo]) -> Plan:
    """Sort a recursive listing under ``prefix`` (normalized) into files to write, directories
    to create, keys that are no local path, and files hidden by a directory of their name."""
    files: dict[str, PlannedFile] = {}
    markers: set[str] = set()
    invalid: list[tuple[str, str]] = []
    for info in objects:
        key = info.key
        if not key.startswith(prefix):
            invalid.append((key, f"outside the prefix {prefix!r}"))
            continue
        rel = key[len(prefix) :]
        if not rel:
            continue  # the prefix's own marker: the destination itself
        if is_reserved(key):
            continue  # the mount's own objects (hard links' contents, fetched by their names)
        is_dir = rel.endswith("/")
        if is_dir:
            rel = rel[:-1]
        problem = _path_problem(rel, is_dir)
        if problem is not None:
            invalid.append((key, problem))
        elif is_dir:
            markers.add(rel)
        else:
            files[rel] = PlannedFile(key, rel, info)
    dirs: set[str] = set()
    for rel in [*files, *markers]:
        parts = rel.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    dirs |= markers
    conflicts = sorted(f.key for rel, f in files.items() if rel in dirs)
    kept = [f for rel, f in files.items() if rel not in dirs]
    kept.sort(key=lambda f: f.key.encode())
    return Plan(kept, sorted(markers, key=lambda d: (d.count("/"), d)), invalid, conflicts)


# --- the summary ----------------------------------------------------------------------------


@dataclasses.dataclass
class Failure:
    key: str
    error: str


@dataclasses.dataclass
class DownloadSummary:
    prefix: str
    dest: str
    listed: int = 0  # names the listing returned, markers included
    files: int = 0  # files to have locally (downloaded now or complete before)
    bytes: int = 0
    downloaded: int = 0
    downloaded_bytes: int = 0
    skipped: int = 0  # complete before this run
    directories: int = 0  # directory markers turned into (possibly empty) directories
    parts_discarded: int = 0  # leftovers of an interrupted run
    failed: list[Failure] = dataclasses.field(default_factory=list)
    invalid_keys: list[str] = dataclasses.field(default_factory=list)
    conflicts: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def nothing_to_do(self) -> bool:
        return self.files == 0 and self.directories == 0 and not self.failed

    def exit_code(self) -> int:
        if self.interrupted:
            return exit_codes.INTERRUPTED
        return exit_codes.PARTIAL if self.failed else exit_codes.OK

    def as_json(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body["exit_code"] = self.exit_code()
        return body

    def lines(self) -> list[str]:
        """The human summary (stdout)."""
        if self.nothing_to_do and not self.interrupted:
            return ["storagefs: nothing to download"]
        text = (
            f"storagefs: {self.downloaded} file(s) downloaded"
            f" ({human_bytes(self.downloaded_bytes)}) in {self.seconds:.1f} s"
        )
        if self.skipped:
            text += f", {self.skipped} already complete"
        text += f"; {self.files} file(s), {human_bytes(self.bytes)} in {self.dest}"
        out = [text]
        if self.invalid_keys:
            out.append(f"storagefs: {len(self.invalid_keys)} key(s) skipped: not a local path")
        if self.conflicts:
            out.append(
                f"storagefs: {len(self.conflicts)} file(s) skipped: a directory has the same name"
            )
        if self.interrupted:
            out.append("storagefs: interrupted; run the same command again to resume")
        return out

    def failure_lines(self) -> list[str]:
        """The failed objects, for stderr."""
        if not self.failed:
            return []
        out = [f"storagefs: {len(self.failed)} object(s) failed:"]
        out += [f"  {f.key}: {f.error}" for f in self.failed[:SHOWN_MAX]]
        if len(self.failed) > SHOWN_MAX:
            out.append(f"  ... and {len(self.failed) - SHOWN_MAX} more (--json lists them all)")
        return out


# --- local file work (blocking: run in worker threads) ---------------------------------------


def prepare_destination(dest: Path) -> None:
    """Create ``dest`` if needed and prove we can create files in it; DownloadError if not."""
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"destination {dest} is not a directory")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create destination {dest}: {exc.strerror}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".storagefs-probe-", dir=dest)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DownloadError(f"cannot write to destination {dest}: {exc.strerror}") from None


def _discard_parts(directories: Iterable[Path]) -> int:
    discarded = 0
    for directory in directories:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if is_part_name(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    discarded += 1
    return discarded


def _mode(info: ObjectInfo) -> int | None:
    mode = stored_mode(info.metadata)
    # Permission bits only: setuid/setgid bits from a bucket are not ours to hand out.
    return None if mode is None else stat_mod.S_IMODE(mode) & 0o777


def mtime_ns(info: ObjectInfo) -> int:
    """The object's ``mtime`` metadata in nanoseconds, else the store's last-modified time."""
    ns = stored_mtime_ns(info.metadata)
    if ns is not None:
        return ns
    return info.mtime_ns


def _finish(part: Path, path: Path, info: ObjectInfo) -> os.stat_result:
    mode = _mode(info)
    if mode is not None:
        part.chmod(mode)
    ns = mtime_ns(info)
    os.utime(part, ns=(ns, ns))
    part.replace(path)
    return path.lstat()


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# --- the download ----------------------------------------------------------------------------


class BulkDownload:
    """One download of ``prefix`` from ``backend`` into ``dest``: :meth:`run` once, and
    :meth:`stop` (from another task) to end it early with only complete files in place."""

    def __init__(
        self,
        backend: ObjectSource,
        prefix: str,
        dest: Path,
        *,
        jobs: int = DEFAULT_JOBS,
        resume: bool = True,
        progress: DownloadProgress | None = None,
    ) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.backend = backend
        self.prefix = normalize_prefix(prefix)
        self.dest = dest
        self.jobs = jobs
        self.resume = resume
        self.progress: DownloadProgress = progress or SilentProgress()
        self.summary = DownloadSummary(prefix=self.prefix, dest=str(dest))
        self._scope = trio.CancelScope()
        self._state: ResumeState | None = None

    def stop(self) -> None:
        self.summary.interrupted = True
        self._scope.cancel()

    async def run(self) -> DownloadSummary:
        started = time.monotonic()
        try:
            with self._scope:
                await self._run()
        finally:
            self.summary.seconds = time.monotonic() - started
            if self._state is not None:
                with trio.CancelScope(shield=True):
                    try:
                        await trio.to_thread.run_sync(self._state.save)
                    except OSError as exc:  # costs re-downloads next time, nothing else
                        self.progress.warn(f"cannot save {STATE_NAME}: {exc}")
        return self.summary

    async def _run(self) -> None:
        await trio.to_thread.run_sync(prepare_destination, self.dest)
        listing = await self._list()
        plan = plan_tree(self.prefix, listing)
        self._report_skips(plan)
        self._state = state = await trio.to_thread.run_sync(
            lambda: ResumeState.load(self.dest, fresh=not self.resume)
        )
        state.forget_missing(self.prefix, {o.key for o in listing})
        del listing
        todo = await trio.to_thread.run_sync(self._prepare, plan, state)
        summary = self.summary
        summary.files = len(plan.files)
        summary.bytes = sum(f.info.size for f in plan.files)
        summary.skipped = len(plan.files) - len(todo)
        self.progress.planned(
            summary.files,
            summary.bytes,
            summary.skipped,
            summary.bytes - sum(f.info.size for f in todo),
        )
        limiter = trio.CapacityLimiter(self.jobs)
        async with trio.open_nursery() as nursery:
            for planned in todo:
                # Taking the limiter before starting keeps the task count at ``jobs``, not at
                # the number of objects.
                borrower = object()
                await limiter.acquire_on_behalf_of(borrower)
                nursery.start_soon(self._fetch, planned, limiter, borrower, state)

    async def _list(self) -> list[ObjectInfo]:
        objects: list[ObjectInfo] = []
        token: str | None = None
        while True:
            try:
                page = await self.backend.list(
                    self.prefix, delimiter=None, token=token, limit=LIST_PAGE
                )
            except BackendError as exc:
                shown = self.prefix or "/"
                raise DownloadError(f"cannot list {shown!r}: {redact(str(exc))}") from None
            objects.extend(page.objects)
            self.summary.listed = len(objects)
            self.progress.listed(len(objects))
            if page.token is None:
                return objects
            token = page.token

    def _report_skips(self, plan: Plan) -> None:
        self.summary.invalid_keys = [key for key, _ in plan.invalid]
        self.summary.conflicts = plan.conflicts
        for key, why in plan.invalid[:SHOWN_MAX]:
            self.progress.warn(f"skipping {key!r}: {why}")
        for key in plan.conflicts[:SHOWN_MAX]:
            self.progress.warn(f"skipping file {key!r}: a directory of the same name wins")
        hidden = max(0, len(plan.invalid) - SHOWN_MAX) + max(0, len(plan.conflicts) - SHOWN_MAX)
        if hidden:
            self.progress.warn(f"... and {hidden} more skipped key(s) (--json lists them all)")

    def _prepare(self, plan: Plan, state: ResumeState) -> list[PlannedFile]:
        """Make the marker directories, delete parts of earlier runs, return the files that
        still need downloading (all of them without resume)."""
        dest = self.dest
        for rel in plan.directories:
            key = self.prefix + rel + "/"
            try:
                (dest / rel).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self._failed(key, exc)
            else:
                self.summary.directories += 1
        parents = {dest} | {(dest / f.rel).parent for f in plan.files}
        parents |= {dest / rel for rel in plan.directories}
        self.summary.parts_discarded = _discard_parts(sorted(parents))
        if not self.resume:
            return list(plan.files)
        return [f for f in plan.files if not state.is_complete(f.key, f.info, dest / f.rel)]

    async def _fetch(
        self,
        planned: PlannedFile,
        limiter: trio.CapacityLimiter,
        borrower: object,
        state: ResumeState,
    ) -> None:
        try:
            path = self.dest / planned.rel
            part = path.with_name(part_name(path.name))
            try:
                await trio.to_thread.run_sync(
                    lambda: path.parent.mkdir(parents=True, exist_ok=True)
                )
                info = await self.backend.download(planned.key, str(part))
                link_id = link_of(info.metadata)
                if link_id is not None:
                    # One name of a hard-linked file (storagefs/fs/links.py): the content,
                    # mode and times are those of its inode object.
                    info = await self.backend.download(inode_key(link_id), str(part))
                st = await trio.to_thread.run_sync(_finish, part, path, info)
                record = Record(
                    planned.rel,
                    planned.info.etag,
                    st.st_size,
                    planned.info.mtime_ns,
                    st.st_mtime_ns,
                )
                state.record(planned.key, record)
            except Exception as exc:
                _unlink_quietly(part)
                self._failed(planned.key, exc)
                return
            except BaseException:
                _unlink_quietly(part)  # cancelled: leave no half file behind (if we can)
                raise
            self.summary.downloaded += 1
            self.summary.downloaded_bytes += st.st_size
            self.progress.advanced(st.st_size)
        finally:
            limiter.release_on_behalf_of(borrower)

    def _failed(self, key: str, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {redact(str(exc))}"
        self.summary.failed.append(Failure(key, error))
        self.progress.warn(f"failed: {key!r}: {error}")


# --- with the daemon's stack -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def opened_stack(settings: Settings) -> AsyncIterator[Stack]:
    """The stack for ``settings`` in a private working directory, opened and closed by
    :func:`storagefs.stack.open_stack` (run its ``chain.run`` beside the work). DownloadError
    when it cannot be used."""
    from storagefs.stack import open_stack  # the SDKs load only when a download runs

    base = settings.cache_dir.expanduser()
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        workdir = Path(tempfile.mkdtemp(prefix="download-", dir=base))
    except OSError as exc:
        raise DownloadError(f"cannot use cache directory {base}: {exc.strerror}") from None
    # No clean copies: a bulk download would only flush the mount's cache with them.
    private = settings.model_copy(update={"cache_max_bytes": 0})
    started = False
    try:
        async with open_stack(private, workdir, serves_offline=False) as stack:
            started = True
            yield stack
    except (BackendError, ConfigError) as exc:
        if started:
            raise  # the work's own error, not the start's
        raise DownloadError(str(exc)) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def download_with_settings(
    settings: Settings,
    prefix: str,
    dest: Path,
    *,
    jobs: int = DEFAULT_JOBS,
    resume: bool = True,
    progress: DownloadProgress | None = None,
    stop_on_signals: bool = False,
) -> DownloadSummary:
    """Download ``prefix`` into ``dest`` through the stack ``settings`` describe.

    DownloadError when it cannot start. With ``stop_on_signals`` the first SIGINT/SIGTERM
    stops it cleanly (the summary says ``interrupted``); a second one interrupts for good
    (KeyboardInterrupt)."""
    await trio.to_thread.run_sync(prepare_destination, dest)  # before any network
    async with opened_stack(settings) as stack:
        bulk = BulkDownload(stack.chain, prefix, dest, jobs=jobs, resume=resume, progress=progress)
        outcome: list[DownloadSummary | DownloadError] = []

        async def work() -> None:
            # Caught here, not raised through the nursery: callers get the DownloadError
            # itself rather than an exception group.
            try:
                with stack.telemetry.background_task(TASK_BULK_DOWNLOAD):
                    outcome.append(await bulk.run())
            except DownloadError as exc:
                outcome.append(exc)
            finally:
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            await nursery.start(stack.chain.run)
            if stop_on_signals:
                nursery.start_soon(_stop_on_signal, bulk)
            nursery.start_soon(work)
    result = outcome[0]
    if isinstance(result, DownloadError):
        raise result
    return result


async def _stop_on_signal(bulk: BulkDownload) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            bulk.stop()
            break
    # Back to trio's default: another Ctrl-C raises KeyboardInterrupt (a download stuck in a
    # worker thread can still be left; the next run cleans up after it).
    await trio.sleep_forever()


def _interrupt_only(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(KeyboardInterrupt)[1] is None
    return False


def run_cli(
    settings: Settings,
    prefix: str,
    dest: Path,
    *,
    jobs: int = DEFAULT_JOBS,
    resume: bool = True,
    as_json: bool = False,
) -> int:
    """The ``storagefs download`` command after argument parsing: returns the exit code;
    DownloadError (one line, exit 2) when it cannot start."""
    import json
    import sys

    from storagefs.download.progress import progress_for
    from storagefs.observability.logs import setup_logging

    # Warnings and errors only: INFO lines would scroll through the progress display.
    setup_logging("DEBUG" if settings.log_level == "DEBUG" else "WARNING", settings.log_format)
    progress = progress_for(as_json)
    job = functools.partial(
        download_with_settings,
        settings,
        prefix,
        dest,
        jobs=jobs,
        resume=resume,
        progress=progress,
        stop_on_signals=True,
    )
    try:
        summary = trio.run(job)
    except BaseException as exc:
        if not _interrupt_only(exc):
            raise
        print("storagefs: interrupted; run the same command again to resume", file=sys.stderr)
        return exit_codes.INTERRUPTED
    finally:
        progress.close()
    if as_json:
        print(json.dumps(summary.as_json(), ensure_ascii=False, indent=2))
    else:
        for line in summary.lines():
            print(line)
    for line in summary.failure_lines():
        print(line, file=sys.stderr)
    return summary.exit_code()


__all__ = [
    "DEFAULT_JOBS",
    "STATE_NAME",
    "BulkDownload",
    "DownloadError",
    "DownloadSummary",
    "Failure",
    "ObjectSource",
    "Plan",
    "PlannedFile",
    "download_with_settings",
    "normalize_prefix",
    "opened_stack",
    "plan_tree",
    "run_cli",
]
