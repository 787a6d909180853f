"""Which processes keep a mount busy, like ``fuser -m`` would say: a process whose current or
root directory, or one of whose open files, is on the mount. Read from /proc, only for the
processes this user may inspect; readlink never enters the mount, so a hung mount is safe."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


@dataclasses.dataclass(frozen=True, slots=True)
class Holder:
    pid: int
    command: str
    uses: str  # "cwd", "root" or "open file <path>"

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command}): {self.uses}"


def _on(path: str, mountpoint: str) -> bool:
    return path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)  # noqa: PTH115 (str in, str out: compared as text)
    except OSError:
        return None


def holders(mountpoint: Path, proc: Path = Path("/proc")) -> list[Holder]:
    target = os.path.abspath(mountpoint)  # noqa: PTH100 (resolve() would enter the mount)
    found: list[Holder] = []
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        try:
            command = (entry / "comm").read_text().strip()
        except OSError:
            continue
        uses: list[str] = []
        for what in ("cwd", "root"):
            link = _link(str(entry / what))
            if link is not None and _on(link, target) and not (what == "root" and link == "/"):
                uses.append(what)
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            fds = []
        for fd in fds:
            link = _link(str(fd))
            if link is not None and _on(link, target):
                uses.append(f"open file {link}")
        found.extend(Holder(pid, command, use) for use in uses)
    return found


def describe(mountpoint: Path, limit: int = 5) -> str:
    """``held by pid 12 (bash): cwd; pid 40 (less): open file /mnt/x``, or a hint when this
    user cannot see who holds it."""
    found = holders(mountpoint)
    if not found:
        return "no process of yours holds it; try: fuser -vm " + str(mountpoint)
    text = "; ".join(str(h) for h in found[:limit])
    if len(found) > limit:
        text += f"; and {len(found) - limit} more"
    return "held by " + text
