"""Racing: the first answer of a read across the chain's remotes, hedged.

Owns the hedging algorithm (:func:`race`): who is asked when, which answer wins, who is demoted
for losing. It keeps no state between calls: the hedge delays and the demotions are the
remotes' states, read and reported through
:class:`~storagefs.chain.reachability.Reachability`. :class:`AllDown` is how it says that no
remote answered; the reads decide what to serve then.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import trio

from storagefs.backends.base import Backend, NotFound
from storagefs.chain.reachability import NOT_ANSWERING, Reachability
from storagefs.resilience.backend import answerable_elsewhere

T = TypeVar("T")

log = logging.getLogger("storagefs.chain")


class AllDown(Exception):
    def __init__(self, last: BaseException | None) -> None:
        super().__init__("no remote answered")
        self.last = last


@dataclasses.dataclass(frozen=True, slots=True)
class _Reply(Generic[T]):
    """How one remote's part of a hedged read ended: a value, or an exception."""

    index: int
    value: T | None = None
    error: Exception | None = None


async def first_answer(
    reach: Reachability, op: str, call: Callable[[Backend], Awaitable[T]], *, cached: bool = False
) -> T:
    """``call`` of the remotes in read order, raced (see :func:`race`)."""

    async def ask(remote: Backend) -> T:
        return await reach.ask(remote, functools.partial(call, remote))

    return (await race(reach, op, reach.read_order(), ask, cached=cached))[1]


async def race(
    reach: Reachability,
    op: str,
    order: Sequence[Backend],
    ask: Callable[[Backend], Awaitable[T]],
    *,
    cached: bool = False,
    hedge: bool = True,
) -> tuple[Backend, T]:
    """The first answer to ``ask`` from the remotes in ``order``, and who gave it.

    The next remote is asked as soon as the previous one is not answering, or (``hedge``)
    once it has not answered within its hedge delay; the first answer wins (a negative one
    too) and the others are cancelled. A remote that was asked before the winner and had
    not answered is demoted: reads ask it last until it answers promptly again. Every
    remote but the last (or, with ``cached``, every one) gets a single attempt: there is
    somewhere else to go. AllDown when no remote answers.
    """
    if len(order) == 1:  # nobody to hedge with: no nursery, no channel, no timer
        try:
            with answerable_elsewhere(cached):
                return order[0], await ask(order[0])
        except NOT_ANSWERING as exc:
            raise AllDown(exc) from None
    send, receive = trio.open_memory_channel[_Reply[T]](len(order))
    started: builtins.list[float] = []
    finished: set[int] = set()
    last: BaseException | None = None
    winner: _Reply[T] | None = None
    held: _Reply[T] | None = None  # a "not found" waiting for earlier remotes

    def earlier_done(index: int) -> bool:
        return all(i in finished for i in range(index))

    async def one(index: int) -> None:
        remote = order[index]
        try:
            with answerable_elsewhere(cached or index < len(order) - 1):
                reply: _Reply[T] = _Reply(index, value=await ask(remote))
        except Exception as exc:
            reply = _Reply(index, error=exc)
        send.send_nowait(reply)

    async with trio.open_nursery() as nursery:

        def launch() -> None:
            started.append(trio.current_time())
            nursery.start_soon(one, len(started) - 1)

        launch()
        while winner is None:
            hedge_at = math.inf
            if hedge and len(started) < len(order):
                previous = reach.state_of[order[len(started) - 1].name]
                hedge_at = started[-1] + previous.hedge_delay(op)
            reply = None
            with trio.move_on_at(hedge_at):
                reply = await receive.receive()
            if reply is None:  # the last one asked is slow: ask the next one as well
                launch()
                continue
            finished.add(reply.index)
            if isinstance(reply.error, NotFound) and not earlier_done(reply.index):
                # "Not found" from a later remote while an earlier one may still answer:
                # the earlier one decides (a lagging secondary must not hide a file the
                # primary has). Held until the earlier ones answered or failed.
                if held is None or reply.index < held.index:
                    held = reply
                continue
            if isinstance(reply.error, NOT_ANSWERING):
                last = reply.error
                if held is not None and earlier_done(held.index):
                    winner = held
                elif len(started) < len(order):
                    launch()
                    continue
                elif len(finished) == len(started):
                    break
                else:
                    continue
            else:
                winner = reply
            nursery.cancel_scope.cancel()
    if winner is None:
        raise AllDown(last)
    now = trio.current_time()
    for index in range(winner.index):
        if index not in finished:
            loser = order[index]
            reach.demote(
                loser.name,
                f"no answer to {op} within {now - started[index]:.2g} s;"
                f" {order[winner.index].name} answered first",
            )
            log.info(
                "%s did not answer a %s within %.2g s: %s answered; asking %s last",
                loser.name, op, now - started[index], order[winner.index].name, loser.name,
            )  # fmt: skip
    if winner.error is not None:
        raise winner.error
    return order[winner.index], winner.value  # type: ignore[return-value]
