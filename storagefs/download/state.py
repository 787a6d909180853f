"""What a bulk download already finished, so a second run skips it (``storagefs download``).

Two files in the destination directory:

* ``.storagefs-download.json``: ``{"version": 1, "objects": {key: record}}``, rewritten
  atomically (temporary file + ``os.replace``) when a run ends, interrupted or not;
* ``.storagefs-download.json.log``: one JSON record per line, appended as each file lands, so
  a run that is killed outright still remembers what it finished. A torn last line is ignored.

A record is written only *after* the file has its final name, so "recorded" implies "complete";
a complete file that was not recorded yet is merely downloaded again. Nothing is fsync'd: losing
the newest records in a power cut costs a few re-downloads, never a wrong skip, because the
skip rule (:meth:`ResumeState.is_complete`) also checks the file itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import stat as stat_mod
from pathlib import Path
from typing import IO, Any

from storagefs.backends.base import ObjectInfo, seconds_to_ns
from storagefs.posix_names import NAME_MAX

log = logging.getLogger("storagefs.download")

STATE_NAME = ".storagefs-download.json"
LOG_NAME = STATE_NAME + ".log"
PART_SUFFIX = ".storagefs-part"
_VERSION = 1
# s3transfer writes a big object to "<dest>.<8 hex digits>" and renames it onto ``dest`` at the
# end, cutting the name to 255 bytes first: part names stay short enough to keep the suffix.
_PART = re.compile(r"^\..*\.storagefs-part(\.[0-9A-Fa-f]{8})?$", re.DOTALL)
_PART_NAME_MAX = NAME_MAX - 9


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    path: str  # where the file went, relative to the destination
    etag: str | None  # as the listing reported it
    size: int  # of the local file
    modified_ns: int  # the store's last-modified time from the listing
    mtime_ns: int  # the local file's mtime as stat() read it back after the download

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> Record | None:
        try:
            etag = raw["etag"]
            return cls(
                path=str(raw["path"]),
                etag=str(etag) if etag is not None else None,
                size=int(raw["size"]),
                modified_ns=_modified_ns(raw),
                mtime_ns=int(raw["mtime_ns"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _modified_ns(raw: Any) -> int:
    """``modified_ns``, or the float of seconds ``modified`` a state file written before
    integer times has, to the nearest microsecond: the stores' times have no finer ones, so
    the record still matches (a time it does not match costs one download again)."""
    if "modified_ns" in raw:
        return int(raw["modified_ns"])
    return (seconds_to_ns(float(raw["modified"])) + 500) // 1000 * 1000


def part_name(name: str) -> str:
    """The name a file is downloaded under, next to its final name."""
    part = f".{name}{PART_SUFFIX}"
    if len(part.encode()) <= _PART_NAME_MAX:
        return part
    return f".{hashlib.sha256(name.encode()).hexdigest()[:32]}{PART_SUFFIX}"


def is_part_name(name: str) -> bool:
    """A file a download was writing when it stopped (ours, or the SDK's temporary one)."""
    return _PART.match(name) is not None


def is_reserved_name(name: str) -> bool:
    """Names a download keeps for itself; objects with them are skipped, not overwritten."""
    return name in (STATE_NAME, LOG_NAME, STATE_NAME + ".tmp") or is_part_name(name)


class ResumeState:
    """The records of one destination directory. Blocking: call from a worker thread, except
    :meth:`record`, which appends one short line (cheap enough for the trio thread)."""

    def __init__(self, dest: Path, records: dict[str, Record] | None = None) -> None:
        self.dest = dest
        self.records: dict[str, Record] = records or {}
        self._log: IO[str] | None = None

    @property
    def path(self) -> Path:
        return self.dest / STATE_NAME

    @property
    def log_path(self) -> Path:
        return self.dest / LOG_NAME

    @classmethod
    def load(cls, dest: Path, *, fresh: bool = False) -> ResumeState:
        """The records left by earlier runs; none with ``fresh`` (``--no-resume``) or when the
        files are unreadable (then everything is downloaded again, which is always safe)."""
        state = cls(dest)
        if fresh:
            # Forget earlier runs for good: an interrupted fresh run must not revive them.
            for old in (state.path, state.log_path):
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()
            return state
        try:
            raw = json.loads(state.path.read_text(encoding="utf-8"))
            objects = raw["objects"] if raw.get("version") == _VERSION else {}
            for key, value in objects.items():
                record = Record.from_json(value)
                if record is not None:
                    state.records[str(key)] = record
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning(
                "ignoring unreadable %s (%s): downloading everything again", state.path, exc
            )
        try:
            with open(state.log_path, encoding="utf-8") as lines:
                for line in lines:
                    state._replay_line(line)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (%s)", state.log_path, exc)
        return state

    def _replay_line(self, line: str) -> None:
        try:
            raw = json.loads(line)
            key = raw["key"]
        except (ValueError, TypeError, KeyError):
            return  # a line torn by a crash
        record = Record.from_json(raw)
        if isinstance(key, str) and record is not None:
            self.records[key] = record

    def is_complete(self, key: str, listed: ObjectInfo, path: Path) -> bool:
        """The resume rule: ``key`` was recorded as downloaded from the same version (same
        etag; when the store gives none, the same last-modified time) and the local file is
        still the one written then: a regular file of the listed size whose mtime is the one
        recorded. Anything else (changed object, edited, truncated or missing file) is
        downloaded again."""
        record = self.records.get(key)
        if record is None or record.size != listed.size:
            return False
        if Path(record.path) != path.relative_to(self.dest):
            return False  # the same key downloaded under another prefix, to another place
        if listed.etag is not None and record.etag is not None:
            if listed.etag != record.etag:
                return False
        elif listed.mtime_ns != record.modified_ns:
            return False
        try:
            st = path.lstat()
        except OSError:
            return False
        return (
            stat_mod.S_ISREG(st.st_mode)
            and st.st_size == listed.size
            and st.st_mtime_ns == record.mtime_ns
        )

    def record(self, key: str, record: Record) -> None:
        self.records[key] = record
        if self._log is None:
            self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115
        self._log.write(json.dumps({"key": key, **record.as_json()}) + "\n")
        self._log.flush()  # a later run must see it even if this process is killed

    def forget_missing(self, prefix: str, listed: set[str]) -> None:
        """Drop records under ``prefix`` of objects the listing no longer has; records of other
        prefixes (another download into the same directory) stay."""
        for key in [k for k in self.records if k.startswith(prefix) and k not in listed]:
            del self.records[key]

    def save(self) -> None:
        """Fold the appended lines into the state file (atomically) and remove the log."""
        if self._log is not None:
            self._log.close()
            self._log = None
        if not self.records and not self.path.exists():
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()
            return
        tmp = self.dest / (STATE_NAME + ".tmp")
        body = {
            "version": _VERSION,
            "objects": {k: r.as_json() for k, r in sorted(self.records.items())},
        }
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(body, out, ensure_ascii=False, separators=(",", ":"))
        tmp.replace(self.path)
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()
