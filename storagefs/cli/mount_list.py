"""``storagefs list``: every live storagefs mount, its backends and its health, one line each.

The mounts come from /proc/self/mounts (type ``fuse.storagefs``), the rest from each mount's
``/.health`` files, read by :func:`storagefs.cli.probe.read_health` so that a hung mount costs
``timeout`` seconds and shows as not answering instead of hanging the listing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from storagefs import mounts_table
from storagefs.cli import probe
from storagefs.mounts_table import MOUNTS_FILE


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    role: str
    url: str
    available: bool


@dataclasses.dataclass(frozen=True)
class MountSummary:
    mountpoint: str
    status: str  # ok, degraded, down, or "unknown" when the mount did not answer
    backends: list[Backend]
    pending_entries: int
    error: str | None = None  # why the health files could not be read


def live_mounts(mounts_file: str = MOUNTS_FILE) -> list[Path]:
    try:
        return mounts_table.storagefs_mounts(mounts_file)
    except OSError:
        return []


def summarize(mountpoint: Path, timeout: float) -> MountSummary:
    try:
        files = probe.read_health(mountpoint, timeout)
    except probe.ProbeError as exc:
        return MountSummary(str(mountpoint), "unknown", [], 0, str(exc))
    return MountSummary(
        mountpoint=str(mountpoint),
        status=files.state,
        backends=_backends(files),
        pending_entries=int(
            (files.journal or files.status.get("journal") or {}).get("pending_entries", 0) or 0
        ),
    )


def _backends(files: probe.HealthFiles) -> list[Backend]:
    docs = {str(doc.get("name", key)): doc for key, doc in files.backends.items()}
    remotes = files.status.get("remotes") or []
    found = []
    for remote in remotes:
        if not isinstance(remote, Mapping):
            continue
        name = str(remote.get("name"))
        doc: Mapping[str, Any] = docs.get(name, {})
        found.append(
            Backend(
                name=name,
                role=str(remote.get("role", "-")),
                url=str(doc.get("describe") or name),
                available=bool(remote.get("available")),
            )
        )
    return found


def line(summary: MountSummary) -> str:
    """``/mnt/data ok primary=s3://bucket/data(up) secondary=azure://c(down) pending=0``."""
    if summary.error is not None:
        return f"{summary.mountpoint} unknown ({summary.error})"
    parts = [summary.mountpoint, summary.status]
    for b in summary.backends:
        parts.append(f"{b.role}={b.url}({'up' if b.available else 'down'})")
    parts.append(f"pending={summary.pending_entries}")
    return " ".join(parts)


def as_json(summaries: list[MountSummary]) -> str:
    return json.dumps([dataclasses.asdict(s) for s in summaries], indent=2) + "\n"
