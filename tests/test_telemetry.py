"""Telemetry (storagefs.telemetry) and log correlation (storagefs.logs).

The New Relic agent is process-global (import hooks, a harvest thread), so every test that
starts it runs in a child process: the agent in developer mode (no network), driven through
the real ResilientBackend and our wrappers, then its internal stats engines are read the way the
agent's own test validators read them (``_stats_custom_engine.stats_table``,
``_stats_engine.custom_events``, ``error_data()``) and printed as JSON for the assertions here.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from storagefs.backends.base import Backend, BackendUnavailable, NotFound, TransientError
from storagefs.context import correlation
from storagefs.observability import metric_names as m
from storagefs.observability.logs import setup_logging
from storagefs.observability.telemetry import (
    BacklogSampler,
    InstrumentedBackend,
    NewRelicTelemetry,
    Telemetry,
    telemetry_from_environment,
)
from storagefs.resilience.backend import ResilientBackend, RetryPolicy
from tests.fakes import MemoryBackend
from tests.fault_injection import FaultyBackend

REPO = Path(__file__).resolve().parent.parent
SECRET = "TESTONLYsecretKey0123456789abcdef"

POLICY = RetryPolicy(
    request_timeout=5.0,
    retry_attempts=2,
    retry_initial_backoff=0.1,
    retry_max_backoff=1.0,
    operation_deadline=30.0,
    breaker_failures=2,
    breaker_reset=30.0,
)

# --- New Relic, in a child process ------------------------------------------------------------

_NEW_RELIC_RUN = r"""
import json, os, sys
import trio, trio.testing
from storagefs.observability import metric_names as m
from storagefs.backends.base import BackendUnavailable, NotFound
from storagefs.resilience.backend import ResilientBackend, RetryPolicy
from storagefs.observability.telemetry import NewRelicTelemetry
from tests.fakes import MemoryBackend
from tests.fault_injection import FaultyBackend

now = [100.0]
tel = NewRelicTelemetry(os.environ["NEW_RELIC_CONFIG_FILE"], clock=lambda: now[0])
started = tel.start(timeout=10.0)
from storagefs.observability.logs import setup_logging
import logging
setup_logging("INFO", "json")
key = os.environ["STORAGEFS_AZURE_ACCOUNT_KEY"]
logging.getLogger("storagefs.test").warning("careless line with %s inside", key)
policy = RetryPolicy(retry_attempts=2, breaker_failures=2, breaker_reset=30.0,
                     retry_initial_backoff=0.1, retry_max_backoff=1.0)

async def main():
    memory = MemoryBackend("primary")
    memory.objects["k"] = (b"hello", {}, 1.0)
    faulty = FaultyBackend(memory)
    rb = ResilientBackend(faulty, policy)
    tel.watch(rb)
    backend = tel.instrument(rb)
    for _ in range(3):
        await backend.stat("k")
    try:
        await backend.stat("missing")
    except NotFound:
        pass
    faulty.set_down(ops="read")
    for _ in range(2):
        try:
            await backend.read("k", 0, 5)
        except BackendUnavailable:
            pass
    with tel.background_task(m.TASK_JOURNAL_REPLAY):
        await trio.sleep(1)
        with tel.background_task(m.TASK_BULK_DOWNLOAD):  # overlaps: a metric, not a transaction
            await trio.sleep(1)
    try:
        with tel.background_task(m.TASK_BULK_DOWNLOAD):
            raise ValueError("download failed")
    except ValueError:
        pass
    with trio.move_on_after(1):
        with tel.background_task(m.TASK_JOURNAL_REPLAY):  # cancelled: stopped, not failed
            await trio.sleep_forever()

trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
tel.failover("primary", "secondary", "read")  # sent
now[0] += 1
tel.failover("primary", "secondary", "read")  # held back
tel.failover("primary", "secondary", "read")  # held back
now[0] += 10
tel.failover("primary", "secondary", "read")  # sent, count 3
tel.failover("primary", "secondary", "stat")  # another key: sent
tel.failover("primary", "secondary", "stat")  # held back until flush
tel.flush()
tel.journal_backlog(5, 1234)
try:
    raise RuntimeError("connect failed: AccountKey=" + os.environ["STORAGEFS_AZURE_ACCOUNT_KEY"])
except RuntimeError as exc:
    tel.notice_error(exc)

