"""ResilientBackend over a FaultyBackend(MemoryBackend), on trio's MockClock.

Every test takes ``autojump_clock`` (pytest-trio): sleeps, timeouts, backoff and the breaker's
reset timer all run on virtual time, so the figures below are exact and the suite is instant.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from storagefs.backends.base import (
    Backend,
    BackendUnavailable,
    ConfigurationError,
    Conflict,
    InvalidRequest,
    NoSpace,
    NotFound,
    PermissionDenied,
    TransientError,
)
from storagefs.config import Settings
from storagefs.resilience.backend import (
    AttemptTimeout,
    BreakerOpen,
    ResilientBackend,
    RetriesExhausted,
    RetryPolicy,
)
from tests.fakes import MemoryBackend
from tests.fault_injection import FaultyBackend

POLICY = RetryPolicy(
    request_timeout=5.0,
    first_byte_timeout=5.0,  # the small operations of these tests time out like transfers
    retry_attempts=4,
    retry_initial_backoff=0.1,
    retry_max_backoff=2.0,
    operation_deadline=60.0,
    breaker_failures=3,
    breaker_reset=10.0,
)


def make(policy: RetryPolicy = POLICY) -> tuple[ResilientBackend, FaultyBackend, MemoryBackend]:
    memory = MemoryBackend("mem")
    memory.objects["k"] = (b"hello", {"mode": "33188"}, 1.0)
    faulty = FaultyBackend(memory)
    return ResilientBackend(faulty, policy), faulty, memory


async def trip(rb: ResilientBackend, faulty: FaultyBackend) -> None:
    """Open the breaker: breaker_failures operations that each exhaust their retries."""
    faulty.set_down(TransientError)
    for _ in range(rb.policy.breaker_failures):
        with pytest.raises(RetriesExhausted):
            await rb.stat("k")
    assert rb.breaker_state == "open"


def test_is_a_backend() -> None:
    rb, _, _ = make()
    backend: Backend = rb  # mypy checks the protocol; isinstance checks the names at runtime
    assert isinstance(backend, Backend)
    assert rb.name == "mem"


def test_policy_from_settings() -> None:
    settings = Settings(
        request_timeout=7,
        first_byte_timeout=1.5,
        hedge_min_delay=0.2,
        hedge_max_delay=0.8,
        retry_attempts=3,
        retry_initial_backoff=0.5,
        retry_max_backoff=4,
        operation_deadline=40,
        breaker_failures=2,
        breaker_reset=3,
    )
    policy = RetryPolicy.from_settings(settings, min_bandwidth=1000.0)
    assert (policy.request_timeout, policy.retry_attempts, policy.operation_deadline) == (7, 3, 40)
    assert (policy.retry_initial_backoff, policy.retry_max_backoff) == (0.5, 4)
    assert (policy.breaker_failures, policy.breaker_reset) == (2, 3)
    assert (policy.first_byte_timeout, policy.hedge_min_delay, policy.hedge_max_delay) == (
        1.5,
        0.2,
        0.8,
    )
    # Metadata and small I/O get the short timeout, bigger transfers the long one; both get
    # size / min_bandwidth on top, and the deadline always fits one attempt.
    assert policy.attempt_timeout("stat") == 1.5
    assert policy.attempt_timeout("write", 50_000) == 51.5
    big = 2 * 1024 * 1024
    assert policy.attempt_timeout("write", big) == 7 + big / 1000
    assert policy.attempt_timeout("download") == 7
    assert policy.deadline("write", 50_000) == 90
    with pytest.raises(ValueError):
        RetryPolicy(retry_attempts=0)


async def test_retries_transient_errors_then_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rb, faulty, _ = make()
    faulty.fail_next("stat", 2)
    info = await rb.stat("k")
    assert info.size == 5
    assert faulty.calls["stat"] == 3
    assert rb.stats.retries == 2
    assert (rb.stats.successes, rb.stats.failures) == (1, 0)
    assert rb.breaker_state == "closed"
    assert rb.stats.last_error is not None and rb.stats.last_error.type == "TransientError"


@pytest.mark.parametrize(
    "error", [NotFound, PermissionDenied, InvalidRequest, Conflict, ConfigurationError, NoSpace]
)
async def test_answers_are_not_retried(
    autojump_clock: trio.testing.MockClock, error: type[Exception]
) -> None:
    rb, faulty, _ = make()
    faulty.fail_next("stat", 3, error)
    with pytest.raises(error):
        await rb.stat("k")
    assert faulty.calls["stat"] == 1
    assert rb.stats.retries == 0
    assert rb.stats.successes == 1  # the store answered
    assert rb.breaker.fail_counter == 0


async def test_not_found_does_not_trip_the_breaker(autojump_clock: trio.testing.MockClock) -> None:
    rb, faulty, _ = make()
    faulty.fail_next("stat", 2)  # two failed attempts, then the store answers "no such key"
    for _ in range(10):
        with pytest.raises(NotFound):
            await rb.stat("missing")
    assert rb.breaker_state == "closed"
    assert rb.breaker.fail_counter == 0
    assert rb.stats.consecutive_failures == 0
    assert rb.stats.successes == 10
    assert rb.stats.last_error is not None and rb.stats.last_error.type == "TransientError"
    # An answer between failures breaks the run: N failures *in a row* open the breaker.
    faulty.set_down(TransientError)
    for _ in range(2):
        with pytest.raises(RetriesExhausted):
            await rb.stat("k")
    faulty.set_up()
    with pytest.raises(NotFound):
        await rb.stat("missing")
    faulty.set_down(TransientError)
    for _ in range(2):
        with pytest.raises(RetriesExhausted):
            await rb.stat("k")
    assert rb.breaker_state == "closed"


async def test_backoff_grows_with_jitter_within_bounds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = RetryPolicy(
        retry_attempts=6, retry_initial_backoff=0.1, retry_max_backoff=1.0, breaker_failures=100
    )
    rb, faulty, _ = make(policy)
    faulty.set_down(TransientError, "stat")
    all_gaps: list[list[float]] = []
    for _ in range(20):
        faulty.history.clear()
        with pytest.raises(RetriesExhausted):
            await rb.stat("k")
        times = [t for _, _, t in faulty.history]
        assert len(times) == 6
        all_gaps.append([b - a for a, b in itertools.pairwise(times)])
    for gaps in all_gaps:
        for n, gap in enumerate(gaps, start=1):
            cap = min(1.0, 0.1 * 2 ** (n - 1))  # 0.1, 0.2, 0.4, 0.8, 1.0
            assert cap / 2 - 1e-9 <= gap <= cap + 1e-9, (n, gap)
        # Even the shortest fifth wait is longer than the longest first one.
        assert gaps[4] > gaps[0]
    # Jitter: the same wait differs between operations, at every step including at the cap.
    for n in range(5):
        assert len({round(gaps[n], 9) for gaps in all_gaps}) > 1


async def test_hung_attempt_times_out_and_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rb, faulty, _ = make()
    faulty.hang("stat")

    async def release_later() -> None:
        await trio.sleep(7)  # after the first attempt timed out (at 5), during the second
        faulty.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_later)
        start = trio.current_time()
        info = await rb.stat("k")
    assert info.key == "k"
    assert faulty.calls["stat"] == 2
    assert rb.stats.timeouts == 1
    assert rb.stats.retries == 1
    assert trio.current_time() - start == pytest.approx(7)
    assert rb.stats.last_error is not None and rb.stats.last_error.type == "AttemptTimeout"


async def test_deadline_bounds_the_operation(autojump_clock: trio.testing.MockClock) -> None:
    policy = RetryPolicy(first_byte_timeout=5, retry_attempts=10, operation_deadline=12)
    rb, faulty, _ = make(policy)
    faulty.hang("stat")
    start = trio.current_time()
    with pytest.raises(RetriesExhausted, match="12 s deadline") as caught:
        await rb.stat("k")
    # Cut mid-attempt by the deadline: exactly 12 s, after two timeouts and a third try.
    assert trio.current_time() - start == pytest.approx(12)
    assert faulty.calls["stat"] == 3
    assert isinstance(caught.value.__cause__, AttemptTimeout)
    assert rb.stats.failures == 1


async def test_no_backoff_past_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    # Failures come instantly, so only the stop condition (trio's clock) ends the retrying,
    # well before 20 attempts and without sleeping into the deadline.
    policy = RetryPolicy(
        request_timeout=2,
        retry_attempts=20,
        retry_initial_backoff=1,
        retry_max_backoff=4,
        operation_deadline=10,
    )
    rb, faulty, _ = make(policy)
    faulty.set_down(TransientError, "stat")
    start = trio.current_time()
    with pytest.raises(RetriesExhausted, match="gave up after") as caught:
        await rb.stat("k")
    assert trio.current_time() - start < 10
    assert 3 <= faulty.calls["stat"] < 20
    assert isinstance(caught.value.__cause__, TransientError)


async def test_breaker_opens_then_fails_fast(autojump_clock: trio.testing.MockClock) -> None:
    rb, faulty, _ = make()
    await trip(rb, faulty)
    assert faulty.calls["stat"] == 3 * 4  # every failed operation used all its attempts
    before = dict(faulty.calls)
    start = trio.current_time()
    for op in (rb.stat("k"), rb.read("k", 0, 5), rb.delete("k"), rb.health()):
        with pytest.raises(BreakerOpen):
            await op
    assert trio.current_time() == start  # no waiting at all
    assert dict(faulty.calls) == before  # the store was not asked
    assert rb.stats.rejected == 4
    assert rb.stats.consecutive_failures == 3
    assert issubclass(BreakerOpen, BackendUnavailable)


async def test_half_open_probe_success_closes(autojump_clock: trio.testing.MockClock) -> None:
    rb, faulty, _ = make()
    await trip(rb, faulty)
    await trio.sleep(9.9)
    with pytest.raises(BreakerOpen):
        await rb.stat("k")
    await trio.sleep(0.1)
    faulty.set_up()
    before = faulty.calls["stat"]
    assert (await rb.stat("k")).size == 5
    assert faulty.calls["stat"] == before + 1
    assert rb.breaker_state == "closed"
    assert rb.breaker.fail_counter == 0
    await rb.stat("k")


async def test_half_open_probe_failure_reopens(autojump_clock: trio.testing.MockClock) -> None:
    rb, faulty, _ = make()
    await trip(rb, faulty)
    await trio.sleep(10)
    before = faulty.calls["stat"]
    with pytest.raises(RetriesExhausted):
        await rb.stat("k")
    assert faulty.calls["stat"] == before + 1  # the probe gets one attempt, not four
    assert rb.breaker_state == "open"
    with pytest.raises(BreakerOpen):  # and the reset timer started again
        await rb.stat("k")
    await trio.sleep(10)
    faulty.set_up()
    await rb.stat("k")
    assert rb.breaker_state == "closed"


async def test_only_one_probe_at_a_time(autojump_clock: trio.testing.MockClock) -> None:
    rb, faulty, _ = make()
    await trip(rb, faulty)
    await trio.sleep(10)
    faulty.set_up()
    faulty.hang("stat")
    results: list[int] = []

    async def probe() -> None:
        results.append((await rb.stat("k")).size)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        await trio.testing.wait_all_tasks_blocked()
        assert rb.breaker_state == "half-open"
        with pytest.raises(BreakerOpen, match="probe"):
            await rb.stat("k")
        faulty.release()
    assert results == [5]
    assert rb.breaker_state == "closed"


async def test_cancelled_call_is_not_a_failure(autojump_clock: trio.testing.MockClock) -> None:
    rb, faulty, _ = make()
    await trip(rb, faulty)
    await trio.sleep(10)
    faulty.set_up()
    faulty.hang("stat")
    with trio.move_on_after(1):  # the caller gives up on the probe
        await rb.stat("k")
    assert rb.breaker_state == "half-open"
    assert rb.stats.in_flight == 0
    faulty.release()
    await rb.stat("k")  # the next call may probe
    assert rb.breaker_state == "closed"


async def test_state_changes_are_logged_and_reported(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    rb, faulty, _ = make()
    seen: list[tuple[str, str, str]] = []

    def broken(name: str, old: str, new: str) -> None:
        raise RuntimeError("subscriber bug")

    rb.add_state_listener(lambda *change: seen.append(change))
    rb.add_state_listener(broken)
    caplog.set_level(logging.INFO, logger="storagefs.breaker")
    await trip(rb, faulty)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "storagefs.breaker"
    assert warnings[0].getMessage() == (
        "breaker mem closed -> open after 3 failures"
        " (last: TransientError: injected fault: stat 'k')"
    )
    await trio.sleep(10)
    faulty.set_up()
    await rb.stat("k")
    assert seen == [
        ("mem", "closed", "open"),
        ("mem", "open", "half-open"),
        ("mem", "half-open", "closed"),
    ]
    assert rb.stats.breaker_state == "closed"
    assert any("state-change callback failed" in r.getMessage() for r in caplog.records)


async def test_retry_log_line(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    rb, faulty, _ = make()
    caplog.set_level(logging.INFO, logger="storagefs.resilience")
    faulty.fail_next("stat", 1, TransientError("503 slow down"))
    await rb.stat("k")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "storagefs.resilience"]
    assert line.startswith(
        "retry 1/3 of mem stat 'k' after TransientError: 503 slow down, sleeping"
    )


async def test_latency_percentiles(autojump_clock: trio.testing.MockClock) -> None:
    rb, faulty, _ = make()
    for i in range(100, 0, -1):  # 1.00 s down to 0.01 s: order must not matter
        faulty.add_latency(i / 100, "stat")
        await rb.stat("k")
    figures = rb.stats.latency("stat")
    assert figures is not None
    assert figures.count == 100
    assert figures.p50 == pytest.approx(0.50)
    assert figures.p95 == pytest.approx(0.95)
    assert figures.p99 == pytest.approx(0.99)
    assert rb.stats.latency("read") is None


async def test_latency_window_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    memory = MemoryBackend("mem")
    memory.objects["k"] = (b"x", {}, 1.0)
    faulty = FaultyBackend(memory)
    rb = ResilientBackend(faulty, POLICY, stats_window=10)
    faulty.add_latency(4.0, "stat")
    for _ in range(10):
        await rb.stat("k")
    faulty.add_latency(1.0, "stat")
    for _ in range(10):
        await rb.stat("k")
    figures = rb.stats.latency("stat")
    assert figures is not None and figures.count == 10
    assert figures.p99 == pytest.approx(1.0)  # the slow old samples have left the window


async def test_in_flight_last_error_and_snapshot(autojump_clock: trio.testing.MockClock) -> None:
    rb, faulty, _ = make()
    await rb.stat("k")
    faulty.hang("read")
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(rb.read, "k", 0, 5)
        await trio.testing.wait_all_tasks_blocked()
        assert rb.stats.in_flight == 3
        assert rb.stats.snapshot().in_flight == 3
        faulty.release()
    assert rb.stats.in_flight == 0

    faulty.set_down(TransientError("connection reset"), "delete")
    with pytest.raises(RetriesExhausted):
        await rb.delete("k")
    last = rb.stats.last_error
    assert last is not None
    assert (last.op, last.type) == ("delete", "RetriesExhausted")
    assert "connection reset" in last.message
    assert abs(last.at - time.time()) < 60

    snap = json.loads(json.dumps(rb.stats.snapshot().to_json()))
    assert snap["backend"] == "mem"
    assert snap["breaker"] == "closed"
    assert snap["successes"] == 4 and snap["failures"] == 1
    assert snap["success_rate"] == pytest.approx(0.8)
    assert snap["consecutive_failures"] == 1
    assert snap["retries"] == 3
    assert set(snap["latency_s"]) == {"stat", "read", "delete"}
    assert snap["latency_s"]["read"]["count"] == 3
    assert snap["last_error"]["type"] == "RetriesExhausted"
    assert snap["probe_in_s"] is None


async def test_snapshot_while_open(autojump_clock: trio.testing.MockClock) -> None:
    rb, faulty, _ = make()
    await trip(rb, faulty)
    await trio.sleep(4)
    snap = rb.stats.snapshot()
    assert snap.breaker == "open"
    assert snap.probe_in_s == pytest.approx(6)
    assert snap.consecutive_failures == 3


async def test_transfers_get_time_by_size(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    # 1000 B/s floor: 20 kB gets 5 + 20 = 25 s per attempt; a 20 s transfer is not cut.
    policy = RetryPolicy(request_timeout=5, operation_deadline=10, min_bandwidth=1000)
    rb, faulty, memory = make(policy)
    source = tmp_path / "big"
    source.write_bytes(b"x" * 20_000)
    faulty.add_latency(20, ["write", "download", "copy"])
    info = await rb.write("big", str(source), {})
    assert info.size == 20_000
    assert faulty.calls["write"] == 1

    rb2 = ResilientBackend(faulty, policy)  # knows no sizes yet: asks stat once
    before = faulty.calls["stat"]
    await rb2.download("big", str(tmp_path / "copy"))
    assert faulty.calls["stat"] == before + 1
    assert (tmp_path / "copy").read_bytes() == source.read_bytes()
    await rb2.download("big", str(tmp_path / "copy2"))  # size remembered: no second stat
    await rb2.copy("big", "big2", size_hint=20_000)
    assert faulty.calls["stat"] == before + 1
    assert faulty.calls["download"] == 2 and faulty.calls["copy"] == 1

    # A small object gets no such allowance: the same 20 s latency times it out.
    memory.objects["small"] = (b"x", {}, 1.0)
    with pytest.raises(RetriesExhausted):
        await rb2.copy("small", "small2")
    assert rb2.stats.timeouts >= 1


async def test_unclassified_errors_pass_through(autojump_clock: trio.testing.MockClock) -> None:
    rb, faulty, _ = make()
    faulty.fail_next("stat", 1, RuntimeError("bug"))
    with pytest.raises(RuntimeError):
        await rb.stat("k")
    assert faulty.calls["stat"] == 1
    assert rb.breaker.fail_counter == 0
    assert rb.stats.last_error is not None and rb.stats.last_error.type == "RuntimeError"
