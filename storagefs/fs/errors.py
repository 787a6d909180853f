"""The core's one error type, and the conversion of everything else into it at the core's edge.

Every failure leaves :class:`storagefs.fs.core.Filesystem` as an :class:`FSError` carrying the
errno the kernel should see and the level it deserves in the log: a missing name is routine
(DEBUG), a store refusing or not answering is worth a WARNING. Backend errors and local OS
errors are converted here, once, so the FUSE adapter knows nothing of backends.
"""

from __future__ import annotations

import errno
import logging

from storagefs.backends.base import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    Conflict,
    InvalidRequest,
    MetadataTooLarge,
    NoSpace,
    NotFound,
    PermissionDenied,
    TransientError,
)


class FSError(Exception):
    """A POSIX failure the kernel should see as ``errno``; ``level``: how loudly to log it
    (DEBUG: an answer like any other, e.g. ENOENT or EEXIST)."""

    def __init__(self, err: int, message: str = "", *, level: int = logging.DEBUG) -> None:
        super().__init__(message or errno.errorcode.get(err, str(err)))
        self.errno = err
        self.level = level


_BY_TYPE: list[tuple[type[BackendError], int, int]] = [
    (NotFound, errno.ENOENT, logging.DEBUG),
    (PermissionDenied, errno.EACCES, logging.WARNING),
    (NoSpace, errno.ENOSPC, logging.WARNING),
    (Conflict, errno.EIO, logging.WARNING),
    (MetadataTooLarge, errno.ENOSPC, logging.WARNING),  # before InvalidRequest, its base
    (InvalidRequest, errno.EINVAL, logging.WARNING),
    (BackendUnavailable, errno.EIO, logging.WARNING),
    (TransientError, errno.EIO, logging.WARNING),
    (ConfigurationError, errno.EIO, logging.WARNING),
]


def errno_for(exc: BaseException) -> int:
    """The errno a failed operation reports; EIO for anything not more specific."""
    if isinstance(exc, FSError | BackendError | OSError):
        return as_fs_error(exc).errno
    return errno.EIO


def as_fs_error(exc: FSError | BackendError | OSError) -> FSError:
    """``exc`` as the core's error: its errno and log level, its message kept."""
    if isinstance(exc, FSError):
        return exc
    if isinstance(exc, OSError):  # the local disk (staging files): its own errno
        return FSError(exc.errno or errno.EIO, str(exc), level=logging.WARNING)
    for kind, err, level in _BY_TYPE:
        if isinstance(exc, kind):
            return FSError(err, f"{type(exc).__name__}: {exc}", level=level)
    return FSError(errno.EIO, f"{type(exc).__name__}: {exc}", level=logging.WARNING)


def first_failure(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (concurrent work inside the core), else ``exc``."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
