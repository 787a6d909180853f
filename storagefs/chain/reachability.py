"""Reachability: which of the chain's remotes answer, as the chain's calls and the replayer see
them.

Owns the remotes in chain order (``remotes``, ``primary``), one :class:`RemoteState` per remote
(``state_of``: a :class:`~storagefs.resilience.stats.Remote`'s own, else one this class feeds
from what the chain's calls see), the read order (well ones first), and the event that wakes
the prober when a remote may have become unwell.

The other modules of the chain read ``state_of`` (hedge delays, unwell verdicts) and report
through :meth:`Reachability.saw`, :meth:`Reachability.ask` and :meth:`Reachability.demote`;
they never change a state themselves, and never replace the event (:meth:`wait_unwell` does).
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import trio

from storagefs.backends.base import Backend, BackendError, BackendUnavailable, TransientError
from storagefs.chain.options import ChainOptions
from storagefs.journal.replay import Replayer
from storagefs.resilience.stats import Remote, RemoteState

T = TypeVar("T")

NOT_ANSWERING = (BackendUnavailable, TransientError)


class Reachability:
    def __init__(self, remotes: Sequence[Backend], options: ChainOptions) -> None:
        self.remotes = list(remotes)
        self.primary = self.remotes[0]
        # Reachability lives in one place: the RemoteState each remote's ResilientBackend
        # keeps (read order, hedging, /.health all read it). A bare backend (tests, tools)
        # gets one that the chain feeds itself from what its calls see.
        self.state_of: dict[str, RemoteState] = {}
        self._chain_fed: set[str] = set()
        for remote in self.remotes:
            if isinstance(remote, Remote):
                state = remote.state
            else:
                state = RemoteState(
                    remote.name,
                    clock=trio.current_time,
                    unwell_for=options.breaker_reset,
                    hedge_floor=options.hedge_min_delay,
                    hedge_ceiling=options.hedge_max_delay,
                )
                self._chain_fed.add(remote.name)
            self.state_of[remote.name] = state
        self._unwell_seen = trio.Event()  # set when a remote may have become unwell
        self._replayer: Replayer | None = None

    def follow(self, replayer: Replayer) -> None:
        """Tell ``replayer`` when a remote it holds down answers the chain again."""
        self._replayer = replayer

    def saw(self, name: str, error: BaseException | None) -> None:
        """What a call to remote ``name`` showed (None: it answered)."""
        self._note(name, "call", error)
        replayer = self._replayer
        if error is None and replayer is not None and not replayer.is_up(name):
            replayer.kick(name)  # it answers us again: let the replayer probe it now

    def replayed(self, name: str, error: BaseException | None) -> None:
        """What the replayer's last apply to ``name`` showed (its ``on_result``)."""
        self._note(name, "replay", error)

    def _note(self, name: str, op: str, error: BaseException | None) -> None:
        """A ResilientBackend has recorded the outcome in its state already; a bare backend's
        state is fed here. A failure wakes the prober either way."""
        if error is not None:
            self._unwell_seen.set()
        if name in self._chain_fed:
            state = self.state_of[name]
            if error is None:
                state.answered()
            else:
                state.record_error(op, error)
                state.failed(f"{type(error).__name__}: {error}")

    def demote(self, name: str, reason: str) -> None:
        """``name`` lost a hedged read: ask it last until it answers promptly again."""
        self._unwell_seen.set()
        self.state_of[name].demote(reason)

    def any_unwell(self) -> bool:
        return any(state.unwell() for state in self.state_of.values())

    async def wait_unwell(self) -> None:
        """Until a failure is seen (the prober's sleep while nothing is unwell)."""
        self._unwell_seen = trio.Event()
        await self._unwell_seen.wait()

    def read_order(self) -> builtins.list[Backend]:
        """The remotes in chain order, except that unwell ones (breaker not closed, or failed
        or lost a hedged read recently and not answered promptly since) are asked last. A
        hung primary then costs one hedge delay, once, not one per call."""
        well: builtins.list[Backend] = []
        unwell: builtins.list[Backend] = []
        for remote in self.remotes:
            (unwell if self.state_of[remote.name].unwell() else well).append(remote)
        return well + unwell

    async def ask(self, remote: Backend, call: Callable[[], Awaitable[T]]) -> T:
        """One remote's answer, noting whether it answered (a negative answer is one too, and
        authoritative); a remote not answering raises for the caller to fall back."""
        try:
            result = await call()
        except NOT_ANSWERING as exc:
            self.saw(remote.name, exc)
            raise
        except BackendError:
            self.saw(remote.name, None)
            raise
        self.saw(remote.name, None)
        return result
