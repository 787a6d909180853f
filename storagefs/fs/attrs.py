"""File attributes and how they are stored in object user metadata."""

from __future__ import annotations

import dataclasses
import stat
import time
from collections.abc import Mapping

from storagefs.backends.base import META_GID, META_MODE, META_MTIME, META_UID, ObjectInfo

NS = 1_000_000_000


@dataclasses.dataclass(slots=True)
class Attrs:
    mode: int  # includes the file type bits
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    atime_ns: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def to_metadata(self) -> dict[str, str]:
        return {
            META_MODE: str(self.mode),
            META_UID: str(self.uid),
            META_GID: str(self.gid),
            META_MTIME: _ns_to_text(self.mtime_ns),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Defaults:
    """Attributes for objects that carry no metadata (written by other tools)."""

    uid: int
    gid: int
    file_mode: int = 0o644
    dir_mode: int = 0o755


def _ns_to_text(ns: int) -> str:
    sec, frac = divmod(ns, NS)
    return f"{sec}.{frac:09d}" if frac else str(sec)


def _text_to_ns(text: str) -> int | None:
    try:
        if "." in text:
            sec, frac = text.split(".", 1)
            return int(sec) * NS + int((frac + "000000000")[:9])
        return int(text) * NS
    except ValueError:
        return None


def _int(meta: Mapping[str, str], name: str) -> int | None:
    try:
        return int(meta[name])
    except (KeyError, ValueError):
        return None


def attrs_from_object(
    info: ObjectInfo | None,
    is_dir: bool,
    defaults: Defaults,
    metadata: Mapping[str, str] | None = None,
) -> Attrs:
    """Attributes of a file or directory from its object (marker) and metadata, if any."""
    meta = metadata if metadata is not None else (info.metadata if info else None) or {}
    kind = stat.S_IFDIR if is_dir else stat.S_IFREG
    perm = _int(meta, META_MODE)
    if perm is None:
        perm = defaults.dir_mode if is_dir else defaults.file_mode
    mtime = _text_to_ns(meta[META_MTIME]) if META_MTIME in meta else None
    if mtime is None:
        mtime = int(info.mtime * NS) if info else time.time_ns()
    uid = _int(meta, META_UID)
    gid = _int(meta, META_GID)
    return Attrs(
        mode=kind | stat.S_IMODE(perm),
        uid=defaults.uid if uid is None else uid,
        gid=defaults.gid if gid is None else gid,
        size=0 if is_dir or info is None else info.size,
        mtime_ns=mtime,
        ctime_ns=mtime,
        atime_ns=mtime,
    )
