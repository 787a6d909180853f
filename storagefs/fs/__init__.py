"""The filesystem core: POSIX semantics over a Backend. Imports no pyfuse3, so it is tested
without a mount (tests/core); storagefs/daemon/fuse_ops.py is the thin adapter the kernel
talks to."""

from storagefs.fs.core import Filesystem
from storagefs.fs.errors import FSError

__all__ = ["FSError", "Filesystem"]
