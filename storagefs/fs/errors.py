"""The core's one error type, and the conversion of everything else into it at the core's edge.

Every failure leaves :class:`storagefs.fs.core.Filesystem` as an :class:`FSError` carrying the
errno the kernel should see and the level it deserves in the log: a missing name is routine
(DEBUG), a store refusing or not answering is worth a WARNING. Backend errors and local OS
errors are converted here, once, so the FUSE adapter knows nothing of backends.

The edge is explicit: each operation of ``Filesystem`` the adapter (or the daemon) calls is
marked :func:`posix_op`. The collaborators (``known``, ``lookup``, ``handles``, ``links``) are
inside the edge: their public methods raise backend errors as they are, for the operation
that called them to convert.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar, cast

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


P = ParamSpec("P")
R = TypeVar("R")

_CONVERTED = (FSError, BackendError, OSError)


def _converted(exc: BaseException) -> FSError | None:
    leaf = first_failure(exc)
    return as_fs_error(leaf) if isinstance(leaf, _CONVERTED) else None


@contextlib.contextmanager
def _at_the_edge() -> Iterator[None]:
    """FSError for what leaves the core as a backend error, an OSError or a group of them."""
    try:
        yield
    except FSError:
        raise
    except (*_CONVERTED, BaseExceptionGroup) as exc:
        converted = _converted(exc)
        if converted is None:
            raise
        raise converted from exc


def posix_op(fn: Callable[P, R]) -> Callable[P, R]:
    """Mark ``fn`` as an operation at the core's edge: it raises FSError for backend errors,
    local OS errors (staging files) and groups of them (the first one counts); anything
    else is a bug and passes through for the adapter to log."""
    wrapped: Callable[..., Any]
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def call_async(*args: Any, **kwargs: Any) -> Any:
            with _at_the_edge():
                return await fn(*args, **kwargs)

        wrapped = call_async
    else:

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with _at_the_edge():
                return fn(*args, **kwargs)

        wrapped = call
    setattr(wrapped, "__posix_op__", True)  # noqa: B010 (a marker for is_posix_op)
    return cast(Callable[P, R], wrapped)


def is_posix_op(fn: object) -> bool:
    return getattr(fn, "__posix_op__", False) is True
