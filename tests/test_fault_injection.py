"""FaultyBackend itself: the faults other tests rely on do what they say."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from storagefs.backends.base import NotFound, PermissionDenied, TransientError
from tests.fakes import MemoryBackend
from tests.fault_injection import FaultyBackend


def make() -> FaultyBackend:
    memory = MemoryBackend("mem")
    memory.objects["k"] = (b"data", {}, 1_000_000_000)
    return FaultyBackend(memory)


async def outcomes(faulty: FaultyBackend, n: int) -> list[str]:
    seen = []
    for _ in range(n):
        try:
            await faulty.stat("k")
            seen.append("ok")
        except Exception as exc:
            seen.append(type(exc).__name__)
    return seen


async def test_kth_call_counts_from_now() -> None:
    faulty = make()
    await faulty.stat("k")
    faulty.fail_call("stat", 2, PermissionDenied)
    assert await outcomes(faulty, 3) == ["ok", "PermissionDenied", "ok"]
    assert faulty.calls["stat"] == 4
    assert faulty.calls["read"] == 0


async def test_fail_next_then_pass() -> None:
    faulty = make()
    faulty.fail_next("stat", 2)
    assert await outcomes(faulty, 3) == ["TransientError", "TransientError", "ok"]


async def test_down_and_up_per_operation() -> None:
    faulty = make()
    faulty.set_down(TransientError("boom"), ops=["stat"])
    assert await outcomes(faulty, 2) == ["TransientError", "TransientError"]
    assert await faulty.read("k", 0, 2) == b"da"  # other operations unaffected
    faulty.set_up()
    assert await outcomes(faulty, 1) == ["ok"]
    faulty.set_down()  # everything
    with pytest.raises(TransientError, match="injected fault: health"):
        await faulty.health()


async def test_flap_alternates() -> None:
    faulty = make()
    faulty.flap(NotFound, "stat")
    assert await outcomes(faulty, 4) == ["NotFound", "ok", "NotFound", "ok"]


async def test_errors_are_fresh_objects() -> None:
    faulty = make()
    error = TransientError("same")
    faulty.set_down(error, "stat")
    raised = []
    for _ in range(2):
        with pytest.raises(TransientError) as caught:
            await faulty.stat("k")
        raised.append(caught.value)
    assert raised[0] is not raised[1] and raised[0] is not error
    assert str(raised[1]) == "same"


async def test_latency_and_hang(autojump_clock: trio.testing.MockClock) -> None:
    faulty = make()
    faulty.add_latency(2.5, "stat")
    start = trio.current_time()
    await faulty.stat("k")
    assert trio.current_time() - start == pytest.approx(2.5)
    faulty.add_latency(0, "stat")
    faulty.hang("stat")
    with trio.move_on_after(100) as scope:
        await faulty.stat("k")
    assert scope.cancelled_caught  # only cancellation ends a hang
    assert faulty.hung == 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(faulty.stat, "k")
        await trio.testing.wait_all_tasks_blocked()
        assert faulty.hung == 1
        faulty.release()
    assert faulty.hung == 0
    await faulty.stat("k")  # released: new calls pass


def test_unknown_operation_rejected() -> None:
    with pytest.raises(ValueError):
        make().set_down(ops=["stats"])
