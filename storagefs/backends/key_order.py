"""Changes of one key reach the store in the order they were issued, even when abandoned.

Backends run blocking SDK calls with ``trio.to_thread.run_sync(..., abandon_on_cancel=True)``
so that a deadline above them can move on. The abandoned thread keeps going, though: a write
that timed out may still land after a *later* write of the same key and silently undo it.
:class:`KeyOrder` prevents that: a change of a key starts only once every earlier change of
that key has truly ended (its thread returned, or it never started).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

T = TypeVar("T")


class ChangeSkipped(Exception):
    """Raised inside a worker thread whose caller was cancelled before it began."""


class KeyOrder:
    def __init__(self) -> None:
        self._in_flight: dict[str, trio.Event] = {}  # key -> set when its change has ended

    def busy(self, key: str) -> bool:
        return key in self._in_flight

    async def change(
        self,
        key: str,
        fn: Callable[[], T],
        run_in_thread: Callable[[Callable[[], T]], Awaitable[T]],
    ) -> T:
        """``run_in_thread(wrapped_fn)`` once no earlier change of ``key`` is still running."""
        while (earlier := self._in_flight.get(key)) is not None:
            await earlier.wait()
        ended = trio.Event()
        self._in_flight[key] = ended
        token = trio.lowlevel.current_trio_token()
        lock = threading.Lock()
        state = {"started": False, "skipped": False}

        def release() -> None:
            if self._in_flight.get(key) is ended:
                del self._in_flight[key]
            ended.set()

        def in_thread() -> T:
            with lock:
                if state["skipped"]:
                    raise ChangeSkipped(key)
                state["started"] = True
            try:
                return fn()
            finally:
                try:
                    token.run_sync_soon(release)
                except trio.RunFinishedError:
                    pass  # the whole run is over: nobody is left to wait

        try:
            return await run_in_thread(in_thread)
        finally:
            # Cancelled before the thread began (e.g. waiting for the limiter): it must not
            # begin later, and the key is free now. Otherwise the thread releases it.
            with lock:
                never_started = not state["started"]
                if never_started:
                    state["skipped"] = True
            if never_started:
                release()
