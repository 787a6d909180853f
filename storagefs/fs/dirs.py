"""Directory listings built from paginated object listings, and a short-lived cache of them.

One listing serves a whole ``ls -l``: opendir takes a snapshot, readdir pages through it,
and lookups of the same names within the TTL answer from it without another request.
"""

from __future__ import annotations

import dataclasses
import logging

from storagefs.backends.base import Backend, ObjectInfo
from storagefs.fs.names import (
    HEALTH_NAME,
    RESERVED_NAME,
    dir_prefix,
    encode_name,
    report_bad_key,
    valid_component,
)

log = logging.getLogger("storagefs.dirs")

LIST_PAGE = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    name: str
    is_dir: bool
    info: ObjectInfo | None  # the file object; None for directories


@dataclasses.dataclass(slots=True)
class Listing:
    entries: dict[str, Entry]
    marker: ObjectInfo | None  # the directory's own "dir/" marker object, if any
    expires: float
    # Remembered metadata of the entries, by key, looked up once for the whole listing
    # (one batched query instead of one per entry); None until filled.
    meta: dict[str, dict[str, str]] | None = None

    def sorted_entries(self) -> list[Entry]:
        return sorted(self.entries.values(), key=lambda e: encode_name(e.name))


async def list_directory(backend: Backend, path: str, expires: float) -> Listing:
    """Every child of ``path``, following continuation tokens to the last page."""
    prefix = dir_prefix(path)
    entries: dict[str, Entry] = {}
    marker: ObjectInfo | None = None
    token: str | None = None
    while True:
        page = await backend.list(prefix, delimiter="/", token=token, limit=LIST_PAGE)
        for obj in page.objects:
            name = obj.key[len(prefix) :]
            if name == "":
                marker = obj
                continue
            if not _acceptable(path, name, obj.key):
                continue
            if name in entries:  # a prefix "name/" was seen: a directory wins over a file
                log.warning("key %r is shadowed by the directory of the same name", obj.key)
                continue
            entries[name] = Entry(name, False, obj)
        for sub in page.prefixes:
            name = sub[len(prefix) : -1]
            if not _acceptable(path, name, sub):
                continue
            if name in entries and not entries[name].is_dir:
                log.warning("key %r is shadowed by the directory of the same name", sub[:-1])
            entries[name] = Entry(name, True, None)
        if page.token is None:
            return Listing(entries, marker, expires)
        token = page.token


def _acceptable(path: str, name: str, key: str) -> bool:
    if not valid_component(name):
        report_bad_key(key)
        return False
    if path == "" and name == HEALTH_NAME:
        # The root's .health is the mount's virtual status directory (docs/SEMANTICS.md),
        # answered by fs/health_router.py before the core sees the name; the bucket's own
        # objects under it are left out here so that listings never show them either.
        report_bad_key(key)
        return False
    # The root's .storagefs holds the mount's own objects (hard links' inode objects).
    return not (path == "" and name == RESERVED_NAME)


class DirCache:
    """Listings by directory path, trusted until they expire or a local change edits them."""

    def __init__(self) -> None:
        self._listings: dict[str, Listing] = {}

    def get(self, path: str, now: float) -> Listing | None:
        listing = self._listings.get(path)
        if listing is None or listing.expires <= now:
            return None
        return listing

    def expired_size(self, path: str, now: float) -> int | None:
        """How many entries the expired listing of ``path`` had; None if none is kept or it
        is still fresh."""
        listing = self._listings.get(path)
        if listing is None or listing.expires > now:
            return None
        return len(listing.entries)

    def put(self, path: str, listing: Listing) -> None:
        self._listings[path] = listing
        if len(self._listings) > 4096:  # bound memory; oldest-inserted go first
            for stale in list(self._listings)[:1024]:
                del self._listings[stale]

    def add(self, parent: str, entry: Entry) -> None:
        listing = self._listings.get(parent)
        if listing is not None:
            listing.entries[entry.name] = entry

    def remove(self, parent: str, name: str) -> None:
        listing = self._listings.get(parent)
        if listing is not None:
            listing.entries.pop(name, None)

    def drop_tree(self, path: str) -> None:
        """Forget the listing of ``path`` and of everything below it."""
        prefix = path + "/" if path else ""
        for key in [k for k in self._listings if k == path or k.startswith(prefix)]:
            del self._listings[key]
