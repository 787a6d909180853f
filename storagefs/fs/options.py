"""The core's settings (FsOptions): what the daemon (daemon/mount.py) and the tests give
:func:`storagefs.fs.core.build_filesystem`. Plain data; every fs/ module may read them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from storagefs import sizes


@dataclasses.dataclass(frozen=True)
class FsOptions:
    staging_dir: Path
    metadata_ttl: float = 5.0
    read_only: bool = False
    read_chunk_size: int = sizes.READ_CHUNK
    readahead_chunks: int = 8
    # Read chunks held or in flight across all open files together (see ReadBudget).
    read_budget: int = 128 * 1024 * 1024
    # The longest key (below the URLs' prefixes) every remote can store; see key_room().
    max_key_bytes: int = 1024
    # Owner and modes of objects that carry no stored attributes (and of the root).
    uid: int = dataclasses.field(default_factory=os.getuid)
    gid: int = dataclasses.field(default_factory=os.getgid)
    file_mode: int = 0o644
    dir_mode: int = 0o755
    metadata_cache: Path | None = None  # None: in memory only
    # Listings with more never-seen entries than this show listing attributes (size, store
    # mtime, default mode) instead of paying one HEAD per entry; see docs/SEMANTICS.md.
    listing_head_limit: int = 256
    listing_head_parallelism: int = 32
    # A cold lookup reads this many bytes with the attributes; files up to this size are then
    # read without another request.
    peek_bytes: int = sizes.PEEK_BYTES
    # Files written sequentially are uploaded in parts of this size while they are written
    # (storagefs/fs/streaming.py), at most stream_parallelism parts at a time in all.
    stream_part_size: int = sizes.MULTIPART_CHUNK
    stream_parallelism: int = 8
    # Bytes of user metadata (names and values) every remote takes on one object: S3 2 KiB,
    # Azure 8 KiB; None: no limit known (a local directory: its filesystem's own answer).
    max_metadata_bytes: int | None = None
