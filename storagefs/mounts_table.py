"""The one reader of the kernel's mount table (``/proc/self/mounts``).

The CLI (is it mounted? which mounts are ours?), the health probe, the test harness and the
benchmark all ask it; one parser means one treatment of the kernel's octal escapes (space,
tab, newline and backslash in a mountpoint are written as ``\\040`` and so on).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MOUNTS_FILE = "/proc/self/mounts"
FSTYPE = "fuse.storagefs"  # what the kernel calls our mounts (subtype=storagefs)

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda c: chr(int(c.group(1), 8)), field)


def parse(mounts_text: str) -> list[tuple[Path, str]]:
    """(mountpoint, file system type) of every line of a mount table's text."""
    found = []
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            found.append((Path(_unescape(fields[1])), fields[2]))
    return found


def read(mounts_file: str = MOUNTS_FILE) -> list[tuple[Path, str]]:
    """The mount table now; OSError if it cannot be read."""
    with open(mounts_file) as f:
        return parse(f.read())


def storagefs_mounts(mounts_file: str = MOUNTS_FILE) -> list[Path]:
    """Mountpoints of the storagefs mounts now; OSError if the table cannot be read."""
    return [mountpoint for mountpoint, fstype in read(mounts_file) if fstype == FSTYPE]


def is_mounted(path: Path, mounts_file: str = MOUNTS_FILE) -> bool:
    """True for a live or a dead (``Transport endpoint is not connected``) mount at ``path``,
    of any file system type."""
    target = Path(os.path.realpath(path))
    return any(mountpoint == target for mountpoint, _ in read(mounts_file))
