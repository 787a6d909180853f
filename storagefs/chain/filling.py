"""Cache filling: the chain's upkeep of the local cache, off the request path.

Owns the queue of cache work (callables, each returning the awaitable that does one store,
copy or discard) and the one task that runs it in order (:meth:`CacheFiller.fill`), so the
cache sees a key's changes in the order they were made. The reads and the write policy feed
it through :meth:`CacheFiller.soon` (or run work now with :func:`best_effort`);
they never touch the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("storagefs.chain")

Work = Callable[[], Awaitable[None]]

CACHE_QUEUE = 256  # small direct writes waiting to be copied into the cache
# Cache upkeep with nothing queued behind it waits this long first: the call that caused it (a
# lookup, a close) is followed within a millisecond by the same program's next one (open, read,
# the next create), which a cache write would slow down by competing for the GIL and the CPU.
# The wait moves the write into the next request's wait for the network.
CACHE_QUIET = 0.005


async def best_effort(work: Awaitable[None]) -> None:
    try:
        await work
    except OSError as exc:  # the cache is an optimisation: never fail an operation on it
        log.warning("local cache: %s", exc)


class CacheFiller:
    def __init__(self) -> None:
        self._queue: trio.MemorySendChannel[Work] | None = None

    def open_queue(self) -> trio.MemoryReceiveChannel[Work]:
        """The receiving end for :meth:`fill`; work sent from now on is queued."""
        send, receive = trio.open_memory_channel[Work](CACHE_QUEUE)
        self._queue = send
        return receive

    def close_queue(self) -> None:
        """No more queueing (the filler finishes what is queued, then ends)."""
        if self._queue is not None:
            self._queue.close()

    def detach(self) -> None:
        """The filler is gone: work after this (the unmount's last uploads) runs inline."""
        self._queue = None

    async def fill(self, receive: trio.MemoryReceiveChannel[Work]) -> None:
        # One consumer, in order: the cache sees a key's changes in the order they were made.
        async with receive:
            async for work in receive:
                if not receive.statistics().current_buffer_used:  # no backlog: let it settle
                    await trio.sleep(CACHE_QUIET)
                await best_effort(work())

    async def soon(self, work: Work) -> None:
        """Cache upkeep off the request path when the chain is running (in order)."""
        if self._queue is not None:
            try:
                self._queue.send_nowait(work)
                await trio.lowlevel.checkpoint()
                return
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # full (back-pressure), stopping or stopped: do it now
        await best_effort(work())
