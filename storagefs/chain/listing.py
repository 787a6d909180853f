"""Listing across the fallback chain: page tokens that survive failover, and the journal overlay.

A chain token names the backend its inner token belongs to and the last name (key or common
prefix) already returned. If that backend stops answering mid-listing, the next one lists from
the start and skips every name up to that last one, so a listing never repeats or loses names
across a failover (unless the backends disagree about what exists).

Pending journal entries are merged into each page within the page's own name range
``(last name of the previous page, last name of this page]`` (the last page takes everything
after), so pages stay sorted and every pending name appears exactly once.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Iterable, Mapping

from storagefs.backends.base import InvalidRequest, ListPage, ObjectInfo, seconds_to_ns
from storagefs.journal.store import Entry, Op


@dataclasses.dataclass(frozen=True, slots=True)
class ChainToken:
    backend: str  # the backend the inner token belongs to ("cache" for the local copies)
    inner: str | None
    last: str | None  # the last name returned so far


def encode_token(token: ChainToken) -> str:
    raw = json.dumps([token.backend, token.inner, token.last]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_token(text: str) -> ChainToken:
    try:
        backend, inner, last = json.loads(base64.urlsafe_b64decode(text.encode()))
    except (ValueError, TypeError, binascii.Error):
        raise InvalidRequest("not a listing token of this mount") from None
    if not isinstance(backend, str) or not all(isinstance(v, str | None) for v in (inner, last)):
        raise InvalidRequest("not a listing token of this mount")
    return ChainToken(backend, inner, last)


def _b(name: str) -> bytes:
    return name.encode()


def name_of(key: str, prefix: str, delimiter: str | None) -> tuple[str, bool]:
    """What a listing of ``prefix`` shows for ``key``: (the key, False) or (a prefix, True)."""
    rest = key[len(prefix) :]
    if delimiter and delimiter in rest:
        return prefix + rest[: rest.index(delimiter) + 1], True
    return key, False


def after(page: ListPage, last: str | None) -> ListPage:
    """The page without names up to ``last`` (a listing restarted on another backend)."""
    if last is None:
        return page
    floor = _b(last)
    return ListPage(
        objects=[o for o in page.objects if _b(o.key) > floor],
        prefixes=[p for p in page.prefixes if _b(p) > floor],
        token=page.token,
    )


def last_name(page: ListPage) -> str | None:
    names = [o.key for o in page.objects] + page.prefixes
    return max(names, key=_b) if names else None


def overlay_info(entry: Entry) -> ObjectInfo:
    """How a pending PUT or COPY looks in a listing (no metadata, no etag yet)."""
    return ObjectInfo(key=entry.key, size=entry.size, mtime_ns=seconds_to_ns(entry.created))


def merge(
    page: ListPage,
    pending: Mapping[str, Entry],
    prefix: str,
    delimiter: str | None,
    low: str | None,
    high: str | None,
) -> tuple[ListPage, list[str]]:
    """Apply the pending entries under ``prefix`` to one page covering names in (low, high].

    Returns the merged page and the common prefixes of the page under which the journal
    deletes keys but adds none: they may now be empty, which only the backend can tell.
    """

    def in_range(name: str) -> bool:
        return (low is None or _b(name) > _b(low)) and (high is None or _b(name) <= _b(high))

    objects = {o.key: o for o in page.objects}
    prefixes = set(page.prefixes)
    adds_under: set[str] = set()
    deletes_under: set[str] = set()
    for key, entry in pending.items():
        name, is_prefix = name_of(key, prefix, delimiter)
        if is_prefix:
            (deletes_under if entry.op is Op.DELETE else adds_under).add(name)
            if entry.op is not Op.DELETE and in_range(name):
                prefixes.add(name)
        elif entry.op is Op.DELETE:
            objects.pop(key, None)
        elif key in objects or in_range(key):
            objects[key] = overlay_info(entry)
    suspects = sorted(p for p in page.prefixes if p in deletes_under and p not in adds_under)
    merged = ListPage(
        objects=[objects[k] for k in sorted(objects, key=_b)],
        prefixes=sorted(prefixes, key=_b),
        token=page.token,
    )
    return merged, suspects


def survivors(keys: Iterable[str], pending: Mapping[str, Entry]) -> bool:
    """Whether any of ``keys`` is not deleted by the journal."""
    for key in keys:
        entry = pending.get(key)
        if entry is None or entry.op is not Op.DELETE:
            return True
    return False


def without(page: ListPage, gone: Iterable[str]) -> ListPage:
    drop = set(gone)
    if not drop:
        return page
    return ListPage(page.objects, [p for p in page.prefixes if p not in drop], page.token)
