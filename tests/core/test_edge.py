"""The core's error edge is explicit: every operation of Filesystem is marked posix_op, and
only those convert backend errors (the collaborators' public methods raise them as they are)."""

from __future__ import annotations

import errno
import inspect
from pathlib import Path

import pytest
import trio

from storagefs.backends.base import TransientError
from storagefs.fs.core import Filesystem
from storagefs.fs.errors import FSError, is_posix_op
from storagefs.fs.inodes import ROOT_INODE
from tests.core.conftest import make_fs
from tests.fakes import MemoryBackend


def test_every_public_method_of_the_core_is_a_posix_op() -> None:
    public = [
        name
        for name, member in vars(Filesystem).items()
        if not name.startswith("_") and inspect.isfunction(member)
    ]
    assert "lookup" in public and "rename" in public
    assert [name for name in public if not is_posix_op(getattr(Filesystem, name))] == []


async def test_a_backend_error_leaves_an_op_as_fs_error_and_a_helper_as_itself(
    backend: MemoryBackend, tmp_path: Path, nursery: trio.Nursery
) -> None:
    fs = make_fs(backend, tmp_path)
    fs.attach(nursery)

    async def refuse(*args: object, **kwargs: object) -> object:
        raise TransientError("no answer")

    backend.list = refuse  # type: ignore[method-assign]
    with pytest.raises(FSError) as caught:
        await fs.opendir(ROOT_INODE)
    assert caught.value.errno == errno.EIO
    with pytest.raises(TransientError):
        await fs.lookup_path.listing("")
    fs.close()
