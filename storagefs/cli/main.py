"""The ``storagefs`` command: mount, unmount (and more as the daemon grows).

Every user error (bad setting, bad URL, missing bucket, unreachable endpoint, bad mountpoint)
ends in one line on stderr starting with ``storagefs: error:`` and exit code 2.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from storagefs import exit_codes
from storagefs.backends.base import BackendError
from storagefs.config import ConfigError, Settings, load_settings
from storagefs.mounts_table import is_mounted

MOUNT_WAIT_SECONDS = 30.0


def fail(message: str, code: int = exit_codes.USAGE) -> NoReturn:
    click.echo(f"storagefs: error: {message}", err=True)
    sys.exit(code)


def check_mountpoint(path: Path) -> Path:
    try:
        if is_mounted(path):
            fail(f"{path} is already mounted (unmount it first: storagefs unmount {path})")
        if not path.exists():
            fail(f"mountpoint {path} does not exist (create it with: mkdir -p {path})")
        if not path.is_dir():
            fail(f"mountpoint {path} is not a directory")
    except OSError as exc:
        fail(f"cannot use mountpoint {path}: {exc.strerror}")
    return path.resolve()


def settings_from(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        fail(str(exc))


_ARGV = "storagefs_argv"  # the key of the raw arguments in click's context.meta


class _Commands(click.Group):
    """The commands, plus the form mount.fuse3 runs (``storagefs SOURCE MOUNTPOINT -o OPTS``).

    Click's usage errors (a missing argument, a bad flag value) come in the same one-line
    ``storagefs: error:`` form as every other user error. Exit 2, except for ``health``,
    whose 2 means "down": there a usage error exits 64 (``exit_codes.HEALTH_USAGE``) so a
    probe cannot take a typo for an outage."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and ("://" in args[0] or args[0] == "storagefs") and args[0] not in self.commands:
            from storagefs.cli import mount_helper

            try:
                args = mount_helper.mount_args(mount_helper.parse_args(args))
            except mount_helper.HelperUsageError as exc:
                fail(str(exc))
            ctx.meta[_ARGV] = args  # what a background mount passes on to its daemon
        return super().parse_args(ctx, args)

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # plain `storagefs`: the help
            click.echo(exc.format_message(), err=True)
            sys.exit(2)
        except click.UsageError as exc:
            path = exc.ctx.command_path if exc.ctx is not None else "storagefs"
            in_health = exc.ctx is not None and exc.ctx.info_name == "health"
            usage = exit_codes.HEALTH_USAGE if in_health else exit_codes.USAGE
            fail(f"{exc.format_message()} (see {path} --help)", usage)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            click.echo("storagefs: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="storagefs", prog_name="storagefs")
def main() -> None:
    """Mount object storage (S3, Azure Blob, a local directory) as a directory."""


@main.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground.")
@click.option(
    "-o",
    "options",
    multiple=True,
    help="Mount options, comma separated: FUSE ones (ro, allow_other, default_permissions),"
    " storagefs settings (uid=, gid=, umask=, file_mode=, dir_mode=, cache_dir=, env_file=...),"
    " fstab/systemd ones (_netdev, nofail, x-systemd.*: ignored). See docs/MOUNTING.md.",
)
@click.option("--primary", help="Primary backend URL (default: $STORAGEFS_PRIMARY).")
@click.option("--secondary", help="Secondary backend URL (default: $STORAGEFS_SECONDARY).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Staging, cache, journal.")
@click.option("--read-only", is_flag=True, default=None, help="Mount read-only.")
@click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
@click.option("--log-format", help="text or json.")
def mount(
    mountpoint: Path,
    foreground: bool,
    options: tuple[str, ...],
    primary: str | None,
    secondary: str | None,
    cache_dir: Path | None,
    read_only: bool | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Mount the configured storage on MOUNTPOINT."""
    from storagefs.cli import mount_options

    try:
        opts = mount_options.parse(options)
    except mount_options.MountOptionError as exc:
        fail(str(exc))
    if opts.env_file is not None:
        _load_env_file(opts.env_file)
    flags = {
        "primary": primary,
        "secondary": secondary,
        "cache_dir": cache_dir,
        "read_only": read_only,
        "log_level": log_level,
        "log_format": log_format,
    }
    given = {name: value for name, value in flags.items() if value is not None}
    settings = settings_from(**{**opts.settings, **given})  # a flag wins over an -o setting
    target = check_mountpoint(mountpoint)
    if foreground:
        _run_foreground(settings, target, opts.fuse)
    else:
        _run_background(settings, target)


def _load_env_file(path: Path) -> None:
    """Variables of ``env_file=`` for settings and the SDKs; the environment wins over it."""
    import dotenv

    if not path.is_file():
        fail(f"env_file {path} does not exist or is not a file")
    try:
        dotenv.load_dotenv(path, override=False)
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read env_file {path}: {exc}")


def _run_foreground(settings: Settings, mountpoint: Path, fuse_opts: list[str]) -> None:
    import trio  # imported here: `storagefs --help` and the parent of a daemon stay light

    from storagefs.daemon.mount import serve
    from storagefs.observability.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    try:
        trio.run(serve, settings, mountpoint, fuse_opts)
    except (BackendError, ConfigError) as exc:
        fail(str(exc))
    except RuntimeError as exc:  # pyfuse3.init: the kernel refused the mount
        fail(f"cannot mount {mountpoint}: {exc}")
    except KeyboardInterrupt:
        pass


def _run_background(settings: Settings, mountpoint: Path) -> None:
    """Start a foreground daemon in its own session and wait until the mount is live.

    A child process rather than fork(): trio and the SDKs start threads, which fork() does not
    carry over safely. The child's errors are relayed so the user still gets one clear line."""
    from storagefs.observability.logs import daemon_log_path

    try:
        log_path = daemon_log_path(settings.cache_dir, mountpoint)  # --cache-dir included
    except OSError as exc:
        fail(f"cannot use cache directory {settings.cache_dir}: {exc.strerror}")
    start = log_path.stat().st_size if log_path.exists() else 0  # this run's lines follow
    given = click.get_current_context().meta.get(_ARGV, sys.argv[1:])
    args = [sys.executable, "-m", "storagefs", *given, "--foreground"]
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    deadline = time.monotonic() + MOUNT_WAIT_SECONDS
    while time.monotonic() < deadline:
        if is_mounted(mountpoint):
            click.echo(f"storagefs: mounted on {mountpoint} (pid {child.pid}, log {log_path})")
            return
        code = child.poll()
        if code is not None:
            fail(_last_error(log_path, start) or f"the daemon exited with code {code}", code or 1)
        time.sleep(0.05)
    child.terminate()
    fail(f"the mount did not appear within {MOUNT_WAIT_SECONDS:.0f} s; see {log_path}")


def _last_error(log_path: Path, start: int = 0) -> str | None:
    """The daemon's error line from this run of the log, with libfuse's own reason when it
    printed one (libfuse writes "fuse: ..." to stderr, e.g. for an unknown mount option)."""
    try:
        with open(log_path, "rb") as log_file:
            log_file.seek(start)
            lines = log_file.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    fuse_said = [line for line in lines if line.startswith("fuse: ")]
    for line in reversed(lines[-50:]):
        if line.startswith("storagefs: error: "):
            error = line[len("storagefs: error: ") :]
            return f"{error} ({fuse_said[-1]})" if fuse_said else error
    return None


def _wait_drained(mountpoint: Path, timeout: float | None, quiet: bool = False) -> bool:
    """Poll the mount's journal.json until nothing is pending; False when ``timeout`` ran out."""
    from storagefs.cli.probe import read_health

    deadline = None if timeout is None else time.monotonic() + timeout
    shown = None
    while True:
        journal = read_health(mountpoint, timeout=10.0).journal  # ProbeError: not answering
        pending = int(journal.get("pending_entries", 0) or 0)
        if pending == 0:
            return True
        if not quiet and pending != shown:
            size = int(journal.get("pending_bytes", 0) or 0)
            click.echo(f"storagefs: {pending} change(s), {size} bytes, waiting for the backends")
            shown = pending
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


@main.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    help="Give up after this many seconds (default: never).",
)
def flush(mountpoint: Path, timeout: float | None) -> None:
    """Wait until every journaled change has reached every backend.

    Exit code 0 when the journal is drained, 1 when the timeout ran out first."""
    from storagefs.cli.probe import ProbeError

    if not is_mounted(mountpoint):
        fail(f"{mountpoint} is not mounted")
    try:
        drained = _wait_drained(mountpoint, timeout)
    except ProbeError as exc:
        fail(str(exc))
    if drained:
        click.echo("storagefs: journal drained")
        return
    click.echo("storagefs: timed out; changes are still pending (they stay journaled)", err=True)
    sys.exit(exit_codes.PARTIAL)


@main.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--no-wait", is_flag=True, help="Do not wait for the journal to drain first.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Seconds to wait for the journal to drain before unmounting anyway.",
)
def unmount(mountpoint: Path, no_wait: bool, timeout: float) -> None:
    """Unmount MOUNTPOINT, after the journal has drained (unless --no-wait).

    Changes still journaled when it unmounts are not lost: they are replayed by the next
    mount with the same cache directory."""
    from storagefs.cli.probe import ProbeError

    if not is_mounted(mountpoint):
        fail(f"{mountpoint} is not mounted")
    drained = True
    if not no_wait:
        try:
            drained = _wait_drained(mountpoint, timeout)
        except ProbeError as exc:  # a dead or hung daemon: unmounting is all that is left
            click.echo(f"storagefs: {exc}; unmounting without waiting", err=True)
    if not drained:
        click.echo(
            "storagefs: changes are still pending after the timeout; they stay in the journal"
            " and are replayed by the next mount",
            err=True,
        )
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        fail("fusermount3 not found (install the fuse3 package)")
    result = subprocess.run([tool, "-u", str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0 and "not connected" in result.stderr:
        # The daemon died: only a lazy unmount removes a dead FUSE mount.
        result = subprocess.run([tool, "-u", "-z", str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0:
        fail(_unmount_failure(mountpoint, result.stderr.strip() or f"{tool} failed"), 1)
    click.echo(f"storagefs: unmounted {mountpoint}")


def _unmount_failure(mountpoint: Path, reason: str) -> str:
    """fusermount's reason, plus who holds the mount when it is busy."""
    if "busy" not in reason.lower():
        return reason
    from storagefs.cli.holders import describe

    return f"{mountpoint} is busy: {describe(mountpoint)}"


@main.command()
@click.argument("mountpoint", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the raw status.json.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to wait for the mount to answer.",
)
@click.option(
    "--degraded-ok", is_flag=True, help="Exit 0 when degraded too (for systemd and probes)."
)
def health(mountpoint: Path | None, as_json: bool, timeout: float, degraded_ok: bool) -> None:
    """Show the health of a mount (default: the only storagefs mount).

    Exit code 0 ok, 1 degraded (0 with --degraded-ok), 2 down or not answering (or no
    storagefs mount at all), 64 a usage error (several mounts and none named, a bad flag):
    not a verdict.
    """
    from storagefs.cli import probe

    target = mountpoint if mountpoint is not None else _only_mount()
    try:
        files = probe.read_health(target, timeout)
    except probe.ProbeError as exc:
        fail(str(exc), exit_codes.HEALTH_UNKNOWN)
    if as_json:
        click.echo(probe.as_json(files), nl=False)
    else:
        probe.render(target, files)
    code = probe.exit_code(files.state)
    sys.exit(exit_codes.OK if degraded_ok and code == exit_codes.DEGRADED else code)


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, one object per mount.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to wait for each mount to answer.",
)
def list_mounts(as_json: bool, timeout: float) -> None:
    """The live storagefs mounts: backends and health, one line each."""
    from storagefs.cli import mount_list

    summaries = [mount_list.summarize(mp, timeout) for mp in mount_list.live_mounts()]
    if as_json:
        click.echo(mount_list.as_json(summaries), nl=False)
    elif not summaries:
        click.echo("storagefs: no storagefs mounts", err=True)
    for summary in summaries if not as_json else ():
        click.echo(mount_list.line(summary))


def _only_mount() -> Path:
    """The one storagefs mount for ``storagefs health`` without an argument. Several: a usage
    error (64), never "down" (2). None: exit 2, as for a mount that does not answer."""
    from storagefs import mounts_table
    from storagefs.cli import probe

    try:
        found = mounts_table.storagefs_mounts()
    except OSError as exc:
        fail(f"cannot read {mounts_table.MOUNTS_FILE}: {exc.strerror}", exit_codes.HEALTH_UNKNOWN)
    if len(found) > 1:
        names = ", ".join(str(p) for p in found)
        fail(
            f"several storagefs mounts ({names}): name one, e.g. storagefs health {found[0]}",
            exit_codes.HEALTH_USAGE,
        )
    try:
        return probe.default_mountpoint()
    except probe.ProbeError as exc:
        fail(str(exc), exit_codes.HEALTH_UNKNOWN)


@main.command()
@click.argument("prefix")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--primary", help="Primary backend URL (default: $STORAGEFS_PRIMARY).")
@click.option("--secondary", help="Secondary backend URL (default: $STORAGEFS_SECONDARY).")
@click.option(
    "-j", "--jobs", type=click.IntRange(1, 64), default=8, show_default=True,
    help="Objects downloaded at once.",
)  # fmt: skip
@click.option("--no-resume", is_flag=True, help="Download everything again.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (no progress).")
def download(
    prefix: str,
    dest: Path,
    primary: str | None,
    secondary: str | None,
    jobs: int,
    no_resume: bool,
    as_json: bool,
) -> None:
    """Copy every object under PREFIX ("" or / for all) into the directory DEST, no mount.

    A second run skips files already complete. Exit code 0 all done, 1 some objects failed
    (listed), 2 bad input, 130 interrupted. See docs/DOWNLOAD.md."""
    from storagefs.download import run as bulk

    settings = settings_from(primary=primary, secondary=secondary)
    try:
        code = bulk.run_cli(
            settings, prefix, dest, jobs=jobs, resume=not no_resume, as_json=as_json
        )
    except bulk.DownloadError as exc:
        fail(str(exc))
    sys.exit(code)


@main.command()
@click.argument("mountpoint", required=False, type=click.Path(path_type=Path))
@click.option("--primary", help="Primary backend URL (without MOUNTPOINT).")
@click.option("--secondary", help="Secondary backend URL (without MOUNTPOINT).")
@click.option("--dry-run", is_flag=True, help="Only compare: say what would be copied.")
def sync(
    mountpoint: Path | None, primary: str | None, secondary: str | None, dry_run: bool
) -> None:
    """Copy to the secondary what it lacks of the primary (reconciliation).

    With MOUNTPOINT, the mount's daemon runs a pass now and this follows its progress; with
    --primary/--secondary (or their STORAGEFS_* variables) a pass runs here, with no mount.
    Exit code 0 the secondary holds everything, 1 objects left behind, 2 bad input."""
    from storagefs.cli import sync as sync_cli

    try:
        if mountpoint is not None:
            if primary or secondary:
                fail("give either MOUNTPOINT or --primary/--secondary, not both")
            if not is_mounted(mountpoint):
                fail(f"{mountpoint} is not mounted")
            code = sync_cli.follow_mount(mountpoint, dry_run)
        else:
            settings = settings_from(primary=primary, secondary=secondary)
            code = sync_cli.run_standalone(settings, dry_run)
    except sync_cli.SyncError as exc:
        fail(str(exc))
    sys.exit(code)


if __name__ == "__main__":
    main()
