"""Every file size at which the data path takes another road, in one place.

A change to a file of N bytes goes through different code below and above each of these: a
peeked small file or ranged reads, an inline journal entry or a content file, a single PUT or
a multipart upload, a single GET or parallel ranged GETs into the staging file. Issue #21 was
a loss that happened only above one of them (the download's multipart threshold), and the
tests of random writes used small files. So the tests read this module
(:func:`boundaries`) and exercise every operation on both sides of each size listed here: a
threshold added or moved here moves the tests with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storagefs.config import Settings

KIB = 1024
MIB = 1024 * KIB

# A cold lookup reads this many bytes with the attributes (one GET instead of a HEAD); files
# up to this size are then read without another request (fs/lookup.py, fs/known.py).
PEEK_BYTES = 64 * KIB
# Journal entries up to this size keep their content in SQLite, larger ones in a content file
# (journal/store.py; measured: inline 4 KiB PUT ~0.5 ms vs ~1.3 ms with a content file).
JOURNAL_INLINE_MAX = 64 * KIB
# Direct writes up to this size are also copied into the local cache (chain/writes.py).
SMALL_CACHE_COPY = 1 * MIB
# One ranged GET of a clean file's read path (Settings.read_chunk_size's default).
READ_CHUNK = 8 * MIB
# Single PUT/GET below, multipart upload and parallel ranged GETs (S3) or staged blocks
# (Azure) from here (Settings.multipart_threshold's default).
MULTIPART_THRESHOLD = 16 * MIB
# One part of a multipart upload and of a streamed write (Settings.multipart_chunksize).
MULTIPART_CHUNK = 16 * MIB
# A file unlinked while open only for reading keeps a local copy up to this size (fs/handles.py).
KEEP_OPEN_MAX = 64 * MIB


def boundaries(settings: Settings | None = None) -> dict[str, int]:
    """The sizes where the path of a file's data changes, for ``settings`` (the shipped
    defaults when None), by name. The ones that are settings come from ``settings``."""
    if settings is None:
        from storagefs.config import Settings

        settings = Settings()
    return {
        "peek_bytes": PEEK_BYTES,
        "journal_inline_max": JOURNAL_INLINE_MAX,
        "small_cache_copy": SMALL_CACHE_COPY,
        "read_chunk_size": settings.read_chunk_size,
        "multipart_threshold": settings.multipart_threshold,
        "multipart_chunksize": settings.multipart_chunksize,
        "keep_open_max": KEEP_OPEN_MAX,
    }
