"""Backends by URL: ``file:///abs/path``, ``s3://bucket[/prefix]``, ``azure://container[/prefix]``."""

from __future__ import annotations

import importlib
import ipaddress
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from storagefs.backends.base import Backend, ConfigurationError
from storagefs.config import Settings, default_data_dir

__all__ = ["backend_from_url"]

# S3's rules for new buckets (general purpose): 3-63 of [a-z0-9.-], letter or digit at both
# ends, no "..", not an IP address, no reserved prefixes/suffixes.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def backend_from_url(url: str, settings: Settings, name: str | None = None) -> Backend:
    """The backend a URL names (not yet opened). ConfigurationError, one line, if malformed."""
    parts = urlsplit(url)
    shown = _redact(url)
    if parts.query or parts.fragment:
        raise ConfigurationError(f"backend URL {shown}: query strings and fragments are not used")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            f"backend URL {shown}: credentials do not belong in the URL;"
            " use the environment (AWS_*, STORAGEFS_AZURE_*)"
        )
    scheme = parts.scheme.lower()
    if scheme == "file":
        from storagefs.backends.local import LocalBackend

        return LocalBackend(_local_root(parts.netloc, parts.path, shown), name=name or "local")
    if scheme == "s3":
        from storagefs.backends.s3 import S3Backend

        bucket = _bucket(parts.netloc, shown)
        return S3Backend(bucket, parts.path.strip("/"), settings, name=name or "s3")
    if scheme == "azure":
        container = parts.netloc
        if not container:
            raise ConfigurationError(f"backend URL {shown}: no container name")
        backend: Backend = _azure_backend_class(shown)(container, parts.path.strip("/"), settings)
        if name:
            backend.name = name
        return backend
    raise ConfigurationError(
        f"backend URL {shown}: unknown scheme {parts.scheme or '(none)'!r};"
        " use file:///path, s3://bucket/prefix or azure://container/prefix"
    )


def _azure_backend_class(shown: str) -> Any:
    # storagefs/backends/azure.py (AzureBackend(container, prefix, settings)) is written
    # separately; until it exists the URL is refused with a clear line, not an ImportError.
    # Imported by name so this module type-checks with and without it.
    try:
        module = importlib.import_module("storagefs.backends.azure")
    except ModuleNotFoundError as exc:
        if exc.name != "storagefs.backends.azure":
            raise
        raise ConfigurationError(f"backend URL {shown}: azure backend not available yet") from None
    return module.AzureBackend


def _local_root(netloc: str, path: str, shown: str) -> Path:
    if netloc not in ("", "localhost"):
        raise ConfigurationError(
            f"backend URL {shown}: a file URL needs an absolute path (file:///abs/path)"
        )
    root = Path(unquote(path))
    if not path or not root.is_absolute():
        raise ConfigurationError(
            f"backend URL {shown}: a file URL needs an absolute path (file:///abs/path)"
        )
    if root == default_data_dir():
        # The mount's own default (no STORAGEFS_PRIMARY): ours to create. Any other path
        # must already exist, so a typo cannot silently become an empty bucket.
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigurationError(f"cannot create {root}: {exc.strerror}") from None
    return root


def _bucket(netloc: str, shown: str) -> str:
    bucket = netloc
    if not bucket:
        raise ConfigurationError(f"backend URL {shown}: no bucket name (s3://bucket/prefix)")
    problem = None
    if not _BUCKET.match(bucket):
        problem = "3-63 characters of a-z, 0-9, '.' and '-', starting and ending alphanumeric"
    elif ".." in bucket:
        problem = "no two adjacent periods"
    elif _is_ip(bucket):
        problem = "not formatted as an IP address"
    elif bucket.startswith(_BUCKET_RESERVED_PREFIXES) or bucket.endswith(_BUCKET_RESERVED_SUFFIXES):
        problem = "not a reserved prefix or suffix"
    if problem:
        raise ConfigurationError(
            f"backend URL {shown}: {bucket!r} is not a valid S3 bucket name ({problem})"
        )
    return bucket


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _redact(url: str) -> str:
    # Never echo a password someone put into the URL.
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1***@", url)


MAX_KEY_BYTES = 1024  # S3's and Azure Blob's limit on a key (blob name), prefix included
_PATH_MAX = 4096  # Linux, terminating NUL included


def key_room(url: str) -> int:
    """Bytes a key below ``url`` may have: 1,024 minus the prefix on S3 and Azure; PATH_MAX
    minus the root (and its slash and the terminating NUL) in a local directory."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.scheme == "file":
        return _PATH_MAX - len(path.rstrip("/").encode()) - 2
    prefix = path.strip("/")
    return MAX_KEY_BYTES - (len(prefix.encode()) + 1 if prefix else 0)


# User metadata (names and values together) one object may carry: S3's documented 2 KiB for
# user-defined metadata, Azure Blob's 8 KiB for all metadata of a blob.
_METADATA_ROOM = {"s3": 2 * 1024, "azure": 8 * 1024}


def metadata_room(url: str) -> int | None:
    """Bytes of user metadata an object below ``url`` can carry; None for a local directory,
    whose filesystem answers for itself (ENOSPC from setxattr, see backends/local.py)."""
    return _METADATA_ROOM.get(urlsplit(url).scheme.lower())
