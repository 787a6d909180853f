"""What ``df`` shows for a mount: real figures, not a made-up size.

An object store has no fixed size, so "size" here is what the mount can account for: *used* is
the bytes and objects the mount knows of (the files and directories the kernel holds inodes
for), *free* is the room left in the write journal -- every write goes through it, so that is
exactly how much more can be written before writes fail with ENOSPC, even while the stores are
down. Without a journal (core tests) free is reported as 1 PiB, the figure s3fs and rclone use.
"""

from __future__ import annotations

from collections.abc import Iterable

from storagefs.fs.attrs import Attrs

BLOCK = 4096
NO_JOURNAL_ROOM = 1 << 50
FREE_INODES = 1 << 32  # object stores have no inode limit; df -i must not show 100 % used


def statvfs(known: Iterable[Attrs], room: int | None) -> dict[str, int]:
    used = objects = 0
    for attrs in known:
        objects += 1
        if not attrs.is_dir:
            used += attrs.size
    free = NO_JOURNAL_ROOM if room is None else max(room, 0)
    used_blocks = -(-used // BLOCK)
    free_blocks = free // BLOCK
    return {
        "f_bsize": BLOCK,
        "f_frsize": BLOCK,
        "f_blocks": used_blocks + free_blocks,
        "f_bfree": free_blocks,
        "f_bavail": free_blocks,
        "f_files": objects + FREE_INODES,
        "f_ffree": FREE_INODES,
        "f_favail": FREE_INODES,
        "f_namemax": 255,
    }
