"""Extended attributes: s3fs-fuse's on-store format, and the Linux rules the core applies.

s3fs keeps all of an object's extended attributes in one user-metadata entry, ``xattr``: a
JSON object mapping each full name to its base64 value, URL-encoded (every byte but the RFC
3986 unreserved characters and ``/`` as ``%XX``, s3fs's ``urlEncodePath``), e.g.
``{"user.color":"Ymx1ZQ=="}`` stored as ``%7B%22user.color%22%3A%22Ymx1ZQ%3D%3D%22%7D``.
storagefs reads and writes the same entry, so each reads the other's attributes (on S3 and
Azure alike; a local directory backend keeps it as its ``user.storagefs.xattr``).

Only the ``user`` namespace is served, as ext4 does without ACL and security modules;
``security.*``, ``system.*`` and ``trusted.*`` are EOPNOTSUPP, answered without a request
(the kernel asks for ``security.capability`` before every write, ``ls -l`` for ACLs).
Names s3fs stored in those namespaces stay in the entry untouched.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import logging
import urllib.parse
from collections.abc import Mapping

from storagefs.fs.errors import FSError

log = logging.getLogger("storagefs.fs")

META_XATTR = "xattr"
USER_PREFIX = "user."
# Linux's limits (XATTR_NAME_MAX, XATTR_SIZE_MAX): the kernel enforces them before a request
# reaches the mount; checked again for callers of the core itself.
NAME_MAX = 255
VALUE_MAX = 64 * 1024
# setxattr(2) flags.
XATTR_CREATE = 1
XATTR_REPLACE = 2


def user_name(name: bytes) -> str:
    """``name`` as stored, if the mount serves it: EOPNOTSUPP outside ``user.``, ERANGE for
    a name Linux refuses by length, EINVAL for one that is not UTF-8 (JSON holds text)."""
    if not name.startswith(USER_PREFIX.encode()):
        raise FSError(errno.EOPNOTSUPP)
    if len(name) > NAME_MAX or len(name) == len(USER_PREFIX):
        raise FSError(errno.ERANGE)
    try:
        return name.decode()
    except UnicodeDecodeError:
        raise FSError(errno.EINVAL, "an extended attribute name that is not UTF-8") from None


def decode(meta: Mapping[str, str] | None) -> dict[str, bytes]:
    """Every attribute stored in ``meta``'s ``xattr`` entry (all namespaces), by name. An
    entry that does not parse counts as none (logged): s3fs skips what it cannot read too."""
    text = (meta or {}).get(META_XATTR)
    if not text:
        return {}
    try:
        found = json.loads(urllib.parse.unquote(text))
        if not isinstance(found, dict):
            raise ValueError("not a JSON object")
        return {str(k): base64.b64decode(str(v), validate=True) for k, v in found.items()}
    except (ValueError, binascii.Error) as exc:
        log.warning("unreadable extended attributes %r ignored: %s", text[:80], exc)
        return {}


def encode(values: Mapping[str, bytes]) -> str | None:
    """The ``xattr`` entry for ``values``; None when there are none (no entry at all)."""
    if not values:
        return None
    # Compact and in name order, as s3fs writes it (a std::map); names as UTF-8, not \\u
    # escapes, which s3fs's parser would not undo.
    text = json.dumps(
        {k: base64.b64encode(v).decode() for k, v in sorted(values.items())},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return urllib.parse.quote(text, safe="/")


def with_values(extra: Mapping[str, str], values: Mapping[str, bytes]) -> dict[str, str]:
    """``extra`` (the entries storagefs does not own) with its ``xattr`` entry for ``values``."""
    out = dict(extra)
    entry = encode(values)
    if entry is None:
        out.pop(META_XATTR, None)
    else:
        out[META_XATTR] = entry
    return out


def listed(values: Mapping[str, bytes]) -> list[bytes]:
    """The names listxattr(2) shows: the served namespace only."""
    return [k.encode() for k in sorted(values) if k.startswith(USER_PREFIX)]
