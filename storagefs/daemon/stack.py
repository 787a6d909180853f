"""Assemble what the filesystem core talks to, from the settings:

    FallbackChain( [Instrumented(Resilient(primary)), Instrumented(Resilient(secondary))],
                   journal, cache )

plus the telemetry and the health report that watch it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from storagefs.backends import backend_from_url
from storagefs.backends.base import Backend
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
