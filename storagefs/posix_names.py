"""The one rule for which strings can be a component of a POSIX path.

Object keys may hold anything; a mount (fs/names.py), a download (download.py) and the local
backend (backends/local.py) can only use keys whose every component passes this, and all three
must agree, or a key would be visible in one place and missing in another.
"""

from __future__ import annotations

NAME_MAX = 255  # bytes, as on ext4 and in the kernel's dentry limits


def component_problem(name: str) -> str | None:
    """Why ``name`` cannot be one component of a path, in a few words; None if it can."""
    if name in ("", ".", ".."):
        return "empty, '.' or '..' path component"
    if "/" in name:
        return "a '/' in the name"
    if "\0" in name:
        return "NUL in the name"
    # surrogateescape: kernel names are bytes, decoded that way (fs/names.decode_name).
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"a path component longer than {NAME_MAX} bytes"
    return None
