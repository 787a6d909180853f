"""The daemon: open the backends, mount, serve until unmounted or signalled, clean up.

One trio nursery holds everything (the FUSE main loop, readahead, background tasks); SIGINT and
SIGTERM end the FUSE loop, dirty files are uploaded, and the mount is removed on the way out.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable
from pathlib import Path

import pyfuse3
import trio

from storagefs.backends import key_room, metadata_room
from storagefs.backends.base import ConfigurationError
from storagefs.chain.fallback import FallbackChain
from storagefs.config import Settings
from storagefs.daemon.fuse_ops import StorageOperations
from storagefs.fs.core import Filesystem, FsOptions, build_filesystem
from storagefs.fs.health_router import HealthRouter
from storagefs.fs.names import bad_keys_seen
from storagefs.observability.health import CoreFigures
from storagefs.observability.telemetry import BacklogSampler
from storagefs.stack import open_stack
from storagefs.sync.reconcile import daemon_syncer

log = logging.getLogger("storagefs.mount")


def prepare_cache_dir(settings: Settings) -> Path:
    """The cache directory, private to the user (it holds file contents)."""
    cache = settings.cache_dir.expanduser()
    try:
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        cache.chmod(0o700)
    except OSError as exc:
        raise ConfigurationError(f"cannot use cache directory {cache}: {exc.strerror}") from None
    return cache


def fuse_options(
    extra: Iterable[str], read_only: bool, default_permissions: bool = True
) -> set[str]:
    opts = set(pyfuse3.default_options)
    if not default_permissions:
        opts.discard("default_permissions")
    opts |= {"fsname=storagefs", "subtype=storagefs"}
    for opt in extra:
        opts.add(opt)
    if read_only:
        opts.add("ro")
    return opts


def fs_options(settings: Settings, cache: Path, read_only: bool) -> FsOptions:
    staging = cache / "staging"
    if staging.exists():
        # Staging files of a previous run hold data no close() acknowledged: not ours to keep.
        # (Abandoned uploads, in their own directory, are kept for a person to look at.)
        for stale in staging.glob("stage-*"):
            stale.unlink(missing_ok=True)
    file_mode, dir_mode = settings.object_modes()
    return FsOptions(
        staging_dir=staging,
        uid=os.getuid() if settings.uid is None else settings.uid,
        gid=os.getgid() if settings.gid is None else settings.gid,
        file_mode=file_mode,
        dir_mode=dir_mode,
        metadata_ttl=settings.metadata_ttl,
        read_only=read_only,
        read_chunk_size=settings.read_chunk_size,
        readahead_chunks=settings.readahead_chunks,
        read_budget=settings.read_budget,
        metadata_cache=cache / "metadata.db",
        listing_head_limit=settings.listing_head_limit,
        listing_head_parallelism=settings.max_requests,
        stream_part_size=settings.multipart_chunksize,
        stream_parallelism=settings.transfer_concurrency,
        max_key_bytes=min(
            key_room(url) for url in (settings.resolved_primary(), settings.secondary) if url
        ),
        max_metadata_bytes=min(
            (
                room
                for url in (settings.resolved_primary(), settings.secondary)
                if url and (room := metadata_room(url)) is not None
            ),
            default=None,
        ),
    )


async def serve(
    settings: Settings,
    mountpoint: Path,
    extra_options: Iterable[str] = (),
    read_only: bool = False,
) -> None:
    read_only = read_only or settings.read_only or "ro" in set(extra_options)
    cache = prepare_cache_dir(settings)
    async with open_stack(settings, cache, serves_offline=True) as stack:
        chain = stack.chain
        fs = build_filesystem(
            chain,
            fs_options(settings, cache, read_only),
            journal_room=lambda: chain.journal.max_bytes - chain.journal.stats().pending_bytes,
        )
        stack.health.core = lambda: CoreFigures(
            dirty_files=fs.dirty_files,
            invalid_keys=bad_keys_seen(),
            failed_uploads=fs.failed_files,
            abandoned_uploads=fs.abandoned_uploads,
        )
        syncer = daemon_syncer(chain, settings, cache)
        if syncer is not None:
            stack.health.sync = syncer.snapshot
        routed = HealthRouter(fs, stack.health.files)
        ops = StorageOperations(routed, on_unexpected=stack.telemetry.notice_error)
        options = fuse_options(extra_options, read_only, settings.default_permissions)
        pyfuse3.init(ops, str(mountpoint), options)
        log.info("mounted %s on %s", chain.describe(), mountpoint)
        sampler = BacklogSampler(stack.telemetry, lambda: _backlog(chain))
        try:
            async with trio.open_nursery() as nursery:
                fs.attach(nursery)
                await nursery.start(chain.run)
                nursery.start_soon(sampler.run)
                nursery.start_soon(_stop_on_signal)
                if syncer is not None:
                    nursery.start_soon(syncer.run)
                    nursery.start_soon(syncer.kick_on_signal)
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await _upload_dirty(fs)  # before the stack stops: uploads go through it
                sampler.stop()
            pyfuse3.close(unmount=True)
            fs.close()
    log.info("unmounted %s", mountpoint)


def _backlog(chain: FallbackChain) -> tuple[int, int]:
    stats = chain.journal.stats()
    return stats.pending_entries, stats.pending_bytes


async def _upload_dirty(fs: Filesystem) -> None:
    if fs.dirty_files:
        log.warning("uploading %d file(s) still open with changes", fs.dirty_files)
        await fs.upload_all()


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return
