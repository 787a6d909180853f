"""``mount.fuse.storagefs``: the helper mount(8) runs for ``-t fuse.storagefs`` and fstab lines.

mount(8) looks for ``/sbin/mount.<type>`` and calls it as::

    mount.fuse.storagefs SOURCE MOUNTPOINT [-s] [-f] [-n] [-v] [-o OPTIONS] [-t TYPE]

SOURCE is the primary backend URL (``s3://bucket/prefix``, ``azure://container``,
``file:///srv/data``), or ``storagefs`` to take it from the settings (``env_file=``, the
environment). The helper turns the call into ``storagefs mount MOUNTPOINT --primary SOURCE -o
OPTIONS``, which starts the daemon, waits until the mount is live and exits, as mount(8)
expects of a helper. ``scripts/install --system`` links it into /sbin.

Without it, mount(8) falls back to mount.fuse3, which runs ``storagefs SOURCE MOUNTPOINT -o
OPTIONS`` (the ``storagefs#SOURCE`` form of type ``fuse`` does the same): the ``storagefs``
command takes that form too (:func:`storagefs.cli.main`), through :func:`mount_args`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence

from storagefs import exit_codes

# Sources that mean "the configured primary", as the fs_spec of an fstab line must say something.
CONFIGURED_SOURCES = frozenset({"storagefs", "none", ""})
USAGE = "usage: mount.fuse.storagefs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]"


class HelperUsageError(ValueError):
    pass


@dataclasses.dataclass
class HelperCall:
    source: str
    mountpoint: str
    options: list[str]
    fake: bool = False  # -f: mount(8) --fake, do everything but mount


def parse_args(argv: Sequence[str]) -> HelperCall:
    """The arguments mount(8) passes (util-linux, libmount's helper convention)."""
    positional: list[str] = []
    options: list[str] = []
    fake = False
    args = iter(argv)
    for arg in args:
        if arg in ("-o", "-t"):
            value = next(args, None)
            if value is None:
                raise HelperUsageError(f"{arg} needs a value")
            if arg == "-o":
                options.append(value)
        elif arg.startswith("-o") and len(arg) > 2:
            options.append(arg[2:])
        elif arg.startswith("-") and len(arg) > 1:
            # -s (sloppy), -n (no mtab), -v (verbose): nothing to do for a FUSE mount
            fake = fake or "f" in arg[1:]
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise HelperUsageError("expected SOURCE and MOUNTPOINT")
    return HelperCall(positional[0], positional[1], options, fake)


def storagefs_argv(call: HelperCall) -> list[str]:
    """The ``storagefs mount`` command line for a helper call."""
    return [sys.executable, "-m", "storagefs", *mount_args(call)]


def mount_args(call: HelperCall) -> list[str]:
    """``mount MOUNTPOINT [--primary SOURCE] [-o OPTIONS]...``: the CLI's arguments."""
    args = ["mount", call.mountpoint]
    if call.source not in CONFIGURED_SOURCES:
        if "://" not in call.source:
            raise HelperUsageError(
                f"source {call.source!r} is not a backend URL (s3://bucket, azure://container,"
                " file:///path) nor 'storagefs' (the configured one)"
            )
        args += ["--primary", call.source]
    for group in call.options:
        args += ["-o", group]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        call = parse_args(sys.argv[1:] if argv is None else argv)
        command = storagefs_argv(call)
    except HelperUsageError as exc:
        print(f"storagefs: error: {exc}\n{USAGE}", file=sys.stderr)
        return exit_codes.USAGE
    if call.fake:
        return exit_codes.OK
    os.execv(command[0], command)  # the CLI's exit code and messages are mount(8)'s answer


if __name__ == "__main__":
    sys.exit(main())
