"""Assemble the backend stack the filesystem core talks to, from the settings."""

from __future__ import annotations

from pathlib import Path

from storagefs.backends import backend_from_url
from storagefs.backends.base import Backend
from storagefs.config import Settings, default_data_dir


def build_stack(settings: Settings, cache: Path) -> Backend:
    if settings.primary is None:
        # The embedded default: a private directory, so a first mount works with no cloud.
        default_data_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    return backend_from_url(settings.resolved_primary(), settings, name="primary")
