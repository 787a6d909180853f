"""ChainOptions: what the fallback chain reads of the settings, in one frozen dataclass.

Built from :class:`~storagefs.config.Settings` in one function, :meth:`ChainOptions.from_settings`
(as :class:`storagefs.fs.core.FsOptions` is for the core), so the chain's modules depend on
the few values they use and not on all of the settings. Nothing here changes after the chain is
built.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from storagefs.config import Settings
from storagefs.resilience.backend import RetryPolicy


@dataclasses.dataclass(frozen=True, slots=True)
class ChainOptions:
    """No defaults: those are the settings' (:mod:`storagefs.config`)."""

    write_mode: Literal["through", "back"]
    write_deadline: float  # seconds a write-through waits for the primary, before size
    write_back_delay: float  # seconds deferred entries wait in the journal
    commit_interval: float  # seconds between group commits of deferred entries (0: none)
    held_names: str  # comma-separated globs of temporary names (STORAGEFS_HELD_NAMES)
    journal_max_bytes: int
    replay_workers: int
    replay_bytes_per_second: int
    retry_initial_backoff: float  # the replayer's first backoff of a down target
    breaker_reset: float  # the replayer's longest backoff; how long a remote stays unwell
    hedge_min_delay: float
    hedge_max_delay: float
    min_bandwidth: float  # bytes/s a write-through waits for, beyond the deadline

    @classmethod
    def from_settings(cls, settings: Settings) -> ChainOptions:
        policy = RetryPolicy.from_settings(settings)
        return cls(
            write_mode=settings.write_mode,
            write_deadline=settings.write_deadline,
            write_back_delay=settings.write_back_delay,
            commit_interval=settings.commit_interval,
            held_names=settings.held_names,
            journal_max_bytes=settings.journal_max_bytes,
            replay_workers=settings.replay_workers,
            replay_bytes_per_second=settings.replay_bytes_per_second,
            retry_initial_backoff=settings.retry_initial_backoff,
            breaker_reset=policy.breaker_reset,
            hedge_min_delay=policy.hedge_min_delay,
            hedge_max_delay=policy.hedge_max_delay,
            min_bandwidth=policy.min_bandwidth,
        )
