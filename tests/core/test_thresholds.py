"""Changes in place to existing files of every size on both sides of the core's thresholds,
against a model, over a store whose downloads replace the destination file.

Issue #21: above the S3 download's multipart threshold, the download renamed a temporary
file over the staging file, so the open handle wrote into an unlinked file and the upload
sent the unchanged download; every change vanished with success returned, and the tests of
random writes used small files only. The backends now download in place (the contract suite
holds them to it); this suite holds the *core* to never depend on that, with a store that
always replaces the file, and to be right on both sides of each size it switches paths at
(the sizes are FsOptions here, scaled down so that hypothesis can try many cases).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import trio
from hypothesis import HealthCheck, given, settings

from storagefs.backends.base import ObjectInfo
from storagefs.fs.core import Filesystem, FsOptions, build_filesystem
from storagefs.fs.inodes import ROOT_INODE
from tests.fakes import MemoryBackend

# The core's own size switches (storagefs/sizes.py lists them at their shipped values).
OPTIONS = {"peek_bytes": 4096, "read_chunk_size": 64 * 1024, "stream_part_size": 128 * 1024}
SIZES = sorted({v + d for v in OPTIONS.values() for d in (-1, 0, 1)} | {0, 1})


class ReplacingDownloads(MemoryBackend):
    """Downloads as s3transfer does given a file name: into a temporary file renamed over
    ``dest``. Allowed to the core by nothing, but it must not lose a change if it happens."""

    async def download(self, key: str, dest: str) -> ObjectInfo:
        tmp = dest + ".part"
        info = await super().download(key, tmp)
        Path(tmp).replace(dest)
        return info


OPS = ("overwrite", "pwrite_end", "append", "hole", "shrink", "grow", "trunc_write")


@st.composite
def cases(draw: st.DrawFn) -> tuple[int, str, int, int]:
    """(size, operation, offset, length): offsets land near a threshold or anywhere."""
    size = draw(st.sampled_from(SIZES))
    op = draw(st.sampled_from(OPS))
    anchors = [0, size, *(v + d for v in OPTIONS.values() for d in (-1, 0, 1))]
    offset = draw(st.one_of(st.sampled_from(anchors), st.integers(0, max(size, 1))))
    length = draw(st.sampled_from([1, 4095, 4096, 70_000]))
    return size, op, offset, length


def apply_to_model(model: bytearray, op: str, offset: int, length: int, data: bytes) -> None:
    def put(at: int, chunk: bytes) -> None:
        if at > len(model):
            model.extend(bytes(at - len(model)))
        model[at : at + len(chunk)] = chunk

    if op in ("overwrite", "hole"):
        put(offset, data)
    elif op == "pwrite_end":
        put(max(len(model) - length // 2, 0), data)
    elif op == "append":
        put(len(model), data)
    elif op == "shrink":
        del model[min(offset, len(model)) :]
    elif op == "grow":
        model.extend(bytes(length))
    elif op == "trunc_write":
        del model[:]
        put(0, data)


async def apply_to_fs(
    fs: Filesystem, ino: int, size: int, op: str, offset: int, length: int, data: bytes
) -> None:
    if op == "shrink":
        await fs.setattr(ino, size=min(offset, size))
        return
    if op == "grow":
        await fs.setattr(ino, size=size + length)
        return
    flags = os.O_RDWR | (os.O_TRUNC if op == "trunc_write" else 0)
    fh, _ = await fs.open(ino, flags)
    try:
        at = {
            "overwrite": offset,
            "hole": offset,
            "pwrite_end": max(size - length // 2, 0),
            "append": size,
            "trunc_write": 0,
        }[op]
        if op == "hole":
            at = size + length + offset  # past the end: the gap reads as zeros
        await fs.write(fh, at, data)
        await fs.flush(fh)
    finally:
        await fs.release(fh)


async def read_all(fs: Filesystem, ino: int) -> bytes:
    fh, _ = await fs.open(ino, os.O_RDONLY)
    out = bytearray()
    try:
        while chunk := await fs.read(fh, len(out), 1 << 20):
            out += chunk
    finally:
        await fs.release(fh)
    return bytes(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), seed=st.integers(0, 2**32 - 1))
def test_a_change_in_place_reaches_the_store_at_any_size(
    case: tuple[int, str, int, int], seed: int
) -> None:
    size, op, offset, length = case
    original = os.urandom(size) if size else b""
    data = seed.to_bytes(4, "little") * (length // 4) + b"x" * (length % 4)
    model = bytearray(original)
    if op == "hole":
        apply_to_model(model, op, size + length + offset, length, data)
    else:
        apply_to_model(model, op, offset, length, data)

    async def run() -> None:
        tmp = Path(tempfile.mkdtemp())
        backend = ReplacingDownloads()
        await backend.write_bytes("f", original, {})  # by another tool: no attributes
        fs = build_filesystem(backend, FsOptions(staging_dir=tmp / "staging", **OPTIONS))
        try:
            async with trio.open_nursery() as nursery:
                fs.attach(nursery)
                ino = (await fs.lookup(ROOT_INODE, "f")).ino
                await apply_to_fs(fs, ino, size, op, offset, length, data)
                stored = backend.objects["f"][0]
                assert len(stored) == len(model), f"{op}: store holds {len(stored)} bytes"
                assert stored == bytes(model), f"{op} at {offset}: the store differs"
                assert await read_all(fs, ino) == bytes(model), f"{op}: the mount differs"
                nursery.cancel_scope.cancel()
        finally:
            fs.close()
            shutil.rmtree(tmp, ignore_errors=True)

    trio.run(run)
