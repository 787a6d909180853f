"""KeyOrder: an abandoned change of a key ends before the next change of that key begins."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import pytest
import trio

from storagefs.backends.key_order import KeyOrder

T = TypeVar("T")


def threaded(limiter: trio.CapacityLimiter | None = None) -> Callable[..., object]:
    async def run(fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=limiter)

    return run


async def test_next_change_waits_for_an_abandoned_thread() -> None:
    order = KeyOrder()
    gate = threading.Event()
    log: list[str] = []

    def slow_first() -> None:
        gate.wait(10)
        log.append("first")

    def second() -> None:
        log.append("second")

    with trio.move_on_after(0.05):
        await order.change("k", slow_first, threaded())  # abandoned, thread still blocked
    assert order.busy("k")

    async def release_later() -> None:
        await trio.sleep(0.2)
        assert log == []  # the second change has not started in the meantime
        gate.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_later)
        await order.change("k", second, threaded())
    assert log == ["first", "second"]
    assert not order.busy("k")


async def test_other_keys_are_not_held_up() -> None:
    order = KeyOrder()
    gate = threading.Event()
    with trio.move_on_after(0.05):
        await order.change("a", lambda: gate.wait(10), threaded())
    with trio.fail_after(5):
        assert await order.change("b", lambda: "done", threaded()) == "done"
    gate.set()


async def test_a_change_cancelled_before_its_thread_began_never_runs() -> None:
    order = KeyOrder()
    limiter = trio.CapacityLimiter(1)
    ran: list[str] = []
    await limiter.acquire()  # the thread cannot start: the limiter is taken
    with trio.move_on_after(0.05):
        await order.change("k", lambda: ran.append("late"), threaded(limiter))
    assert not order.busy("k")  # released at once, not by a thread that will never run
    limiter.release()
    await order.change("k", lambda: ran.append("next"), threaded(limiter))
    await trio.sleep(0.1)
    assert ran == ["next"]


async def test_errors_release_the_key() -> None:
    order = KeyOrder()

    def boom() -> None:
        raise OSError("disk on fire")

    with pytest.raises(OSError):
        await order.change("k", boom, threaded())
    with trio.fail_after(5):
        assert await order.change("k", lambda: 1, threaded()) == 1
