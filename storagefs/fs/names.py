"""Which object keys can be POSIX paths, and how paths become keys."""

from __future__ import annotations

import errno
import logging

from storagefs.fs.errors import FSError
from storagefs.posix_names import NAME_MAX, component_problem

log = logging.getLogger("storagefs.names")

# The mount root's virtual directory; never read from or written to a backend.
HEALTH_NAME = ".health"
# The root's directory of the mount's own objects (the inode objects of hard-linked files,
# storagefs/fs/links.py): left out of listings, absent to lookups, never made by users.
RESERVED_NAME = ".storagefs"
LINKS_PREFIX = RESERVED_NAME + "/links/"

_reported: set[str] = set()


def valid_component(name: str) -> bool:
    return component_problem(name) is None


def report_bad_key(key: str) -> None:
    """Log once per key that a stored object cannot appear in the mount."""
    if key not in _reported:
        _reported.add(key)
        log.warning("object key %r is not a valid POSIX path; it is left out of the mount", key)


def bad_keys_seen() -> int:
    return len(_reported)


def decode_name(raw: bytes) -> str:
    """Kernel names are bytes; keys are text. surrogateescape keeps any byte round-trippable."""
    return raw.decode("utf-8", "surrogateescape")


def encode_name(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def check_new_name(name: str) -> None:
    if len(encode_name(name)) > NAME_MAX:
        raise FSError(errno.ENAMETOOLONG)
    if not valid_component(name):
        raise FSError(errno.EINVAL, f"invalid name {name!r}")


def child_path(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def parent_and_name(path: str) -> tuple[str, str]:
    head, _, tail = path.rpartition("/")
    return head, tail


def inode_key(link_id: str) -> str:
    """The key of the inode object of a hard-linked file (storagefs/fs/links.py)."""
    return LINKS_PREFIX + link_id


def is_reserved(path: str) -> bool:
    """``path`` (or key) is the mount's own, below the root's ``.storagefs``."""
    return path == RESERVED_NAME or path.startswith(RESERVED_NAME + "/")


def dir_prefix(path: str) -> str:
    """Key prefix of a directory's children ("" for the root)."""
    return f"{path}/" if path else ""


def check_room(key: str, max_key_bytes: int) -> None:
    """A new name whose key the stores cannot hold is ENAMETOOLONG now, not EIO at close
    (S3 and Azure take keys of at most 1,024 bytes, the URL's prefix included)."""
    if is_reserved(key):
        # The mount's own objects (hard links' inode objects) live there.
        raise FSError(errno.EPERM, "the root's .storagefs is reserved")
    if len(encode_name(key)) > max_key_bytes:
        raise FSError(errno.ENAMETOOLONG, f"a key longer than {max_key_bytes} bytes")