import newrelic.core.agent
core = newrelic.core.agent.agent_instance()._applications[tel.application.name]
print(json.dumps({
    "started": started,
    "app": tel.application.name,
    "custom_metrics": {k[0]: list(v) for k, v in core._stats_custom_engine.stats_table.items()},
    "metrics": sorted(k[0] for k in core._stats_engine.stats_table),
    "events": [[e[0]["type"], e[1]] for e in core._stats_engine.custom_events],
    "logs": [e.message for e in core._stats_engine.log_events],
    "errors": [[e.type, e.message, e.parameters["intrinsics"].get("transactionName")]
               for e in core._stats_engine.error_data()],
}))
tel.shutdown(timeout=1.0)
"""


def run_python(code: str, env: dict[str, str], timeout: float = 60.0) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    doc: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    doc["stderr"] = result.stderr
    return doc


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEW_RELIC_")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def new_relic_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ini = tmp_path_factory.mktemp("newrelic") / "newrelic.ini"
    ini.write_text(
        "[newrelic]\n"
        "app_name = storagefs-test\n"
        "developer_mode = true\n"
        "log_file = stderr\n"
        "log_level = warning\n"
    )
    return run_python(
        _NEW_RELIC_RUN,
        child_env(NEW_RELIC_CONFIG_FILE=str(ini), STORAGEFS_AZURE_ACCOUNT_KEY=SECRET),
    )


def test_new_relic_backend_metrics_under_documented_names(new_relic_run: dict[str, Any]) -> None:
    assert new_relic_run["started"] is True
    assert new_relic_run["app"] == "storagefs-test"
    custom = new_relic_run["custom_metrics"]
    latency = m.NR_BACKEND_LATENCY.format(backend="primary", op="stat")
    errors = m.NR_BACKEND_ERRORS.format(backend="primary", op="stat")
    assert custom[latency][0] == 4  # three results and one NotFound: all answers
    assert errors not in custom
    read_latency = m.NR_BACKEND_LATENCY.format(backend="primary", op="read")
    read_errors = m.NR_BACKEND_ERRORS.format(backend="primary", op="read")
    assert custom[read_latency][0] == 2
    assert custom[read_errors][0] == 2 and custom[read_errors][1] == 2  # count, total
    assert custom[m.NR_JOURNAL_PENDING_OPS][1] == 5
    assert custom[m.NR_JOURNAL_PENDING_BYTES][1] == 1234
    overlapped = m.NR_TASK_OVERLAPPED.format(task=m.TASK_BULK_DOWNLOAD)
    assert custom[overlapped][0] == 1
    documented = [doc.name for doc in m.NEW_RELIC if doc.kind == "metric"]
    ours = [name for name in custom if name.startswith("Custom/")]
    assert len(ours) >= 6
    for name in ours:
        assert any(_matches(template, name) for template in documented), name


def _matches(template: str, name: str) -> bool:
    head, _, _ = template.partition("{")
    tail = template.rpartition("}")[2]
    return name.startswith(head) and name.endswith(tail) if "{" in template else name == template


def test_new_relic_events_breaker_failover_backlog(new_relic_run: dict[str, Any]) -> None:
    events = new_relic_run["events"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for kind, attrs in events:
        by_type.setdefault(kind, []).append(attrs)
    assert set(by_type) == {m.EVENT_BREAKER_CHANGE, m.EVENT_FAILOVER, m.EVENT_JOURNAL_BACKLOG}
    assert by_type[m.EVENT_BREAKER_CHANGE] == [
        {"backend": "primary", "old_state": "closed", "new_state": "open"}
    ]
    failovers = sorted(
        (a["op"], a["count"]) for a in by_type[m.EVENT_FAILOVER] if a["from_backend"] == "primary"
    )
    assert failovers == [("read", 1), ("read", 3), ("stat", 1), ("stat", 1)]
    assert by_type[m.EVENT_JOURNAL_BACKLOG] == [{"pending_ops": 5, "pending_bytes": 1234}]
    for doc in m.NEW_RELIC:
        if doc.kind == "event":
            attrs = {a.strip() for a in doc.labels.split(",")}
            for sent in by_type[doc.name]:
                assert attrs <= set(sent), (doc.name, sent)


def test_new_relic_background_transactions_and_errors(new_relic_run: dict[str, Any]) -> None:
    metrics = new_relic_run["metrics"]
    for task in (m.TASK_JOURNAL_REPLAY, m.TASK_BULK_DOWNLOAD):
        assert m.NR_TRANSACTION.format(task=task) in metrics
    # The failed download is an error of its transaction; the cancelled replay is not.
    assert "Errors/" + m.NR_TRANSACTION.format(task=m.TASK_BULK_DOWNLOAD) in metrics
    assert "Errors/" + m.NR_TRANSACTION.format(task=m.TASK_JOURNAL_REPLAY) not in metrics
    errors = [e[:2] for e in new_relic_run["errors"]]
    assert ["builtins:ValueError", "download failed"] in errors
    # notice_error: a message holding a secret is sent as a RedactedError, scrubbed.
    assert [
        "storagefs.observability.telemetry:RedactedError",
        "RuntimeError: connect failed: AccountKey=<redacted>",
    ] in errors
    assert len(errors) == 2
    # Log lines forwarded by the agent were scrubbed before it saw them.
    assert "careless line with <redacted> inside" in new_relic_run["logs"]
    assert SECRET not in json.dumps(new_relic_run)
    assert "Runtime instrumentation error" not in new_relic_run["stderr"]


_WITHOUT_NEW_RELIC = r"""
import json, sys
from storagefs.observability.telemetry import NewRelicTelemetry, telemetry_from_environment
tel = telemetry_from_environment({})
started = tel.start()
tel.record_backend_call("s3", "stat", 0.1, False)
tel.breaker_changed("s3", "closed", "open")
tel.failover("s3", "azure", "read")
tel.journal_backlog(1, 2)
with tel.background_task("journal-replay"):
    pass
