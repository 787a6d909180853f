"""File attributes and the one codec for storing them in object user metadata.

The format is s3fs-fuse's, so s3fs and storagefs read each other's objects (see
docs/SEMANTICS.md, "How files map to objects"):

* ``mode``: the whole ``st_mode`` in decimal, file type bits included (``33188`` is a regular
  file 0644, ``41471`` a symbolic link 0777). A mode without type bits is a regular file (or a
  directory for a ``dir/`` marker), as s3fs reads it.
* ``uid``, ``gid``, ``rdev``: decimal integers (``rdev`` only on device nodes).
* ``mtime``, ``ctime``, ``atime``: seconds since the epoch, decimal, with up to nine decimals
  (``1700000000.123456789``); s3fs writes whole seconds and reads the fraction rclone adds.
* A symbolic link is an object whose body is the target and whose mode has ``S_IFLNK``.
* FIFOs, sockets and device nodes are zero-byte objects whose mode carries their type.
* Hard links (storagefs's own, storagefs/fs/links.py): each name is a one-line *pointer*
  object whose only entry, ``storagefs-link``, is the id of the *inode object*
  (``.storagefs/links/<id>``) that holds the content and the entries above, plus
  ``storagefs-nlink``: the number of names.

Every reader of these entries (the core, ``storagefs download``) goes through this module.
"""

from __future__ import annotations

import dataclasses
import stat
import time
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

from storagefs.backends.base import META_GID, META_MODE, META_MTIME, META_UID, ObjectInfo

META_CTIME = "ctime"
META_ATIME = "atime"
META_RDEV = "rdev"
META_LINK = "storagefs-link"  # on a name: the id of its inode object (hard links)
META_NLINK = "storagefs-nlink"  # on an inode object: its number of names

NS = 1_000_000_000

# The entries storagefs writes from Attrs (and links.py from a node's count): everything else
# an object carries is another tool's, or an extended attribute, and is stored again as it was.
OWN_KEYS = frozenset(
    {META_MODE, META_UID, META_GID, META_MTIME, META_CTIME, META_ATIME, META_RDEV}
    | {META_LINK, META_NLINK, "storagefssource"}  # the last: reconciliation's mark (sync/)
)

# File types an object (not a directory marker) can hold; anything else in a stored mode is
# read as a regular file.
OBJECT_TYPES = frozenset(
    {stat.S_IFREG, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK}
)


@dataclasses.dataclass(slots=True)
class Attrs:
    mode: int  # includes the file type bits
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    atime_ns: int
    rdev: int = 0
    # The stored entries storagefs does not own (OWN_KEYS), written back on every rewrite;
    # None while not known (a listing without metadata): a rewrite must learn them first
    # (StoreView.learn_extra, fs/known.py), or the store would lose them. Replaced, never mutated:
    # copies of an Attrs (dataclasses.replace) share it.
    extra: dict[str, str] | None = dataclasses.field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)

    def to_metadata(self) -> dict[str, str]:
        """What the object stores: the entries of :attr:`extra`, then ours over them."""
        meta = dict(self.extra or {})
        meta |= {
            META_MODE: str(self.mode),
            META_UID: str(self.uid),
            META_GID: str(self.gid),
            META_MTIME: ns_to_text(self.mtime_ns),
            META_CTIME: ns_to_text(self.ctime_ns),
            META_ATIME: ns_to_text(self.atime_ns),
        }
        if stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode):
            meta[META_RDEV] = str(self.rdev)
        return meta


def extra_metadata(meta: Mapping[str, str]) -> dict[str, str]:
    """The entries of stored metadata that storagefs does not own (see :data:`OWN_KEYS`)."""
    return {k: v for k, v in meta.items() if k not in OWN_KEYS}


