"""``storagefs sync``: reconciliation from the command line (storagefs.sync does the work).

* ``storagefs sync MOUNTPOINT`` asks the mount's daemon for a pass now (SIGUSR1) and follows
  its progress in ``/.health/status.json`` until a pass that started after the request ends:
  the daemon knows the journal, so its pass never races the mount's own writes.
* ``storagefs sync --primary URL --secondary URL`` runs a pass in this process, with no mount
  (do not point it at stores a live mount is writing to: use the first form there). Its cursor
  is kept under the cache directory, so an interrupted run resumes when run again.

Exit codes: 0 the secondary has everything, 1 objects could not be copied (listed), 2 bad
input or a store that does not answer, 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from storagefs.config import Settings
from storagefs.download.progress import DownloadProgress, human_bytes, progress_for

EXIT_INCOMPLETE = 1
EXIT_INTERRUPTED = 130
POLL_SECONDS = 0.5


class SyncError(Exception):
    """Cannot start: one line for the user (exit 2)."""


def _say(text: str) -> None:
    print(f"storagefs: {text}", flush=True)


def summary(doc: Mapping[str, Any]) -> str:
    text = (
        f"{doc.get('copied_objects', 0)} object(s), {human_bytes(doc.get('copied_bytes', 0))}"
        f" copied; {doc.get('behind_objects', 0)} object(s),"
        f" {human_bytes(doc.get('behind_bytes', 0))} still behind"
    )
    if doc.get("skipped_pending"):
        text += f"; {doc['skipped_pending']} left to the journal"
    if doc.get("extra_objects"):
        text += f"; {doc['extra_objects']} only on the secondary (kept)"
    return text


def _finish(doc: Mapping[str, Any]) -> int:
    _say(summary(doc))
    failed = list(doc.get("failed_keys") or ())
    for key in failed:
        print(f"storagefs: not copied: {key}", file=sys.stderr)
    if doc.get("state") == "complete":
        _say("the secondary holds everything the primary holds")
        return 0
    if doc.get("last_error"):
        print(f"storagefs: last error: {doc['last_error']}", file=sys.stderr)
    return EXIT_INCOMPLETE


# --- without a mount --------------------------------------------------------------------


def run_standalone(settings: Settings, dry_run: bool) -> int:
    from storagefs.download.run import DownloadError, opened_stack
    from storagefs.observability.logs import setup_logging
    from storagefs.sync.compare import etags_are_md5
    from storagefs.sync.reconcile import Syncer

    if not settings.secondary:
        raise SyncError("sync needs a secondary: --secondary URL (or STORAGEFS_SECONDARY)")
    setup_logging("DEBUG" if settings.log_level == "DEBUG" else "WARNING", settings.log_format)
    primary_url, secondary_url = settings.resolved_primary(), settings.secondary
    pair = hashlib.sha256(f"{primary_url}\n{secondary_url}".encode()).hexdigest()[:16]
    directory = settings.cache_dir.expanduser() / "sync" / pair
    progress = progress_for(False, label="sync")

    async def main() -> Mapping[str, Any]:
        async with opened_stack(settings) as stack:
            primary, secondary = stack.chain.remotes[0], stack.chain.remotes[1]
            syncer = Syncer(
                primary,
                secondary,
                directory,
                primary_md5=etags_are_md5(primary_url),
                secondary_md5=etags_are_md5(secondary_url),
                workers=settings.sync_workers,
                bytes_per_second=settings.sync_bytes_per_second,
            )
            await syncer.run_pass(dry_run=dry_run, progress=progress)
            if dry_run:
                for info in syncer.plan:
                    print(f"would copy {info.key} ({human_bytes(info.size)})")
            # The same fields as the mount's status.json section, which the other path reads.
            return dataclasses.asdict(syncer.snapshot())

    from storagefs.backends.base import BackendError

    try:
        doc = trio.run(main)
    except KeyboardInterrupt:
        print("storagefs: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DownloadError, BackendError) as exc:
        raise SyncError(str(exc)) from None
    finally:
        progress.close()
    if dry_run:
        _say(summary(doc).replace("still behind", "to copy"))
        return 0
    return _finish(doc)


# --- through a mount ----------------------------------------------------------------------


def _secondary_doc(mountpoint: Path) -> Mapping[str, Any]:
    from storagefs.cli.probe import ProbeError, read_health

    try:
        status = read_health(mountpoint, timeout=10.0).status
    except ProbeError as exc:
        raise SyncError(str(exc)) from None
    doc = status.get("secondary")
    if not isinstance(doc, Mapping):
        raise SyncError(
            f"{mountpoint} has no reconciliation running (no secondary, or"
            " STORAGEFS_SYNC_ENABLED=false)"
        )
    return doc


def follow_mount(mountpoint: Path, dry_run: bool) -> int:
    doc = _secondary_doc(mountpoint)
    if dry_run:
        _say(f"reconciliation is {doc.get('state')}: {summary(doc)}")
        return 0
    asked = time.time()
    try:
        os.kill(int(doc["pid"]), signal.SIGUSR1)
    except (KeyError, ValueError, OSError) as exc:
        raise SyncError(f"cannot ask the daemon of {mountpoint} for a pass: {exc}") from None
    progress = progress_for(False, label="sync")
    try:
        doc = _follow(mountpoint, asked, progress)
    except KeyboardInterrupt:
        print("storagefs: stopped following; the daemon's pass goes on", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        progress.close()
    return _finish(doc)


def _follow(mountpoint: Path, asked: float, progress: DownloadProgress) -> Mapping[str, Any]:
    """Poll status.json until a pass started after ``asked`` has ended; drive ``progress``."""
    planned = False
    shown_objects = shown_bytes = 0
    warned = None
    while True:
        doc = _secondary_doc(mountpoint)
        started = doc.get("pass_started_at") or 0
        mine = started >= asked - 1.0  # the daemon's clock is ours, give or take rounding
        if mine and doc.get("walking"):
            progress.listed(int(doc.get("listed_objects", 0)))
        elif mine and not planned and doc.get("state") != "paused":
            copied, behind = int(doc["copied_objects"]), int(doc["behind_objects"])
            total_bytes = int(doc["copied_bytes"]) + int(doc["behind_bytes"])
            progress.planned(copied + behind, total_bytes, 0, 0)
            planned = True
        if planned:
            objects, size = int(doc["copied_objects"]), int(doc["copied_bytes"])
            if objects > shown_objects:
                progress.advanced(size - shown_bytes)
                for _ in range(objects - shown_objects - 1):
                    progress.advanced(0)
                shown_objects, shown_bytes = objects, size
        if doc.get("state") == "paused" and doc.get("last_error") != warned:
            warned = doc.get("last_error")
            progress.warn(f"reconciliation paused (retrying): {warned}")
        if mine and doc.get("state") in ("complete", "incomplete"):
            return doc
        time.sleep(POLL_SECONDS)