tel.notice_error(ValueError("x"))
tel.shutdown()
imported = "newrelic" in sys.modules
bad = NewRelicTelemetry("/nonexistent/newrelic.ini")
print(json.dumps({"type": type(tel).__name__, "started": started, "imported": imported,
                  "bad_started": bad.start(timeout=1.0), "bad_enabled": bad.enabled}))
"""


def test_without_new_relic_nothing_is_imported_and_a_bad_config_does_not_stop_us() -> None:
    result = run_python(_WITHOUT_NEW_RELIC, child_env())
    assert result["type"] == "Telemetry"
    assert result["started"] is False
    assert result["imported"] is False  # no agent on the hot path when telemetry is off
    assert result["bad_started"] is False and result["bad_enabled"] is False
    assert "New Relic not started" in result["stderr"] or result["stderr"] == ""


def test_telemetry_from_environment_chooses_by_variables() -> None:
    assert type(telemetry_from_environment({})) is Telemetry
    by_key = telemetry_from_environment({"NEW_RELIC_LICENSE_KEY": "k" * 40})
    assert isinstance(by_key, NewRelicTelemetry) and by_key.config_file is None
    by_file = telemetry_from_environment({"NEW_RELIC_CONFIG_FILE": "/etc/newrelic.ini"})
    assert isinstance(by_file, NewRelicTelemetry) and by_file.config_file == "/etc/newrelic.ini"
    assert not by_file.enabled  # nothing happens before start()


# --- the hooks, with a recording telemetry ------------------------------------------------------


class Recorder(Telemetry):
    enabled = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []
        self.breakers: list[tuple[str, str, str]] = []
        self.backlog: list[tuple[int, int]] = []

    def record_backend_call(self, backend: str, op: str, seconds: float, ok: bool) -> None:
        assert seconds >= 0
        self.calls.append((backend, op, ok))

    def breaker_changed(self, backend: str, old: str, new: str) -> None:
        self.breakers.append((backend, old, new))

    def journal_backlog(self, pending_ops: int, pending_bytes: int) -> None:
        self.backlog.append((pending_ops, pending_bytes))


def resilient() -> tuple[ResilientBackend, FaultyBackend]:
    memory = MemoryBackend("mem")
    memory.objects["k"] = (b"hello", {"mode": "33188"}, 1.0)
    faulty = FaultyBackend(memory)
    return ResilientBackend(faulty, POLICY), faulty


async def test_instrumented_backend_reports_every_call(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    rb, faulty = resilient()
    recorder = Recorder()
    backend = recorder.instrument(rb)
    assert isinstance(backend, InstrumentedBackend)
    assert isinstance(backend, Backend)
    assert backend.name == "mem"
    assert backend.stats is rb.stats  # the wrapped backend's figures stay reachable
    assert backend.breaker_state == "closed"

    assert await backend.read("k", 0, 5) == b"hello"
    with pytest.raises(NotFound):
        await backend.stat("nope")
    dest = tmp_path / "d"
    await backend.download("k", str(dest), size_hint=5)
    assert dest.read_bytes() == b"hello"
    await backend.write_bytes("w", b"x", {})
    await backend.copy("w", "w2")
    await backend.delete("w2")
    page = await backend.list("")
    assert "k" in [o.key for o in page.objects]
    faulty.fail_next("health", 1, TransientError)
    with pytest.raises(BackendUnavailable):
        await backend.health()
    with trio.move_on_after(1):  # a cancelled call is not reported
        faulty.hang("stat")
        await backend.stat("k")
    faulty.release()
    assert recorder.calls == [
        ("mem", "read", True),
        ("mem", "stat", True),
        ("mem", "download", True),
        ("mem", "write_bytes", True),
        ("mem", "copy", True),
        ("mem", "delete", True),
        ("mem", "list", True),
        ("mem", "health", False),
    ]


async def test_watch_reports_breaker_transitions(autojump_clock: trio.testing.MockClock) -> None:
    rb, faulty = resilient()
    recorder = Recorder()
    recorder.watch(rb)
    faulty.set_down()
    for _ in range(POLICY.breaker_failures):
        with pytest.raises(BackendUnavailable):
            await rb.stat("k")
    faulty.set_up()
    autojump_clock.jump(POLICY.breaker_reset)
    await rb.stat("k")
    assert recorder.breakers == [
        ("mem", "closed", "open"),
        ("mem", "open", "half-open"),
        ("mem", "half-open", "closed"),
    ]


async def test_disabled_telemetry_changes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    rb, _ = resilient()
    off = Telemetry()
    assert off.instrument(rb) is rb
    off.watch(rb)
    assert rb._callbacks == []
    with off.background_task(m.TASK_JOURNAL_REPLAY):
        pass


async def test_backlog_sampler_samples_until_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()
    figures = iter(range(100))

    def source() -> tuple[int, int]:
        n = next(figures)
        if n == 1:
            raise RuntimeError("one bad sample is logged, not fatal")
        return n, n * 10

    sampler = BacklogSampler(recorder, source, interval=60.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sampler.run)
        await trio.sleep(150)  # samples at 0, 60, 120
        sampler.stop()
    assert recorder.backlog == [(0, 0), (2, 20)]
    off = BacklogSampler(Telemetry(), source, interval=60.0)
    with trio.fail_after(1):
        await off.run()  # returns at once when telemetry is off


# --- log correlation ----------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    factory = logging.getLogRecordFactory()  # setup_logging installs a redacting one
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.setLogRecordFactory(factory)


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]


async def test_request_ids_follow_requests_into_tasks_and_threads(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    setup_logging("DEBUG", "json")  # here, not in a fixture: it binds the captured stderr
    log = logging.getLogger("storagefs.test")

    async def request(name: str, done: trio.Event) -> None:
        with correlation("fuse") as rid:
            log.info("%s start %s", name, rid)
            await trio.lowlevel.checkpoint()  # the other request runs here
            async with trio.open_nursery() as nursery:
                nursery.start_soon(child, name)
            await trio.to_thread.run_sync(lambda: log.info("%s in a thread", name))
        done.set()

    async def child(name: str) -> None:
        log.info("%s in a child task", name)

    log.info("before")
    a, b = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(request, "a", a)
        nursery.start_soon(request, "b", b)
    log.info("after")
    records = lines(capsys)
    by_message = {r["message"]: r.get("request_id") for r in records}
    assert by_message["before"] is None and by_message["after"] is None
    rid_a = next(v for k, v in by_message.items() if k.startswith("a start"))
    rid_b = next(v for k, v in by_message.items() if k.startswith("b start"))
    assert rid_a and rid_b and rid_a != rid_b
    assert rid_a.startswith("fuse-")
    assert by_message["a start " + rid_a] == rid_a
    assert by_message["a in a child task"] == rid_a
    assert by_message["a in a thread"] == rid_a
    assert by_message["b in a child task"] == rid_b
    assert by_message["b in a thread"] == rid_b


def test_text_logs_carry_the_request_id(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    setup_logging("INFO", "text")
    log = logging.getLogger("storagefs.test")
    with correlation("fuse") as rid:
        log.info("inside")
    log.info("outside")
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith(f"storagefs.test: inside [{rid}]")
    assert err[1].endswith("storagefs.test: outside")


def test_sdk_loggers_stay_quiet_at_debug(restore_logging: None) -> None:
    setup_logging("DEBUG", "json")
    for name in ("azure", "urllib3", "botocore", "newrelic"):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING, name
