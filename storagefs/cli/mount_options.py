"""The ``-o`` options of a mount, sorted into the three kinds a user can give in one list.

``storagefs mount -o ...``, ``mount -t fuse.storagefs ... -o ...`` and the fourth field of an
/etc/fstab line all carry one comma-separated list that mixes:

* options for the kernel and libfuse (``allow_other``, ``default_permissions``, ``ro``,
  ``noatime``...), passed to the FUSE mount as they are;
* storagefs's own settings: ``uid=``, ``gid=``, ``umask=``, ``file_mode=``, ``dir_mode=`` and
  any other setting by its name (``cache_dir=/var/cache/storagefs``, ``secondary=azure://c``),
  plus ``env_file=PATH``, a file of ``STORAGEFS_*``/``AWS_*`` variables to load first (a boot
  mount has no environment of its own);
* bookkeeping for mount(8), fstab and systemd (``_netdev``, ``nofail``, ``noauto``, ``user``,
  ``x-systemd.*``...), which mean nothing to a filesystem and are dropped, as mount.fuse3 does.

Anything else is an error naming the option: a typo must not mount with a default silently.
"""

from __future__ import annotations

import dataclasses
import grp
import pwd
from collections.abc import Iterable
from pathlib import Path

from storagefs.config import SECRET_FIELDS, Settings


class MountOptionError(ValueError):
    """A bad ``-o`` option; the message (one line) names it."""


# Flags libfuse 3 turns into mount(2) flags or FUSE mount options (lib/mount.c); a value-less
# option not listed here is a typo or a feature we do not offer (libfuse 3 refuses allow_root).
FUSE_FLAGS = frozenset(
    {
        "allow_other",
        "auto_unmount",
        "default_permissions",
        "ro",
        "rw",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "exec",
        "noexec",
        "sync",
        "async",
        "dirsync",
        "atime",
        "noatime",
    }
)

# What mount(8), fstab(5) and systemd.mount(5) read for themselves (mount.fuse3 drops the same).
IGNORED_FLAGS = frozenset(
    {"defaults", "auto", "noauto", "_netdev", "nofail", "user", "nouser", "users", "owner", "group"}
)
# Access-time variants libfuse 3 refuses; storagefs keeps no access times (atime is the mtime),
# so an fstab line that carries them over from another filesystem loses nothing.
IGNORED_ATIME_FLAGS = frozenset(
    {"relatime", "norelatime", "strictatime", "nostrictatime", "lazytime", "nolazytime"}
    | {"nodiratime", "diratime"}
)
IGNORED_PREFIXES = ("x-", "comment=", "user=")  # user=NAME: mount(8) names the mounting user

# Storagefs settings with a syntax of their own: ids by number or name, modes in octal.
OWNER_OPTIONS = frozenset({"uid", "gid"})
MODE_OPTIONS = frozenset({"umask", "file_mode", "dir_mode"})
ENV_FILE = "env_file"


@dataclasses.dataclass
class MountOptions:
    fuse: list[str] = dataclasses.field(default_factory=list)
    settings: dict[str, object] = dataclasses.field(default_factory=dict)
    env_file: Path | None = None
    ignored: list[str] = dataclasses.field(default_factory=list)

    @property
    def read_only(self) -> bool:
        return "ro" in self.fuse


def split(groups: Iterable[str]) -> list[str]:
    """``("ro,allow_other", "uid=1")`` -> ``["ro", "allow_other", "uid=1"]``."""
    return [o.strip() for group in groups for o in group.split(",") if o.strip()]


def parse(groups: Iterable[str]) -> MountOptions:
    """Sort the options of one or more ``-o`` arguments; MountOptionError names a bad one."""
    result = MountOptions()
    for opt in split(groups):
        name, has_value, value = opt.partition("=")
        key = name.replace("-", "_")
        if opt in IGNORED_FLAGS | IGNORED_ATIME_FLAGS or opt.startswith(IGNORED_PREFIXES):
            result.ignored.append(opt)
        elif opt in FUSE_FLAGS:
            result.fuse.append(opt)
        elif not has_value:
            raise MountOptionError(_unknown(opt))
        elif key in OWNER_OPTIONS:
            result.settings[key] = _owner(key, value)
        elif key in MODE_OPTIONS:
            result.settings[key] = _mode(key, value)
        elif key == ENV_FILE:
            result.env_file = Path(value)
        elif key in SECRET_FIELDS:
            raise MountOptionError(
                f"mount option {name!r} would show the secret to every user (fstab and"
                f" /proc/mounts are world-readable); put STORAGEFS_{key.upper()} in env_file="
            )
        elif key in Settings.model_fields:
            result.settings[key] = value
        else:
            raise MountOptionError(_unknown(opt))
    return result


def _unknown(opt: str) -> str:
    return (
        f"unknown mount option {opt!r} (FUSE options, storagefs settings such as uid= or"
        " cache_dir=, and fstab/systemd options are accepted; see docs/MOUNTING.md)"
    )


def _octal(name: str, value: str) -> int:
    try:
        number = int(value, 8)
    except ValueError:
        raise MountOptionError(f"mount option {name}={value!r}: expected an octal mode") from None
    if number < 0:
        raise MountOptionError(f"mount option {name}={value!r}: must not be negative")
    return number


def _owner(name: str, value: str) -> int:
    """A uid/gid by number, or by user/group name as mount options of other filesystems take."""
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid if name == "uid" else grp.getgrnam(value).gr_gid
    except KeyError:
        what = "user" if name == "uid" else "group"
        raise MountOptionError(f"mount option {name}={value!r}: no such {what}") from None


def _mode(name: str, value: str) -> int:
    mode = _octal(name, value)
    limit = 0o777 if name == "umask" else 0o7777
    if mode > limit:
        raise MountOptionError(f"mount option {name}={value!r}: must be at most {limit:o}")
    return mode
