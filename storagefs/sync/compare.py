"""When is the secondary's copy of an object the same as the primary's? The rules of
reconciliation (:mod:`storagefs.sync`), kept apart so they can be read and tested alone.

ETags are not a portable checksum: S3's is the MD5 of the content only for a single-part upload
without SSE-KMS (a multipart upload's ends in ``-<parts>``), Azure's is an opaque version tag,
and a local directory has none. So an object is judged, from cheapest to dearest evidence:

1. **missing** -- the secondary has no object under the key: copy.
2. **stale** -- the sizes differ: copy.
3. Both listings carry an ETag that is known to be the content MD5 (the backend says its ETags
   can be, and the ETag is 32 hex digits): equal means **same**, different means **stale**.
4. Otherwise the secondary's own metadata decides. Every copy reconciliation makes carries
   :data:`MARK` = the primary version it was made from (:func:`version_of`: size and ETag, or
   size and mtime when the store has no ETag). A mark equal to the primary's current version is
   **same**; any other mark, or none (the object was written by someone else, or by the
   mount's journal, which does not mark), is **stale** and copied again.

When in doubt it copies: a needless copy costs bandwidth, a wrong "same" loses a file at
failover. Any change of the primary's content changes its ETag (or mtime), so a mark can only
match the version it was made from.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from decimal import Decimal

from storagefs.backends.base import NS, ObjectInfo

# The metadata entry reconciliation writes on the secondary's copies. Lowercase letters only:
# Azure stores it as is, and it is not one of the POSIX attributes the mount reads.
MARK = "storagefssource"

_MD5 = re.compile(r"[0-9a-f]{32}")


class Verdict(enum.Enum):
    SAME = "same"
    MISSING = "missing"
    STALE = "stale"
    UNSURE = "unsure"  # the listings cannot tell: look at the secondary's mark


def version_of(info: ObjectInfo) -> str:
    """What identifies this version of the primary's object (the value of :data:`MARK`)."""
    if info.etag:
        return f"{info.size}:{info.etag}"
    # Six decimals as when the time was a float: marks written then still match. Decimal
    # keeps the division exact (the stores' times have whole microseconds at most).
    return f"{info.size}:mtime={Decimal(info.mtime_ns) / NS:.6f}"


def content_md5(info: ObjectInfo, etags_are_md5: bool) -> str | None:
    """The content MD5 a listing gives away, when the store's ETags can be one."""
    if etags_are_md5 and info.etag and _MD5.fullmatch(info.etag.lower()):
        return info.etag.lower()
    return None


def compare_listed(
    primary: ObjectInfo,
    secondary: ObjectInfo | None,
    *,
    primary_md5: bool,
    secondary_md5: bool,
) -> Verdict:
    """Rules 1-3: what the two listings alone say."""
    if secondary is None:
        return Verdict.MISSING
    if secondary.size != primary.size:
        return Verdict.STALE
    ours = content_md5(primary, primary_md5)
    theirs = content_md5(secondary, secondary_md5)
    if ours is not None and theirs is not None:
        return Verdict.SAME if ours == theirs else Verdict.STALE
    return Verdict.UNSURE


def compare_marked(primary: ObjectInfo, secondary_metadata: Mapping[str, str] | None) -> Verdict:
    """Rule 4: the secondary's mark against the primary's current version."""
    if secondary_metadata and secondary_metadata.get(MARK) == version_of(primary):
        return Verdict.SAME
    return Verdict.STALE


def etags_are_md5(url: str) -> bool:
    """Whether a backend's ETags may be content MD5s (rule 3): S3's, for single-part uploads."""
    return url.startswith("s3://")