def metadata_size(meta: Mapping[str, str]) -> int:
    """Bytes of user metadata as the stores count them against their limit (S3: 2 KiB, Azure:
    8 KiB): the UTF-8 bytes of every name and value together."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in meta.items())


def pointer_metadata(link_id: str) -> dict[str, str]:
    """The metadata of a name of a hard-linked file: which inode object it names."""
    return {META_LINK: link_id}


def inode_metadata(attrs: Attrs, links: int) -> dict[str, str]:
    """What the inode object of a hard-linked file stores: its attributes and its count."""
    meta = attrs.to_metadata()
    meta[META_NLINK] = str(links)
    return meta


def link_of(meta: Mapping[str, str] | None) -> str | None:
    """The inode object a pointer names (a lowercase hex id), None for any other object."""
    value = (meta or {}).get(META_LINK, "").strip()
    if value and len(value) <= 64 and all(c in "0123456789abcdef" for c in value):
        return value
    return None


def nlink_of(meta: Mapping[str, str] | None) -> int:
    """An inode object's stored link count (1 when absent or garbage)."""
    count = meta_int(meta, META_NLINK)
    return 1 if count is None else count


@dataclasses.dataclass(frozen=True, slots=True)
class Defaults:
    """Attributes for objects that carry no metadata (written by other tools)."""

    uid: int
    gid: int
    file_mode: int = 0o644
    dir_mode: int = 0o755


def ns_to_text(ns: int) -> str:
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), NS)
    return f"{sign}{sec}.{frac:09d}".rstrip("0") if frac else f"{sign}{sec}"


def text_to_ns(text: str | None, before_1970: bool = False) -> int | None:
    """Nanoseconds from ``"1700000000"``, ``"1700000000.5"``, ``" 17e8 "``; None if it is not
    a time a stat can hold (garbage, beyond 64 bits; negative unless ``before_1970``: the
    mount keeps what utimensat set, other readers treat it as junk)."""
    if text is None:
        return None
    try:
        ns = int(Decimal(text.strip()) * NS)
    except (InvalidOperation, ValueError):
        return None
    low = -(2**63) if before_1970 else 0
    return ns if low <= ns < 2**63 else None


def meta_int(meta: Mapping[str, str] | None, name: str) -> int | None:
    """A decimal integer entry (mode, uid, gid, rdev); None when absent or not a number."""
    if not meta:
        return None
    try:
        value = int(meta[name].strip())
    except (KeyError, ValueError):
        return None
    return value if 0 <= value < 2**32 else None


def stored_mode(meta: Mapping[str, str] | None) -> int | None:
    """The stored ``mode`` entry as it is (type and permission bits), if any."""
    return meta_int(meta, META_MODE)


def stored_mtime_ns(meta: Mapping[str, str] | None) -> int | None:
    return text_to_ns(meta.get(META_MTIME)) if meta else None


def object_kind(meta: Mapping[str, str] | None) -> int:
    """The file type of a (non-marker) object: what its stored mode says, else regular."""
    mode = stored_mode(meta)
    kind = stat.S_IFMT(mode) if mode is not None else 0
    return kind if kind in OBJECT_TYPES else stat.S_IFREG


def attrs_from_object(
    info: ObjectInfo | None,
    is_dir: bool,
    defaults: Defaults,
    metadata: Mapping[str, str] | None = None,
) -> Attrs:
    """Attributes of a file or directory from its object (marker) and metadata, if any."""
    known = metadata if metadata is not None else (info.metadata if info else None)
    meta = known or {}
    kind = stat.S_IFDIR if is_dir else object_kind(meta)
    perm = stored_mode(meta)
    if perm is None:
        perm = defaults.dir_mode if is_dir else defaults.file_mode
    mtime = text_to_ns(meta.get(META_MTIME), before_1970=True)
    if mtime is None:
        mtime = info.mtime_ns if info else time.time_ns()
    ctime = text_to_ns(meta.get(META_CTIME), before_1970=True)
    atime = text_to_ns(meta.get(META_ATIME), before_1970=True)
    uid = meta_int(meta, META_UID)
    gid = meta_int(meta, META_GID)
    return Attrs(
        mode=kind | stat.S_IMODE(perm),
        uid=defaults.uid if uid is None else uid,
        gid=defaults.gid if gid is None else gid,
        size=0 if is_dir or info is None else info.size,
        mtime_ns=mtime,
        ctime_ns=mtime if ctime is None else ctime,
        atime_ns=mtime if atime is None else atime,
        rdev=meta_int(meta, META_RDEV) or 0,
        extra=None if known is None else extra_metadata(known),
    )
