"""Core errors carry an errno; backend errors are translated in one place."""

from __future__ import annotations

import errno

from storagefs.backends.base import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    Conflict,
    InvalidRequest,
    NoSpace,
    NotFound,
    PermissionDenied,
    TransientError,
)


class FSError(Exception):
    """A POSIX failure the kernel should see as ``errno``."""

    def __init__(self, err: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(err, str(err)))
        self.errno = err


_BY_TYPE: list[tuple[type[BackendError], int]] = [
    (NotFound, errno.ENOENT),
    (PermissionDenied, errno.EACCES),
    (NoSpace, errno.ENOSPC),
    (Conflict, errno.EIO),
    (InvalidRequest, errno.EINVAL),
    (BackendUnavailable, errno.EIO),
    (TransientError, errno.EIO),
    (ConfigurationError, errno.EIO),
]


def errno_for(exc: BaseException) -> int:
    """The errno a failed operation reports; EIO for anything not more specific."""
    if isinstance(exc, FSError):
        return exc.errno
    for kind, err in _BY_TYPE:
        if isinstance(exc, kind):
            return err
    return errno.EIO
