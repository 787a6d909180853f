"""How ``storagefs download`` shows its progress: a rich progress bar on a terminal, a plain
line every few seconds otherwise (logs, CI), nothing at all with ``--json``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

PLAIN_INTERVAL = 5.0  # seconds between two plain progress lines


class DownloadProgress(Protocol):
    def listed(self, objects: int) -> None:
        """``objects`` names listed so far (called once per listing page)."""

    def planned(self, files: int, total_bytes: int, done_files: int, done_bytes: int) -> None:
        """The work is known: ``done_*`` of it was complete before this run."""

    def advanced(self, size: int) -> None:
        """One more file of ``size`` bytes is complete."""

    def warn(self, message: str) -> None:
        """A line for the user that must not be lost in the progress display."""

    def close(self) -> None: ...


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class SilentProgress:
    """No progress output; warnings still go to ``stream`` (stderr)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def listed(self, objects: int) -> None:
        pass

    def planned(self, files: int, total_bytes: int, done_files: int, done_bytes: int) -> None:
        pass

    def advanced(self, size: int) -> None:
        pass

    def warn(self, message: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        print(f"storagefs: warning: {message}", file=stream, flush=True)

    def close(self) -> None:
        pass


class PlainProgress(SilentProgress):
    """``storagefs: 12/40 files, 5.0 MiB/20.0 MiB, 2.1 MiB/s, about 7 s left`` at most every
    ``interval`` seconds, and once at the end."""

    def __init__(
        self,
        out: TextIO | None = None,
        err: TextIO | None = None,
        interval: float = PLAIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(err)
        self._out = out
        self._interval = interval
        self._clock = clock
        self._files = self._bytes = self._done_files = self._done_bytes = 0
        self._started = self._last = clock()
        self._moved = 0  # bytes downloaded by this run (the rate excludes skipped files)

    def _print(self, text: str) -> None:
        print(f"storagefs: {text}", file=self._out or sys.stdout, flush=True)

    def planned(self, files: int, total_bytes: int, done_files: int, done_bytes: int) -> None:
        self._files, self._bytes = files, total_bytes
        self._done_files, self._done_bytes = done_files, done_bytes
        self._started = self._last = self._clock()
        if done_files:
            self._print(f"{done_files} of {files} files already complete")

    def advanced(self, size: int) -> None:
        self._done_files += 1
        self._done_bytes += size
        self._moved += size
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._print(self._line(now))

    def _line(self, now: float) -> str:
        text = (
            f"{self._done_files}/{self._files} files,"
            f" {human_bytes(self._done_bytes)}/{human_bytes(self._bytes)}"
        )
        elapsed = now - self._started
        if elapsed > 0 and self._moved:
            rate = self._moved / elapsed
            text += f", {human_bytes(rate)}/s"
            left = self._bytes - self._done_bytes
            if left > 0:
                text += f", about {left / rate:.0f} s left"
        return text

    def close(self) -> None:
        if self._files and self._last != self._clock():
            self._print(self._line(self._clock()))


class RichProgress:
    """One bar for the bytes, with files done/total, rate and time left, on a terminal."""

    def __init__(
        self, console: Console | None = None, err: Console | None = None, label: str = "download"
    ) -> None:
        self._label = label
        self._err = err or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[files]}"),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None
        self._files = self._done_files = 0
        self._progress.start()
        self._listing = self._progress.add_task("listing", total=None, files="0 names")

    def listed(self, objects: int) -> None:
        self._progress.update(self._listing, files=f"{objects} names")

    def planned(self, files: int, total_bytes: int, done_files: int, done_bytes: int) -> None:
        self._progress.remove_task(self._listing)
        self._files, self._done_files = files, done_files
        # Created with what is already complete, so the rate covers this run's transfers only.
        self._task = self._progress.add_task(
            self._label,
            total=total_bytes,
            completed=done_bytes,
            files=self._files_text(),
        )

    def _files_text(self) -> str:
        return f"{self._done_files}/{self._files} files"

    def advanced(self, size: int) -> None:
        if self._task is None:
            return
        self._done_files += 1
        self._progress.update(self._task, advance=size, files=self._files_text())

    def warn(self, message: str) -> None:
        self._err.print(f"storagefs: warning: {message}", markup=False, highlight=False)

    def close(self) -> None:
        self._progress.stop()


def progress_for(
    as_json: bool, stream: TextIO | None = None, label: str = "download"
) -> DownloadProgress:
    """The display for this process: none for ``--json`` (stdout carries the JSON), rich on a
    terminal, plain lines otherwise."""
    out = stream if stream is not None else sys.stdout
    if as_json:
        return SilentProgress()
    if out.isatty():
        return RichProgress(Console(file=out), label=label)
    return PlainProgress(out)
