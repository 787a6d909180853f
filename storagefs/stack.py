"""The stack behind every command that moves data, and its one start/stop sequence.

:func:`build_stack` assembles, from the settings, what the filesystem core (and the bulk
download) talks to::

    FallbackChain( [Instrumented(Resilient(primary)), Instrumented(Resilient(secondary))],
                   journal, cache )

plus the telemetry and the health report that watch it. :func:`open_stack` runs it: telemetry
started, the chain opened, a start that cannot work refused, and on the way out the chain
stopped and closed (shielded: the journal and cache are fsync'd even when cancelled) and the
telemetry shut down. The mount (daemon/mount.py) and the download (download/run.py) both use
it, as rclone's mount and copy both go through ``vfs.New``; the caller runs ``chain.run`` in
its own nursery, beside its own work.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from storagefs.backends import backend_from_url
from storagefs.backends.base import Backend, ConfigurationError
from storagefs.backends.local import LocalBackend
from storagefs.chain.fallback import FallbackChain
from storagefs.config import Settings, default_data_dir
from storagefs.observability.health import HealthReport
from storagefs.observability.metric_names import TASK_JOURNAL_REPLAY
from storagefs.observability.telemetry import Telemetry, telemetry_from_environment
from storagefs.resilience.backend import ResilientBackend, RetryPolicy


@dataclasses.dataclass
class Stack:
    chain: FallbackChain
    remotes: list[ResilientBackend]
    telemetry: Telemetry
    health: HealthReport


def _unique_names(backends: list[Backend]) -> None:
    seen: set[str] = set()
    for role, backend in zip(("primary", "secondary"), backends, strict=False):
        if backend.name in seen:
            backend.name = f"{backend.name}-{role}"
        seen.add(backend.name)


def build_stack(settings: Settings, cache_dir: Path) -> Stack:
    if settings.primary is None:
        # The embedded default: a private directory, so a first mount works with no cloud.
        default_data_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    urls = [settings.resolved_primary()]
    if settings.secondary:
        urls.append(settings.secondary)
    raw = [backend_from_url(url, settings) for url in urls]
    _unique_names(raw)
    policy = RetryPolicy.from_settings(settings)
    telemetry = telemetry_from_environment()
    remotes = [ResilientBackend(b, policy) for b in raw]
    for remote in remotes:
        telemetry.watch(remote)
    if all(isinstance(b, LocalBackend) for b in raw):
        # Clean copies of a local directory on the same disk would serve nothing it cannot.
        settings = settings.model_copy(update={"cache_max_bytes": 0})
    chain = FallbackChain.from_settings(
        [telemetry.instrument(r) for r in remotes], settings, directory=cache_dir
    )
    chain.replayer.around_apply = lambda: telemetry.background_task(TASK_JOURNAL_REPLAY)
    return Stack(chain, remotes, telemetry, HealthReport(remotes, chain))


@contextlib.asynccontextmanager
async def open_stack(
    settings: Settings, cache_dir: Path, *, serves_offline: bool
) -> AsyncIterator[Stack]:
    """The stack for ``settings``, opened; stopped and closed on the way out.

    ``serves_offline``: the caller can work with no remote answering, from what is local (the
    mount: its journal, its cache, a secondary that comes back). Even so, a lone remote that
    does not answer with nothing journaled is a configuration mistake (a wrong endpoint, the
    network down), refused rather than mounted as an empty directory. Without it (the
    download) at least one remote must answer. Refusals are ConfigurationError; bad settings
    raise BackendError or ConfigError from the build."""
    stack = build_stack(settings, cache_dir)
    await trio.to_thread.run_sync(stack.telemetry.start)
    try:
        await stack.chain.open()
        refuse_unreachable(stack.chain, serves_offline)
        yield stack
    finally:
        stack.chain.stop()
        with trio.CancelScope(shield=True), contextlib.suppress(Exception):
            await stack.chain.close()
        stack.telemetry.shutdown()


def refuse_unreachable(chain: FallbackChain, serves_offline: bool) -> None:
    """ConfigurationError naming the primary unless the chain can do its caller's work."""
    states = [chain.state_of[r.name] for r in chain.remotes]
    if any(state.reachable is not False for state in states):
        return
    if serves_offline and (len(chain.remotes) > 1 or not chain.journal.drained()):
        return  # starts degraded: the journal replays, the remotes are probed
    primary, seen = chain.remotes[0], states[0]
    reason = (seen.last_error_text() or "no answer").removeprefix("TransientError: ")
    if not reason.startswith("cannot reach"):
        reason = f"cannot reach {primary.describe()}: {reason}"
    raise ConfigurationError(reason)
