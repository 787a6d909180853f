"""The /.health report (storagefs.health), `storagefs health` (storagefs.probe + cli), the
metric catalog against docs/METRICS.md, and the no-secrets promise across health files, logs,
Prometheus text, error messages and describe().

Backends are real ResilientBackends over FaultyBackend(MemoryBackend) on trio's MockClock, so
breaker states, failure counts and latencies come from real calls; chain-shaped states that are
slow to provoke (an old backlog, quarantined entries) use a status dict of the same shape, and
one test drives a real FallbackChain.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from click.testing import CliRunner
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from storagefs.backends.azure import AzureBackend
from storagefs.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    NotFound,
    TransientError,
)
from storagefs.backends.s3 import S3Backend
from storagefs.chain.cache import CacheStats
from storagefs.chain.fallback import ChainStatus, FallbackChain, RemoteView
from storagefs.cli.main import main
from storagefs.cli.probe import ProbeError, default_mountpoint
from storagefs.config import Settings
from storagefs.devtools.emulators import free_port
from storagefs.journal.replay import TargetSnapshot
from storagefs.journal.store import JournalStats, TargetBacklog
from storagefs.mounts_table import storagefs_mounts
from storagefs.observability import metric_names as m
from storagefs.observability.health import (
    CoreFigures,
    HealthReport,
    HealthRules,
    backend_file,
)
from storagefs.observability.logs import setup_logging
from storagefs.observability.redact import Redactor
from storagefs.resilience.backend import ResilientBackend, RetryPolicy
from storagefs.resilience.stats import LastError, RemoteSnapshot
from tests.fakes import MemoryBackend
from tests.fault_injection import FaultyBackend

REPO = Path(__file__).resolve().parent.parent

POLICY = RetryPolicy(
    request_timeout=5.0,
    retry_attempts=3,
    retry_initial_backoff=0.1,
    retry_max_backoff=1.0,
    operation_deadline=30.0,
    breaker_failures=2,
    breaker_reset=30.0,
)


def remote(name: str) -> tuple[ResilientBackend, FaultyBackend]:
    memory = MemoryBackend(name)
    memory.objects["k"] = (b"hello", {"mode": "33188"}, 1_000_000_000)
    faulty = FaultyBackend(memory)
    return ResilientBackend(faulty, POLICY), faulty


def reasons(status: dict[str, Any]) -> list[str]:
    return list(status["reasons"])


def docs(report: HealthReport) -> dict[str, Any]:
    """The JSON files of the report, parsed."""
    return {k: json.loads(v) for k, v in report.files().items() if k.endswith(".json")}


def prom(report: HealthReport) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = report.files()["metrics.prom"].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def trip(rb: ResilientBackend, faulty: FaultyBackend) -> None:
    faulty.set_down()
    for _ in range(POLICY.breaker_failures):
        with pytest.raises(BackendUnavailable):
            await rb.stat("k")
    assert rb.breaker_state == "open"


class StatusChain:
    """Answers status() with a document shaped like FallbackChain.status()."""

    def __init__(self, **overrides: Any) -> None:
        self.doc: dict[str, Any] = {
            "name": "chain",
            "write_mode": "through",
            "remotes": [
                self.remote("a", "primary"),
                self.remote("b", "secondary"),
            ],
            "journal": {
                "pending_entries": 0,
                "pending_bytes": 0,
                "max_bytes": 1000,
                "oldest_age": None,
                "quarantined": 0,
                "recovered_orphans": 0,
                "targets": {
                    "a": {"pending_ops": 0, "pending_bytes": 0, "oldest_age": None},
                    "b": {"pending_ops": 0, "pending_bytes": 0, "oldest_age": None},
                },
            },
            "cache": {
                "enabled": True,
                "objects": 2,
                "bytes": 300,
                "max_bytes": 1000,
                "hits": 3,
                "misses": 1,
                "evictions": 4,
                "stores": 5,
            },
            "stale_reads": 0,
            "journal_only_writes": 0,
        }
        self.doc.update(overrides)

    @staticmethod
    def remote(name: str, role: str, reachable: bool | None = True) -> dict[str, Any]:
        return {
            "name": name,
            "role": role,
            "backend": f"memory://{name}",
            "reachable": reachable,
            "since": 1700000000.0,
            "failures": 0,
            "last_error": None,
            "replay": {
                "up": True,
                "in_flight": 0,
                "applied": 7,
                "failures": 0,
                "quarantined": 0,
                "last_error": None,
                "retry_in": None,
            },
            "pending_ops": 0,
            "pending_bytes": 0,
            "oldest_pending_age": None,
        }

    def status(self) -> ChainStatus:
        """The document as the typed snapshot FallbackChain.status() returns."""
        doc = self.doc
        return ChainStatus(
            name=doc["name"],
            write_mode=doc["write_mode"],
            remotes=tuple(_view(r) for r in doc["remotes"]),
            journal=_journal_stats(doc["journal"]),
            cache=CacheStats(**doc["cache"]),
            stale_reads=doc["stale_reads"],
            last_stale_read=doc.get("last_stale_read"),
            journal_only_writes=doc["journal_only_writes"],
        )


def _journal_stats(doc: dict[str, Any]) -> JournalStats:
    targets = {
        name: TargetBacklog(**{"configured": True, **queue})
        for name, queue in doc["targets"].items()
    }
    return JournalStats(**{**doc, "targets": targets})


def _view(doc: dict[str, Any]) -> RemoteView:
    text = doc["last_error"]
    error = None
    if text:
        kind, _, message = text.partition(": ")
        error = LastError(op="stat", type=kind, message=message, at=1700000000.0)
    state = RemoteSnapshot(
        backend=doc["name"],
        breaker="closed",
        probe_in_s=None,
        consecutive_failures=0,
        in_flight=0,
        successes=0,
        failures=doc["failures"],
        rejected=0,
        retries=0,
        timeouts=0,
        success_rate=None,
        window=0,
        latency_s={},
        last_error=error,
        reachable=doc["reachable"],
        reachable_since=doc["since"],
        unwell=False,
        unwell_reason=None,
    )
    return RemoteView(
        name=doc["name"],
        role=doc["role"],
        backend=doc["backend"],
        state=state,
        replay=TargetSnapshot(**doc["replay"]),
        pending_ops=doc["pending_ops"],
        pending_bytes=doc["pending_bytes"],
        oldest_pending_age=doc["oldest_pending_age"],
    )


# --- states -------------------------------------------------------------------------------


async def test_healthy_remotes_report_ok_with_latency_percentiles(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, fa = remote("a")
    b, _ = remote("b")
    fa.add_latency(0.25, "stat")
    for _ in range(4):
        await a.stat("k")
    with pytest.raises(NotFound):  # an answer, not a failure
        await b.stat("missing")
    report = HealthReport([a, b], core=lambda: CoreFigures(dirty_files=2, invalid_keys=3))

    files = docs(report)
    status = files["status.json"]
    assert status["status"] == "ok", status["reasons"]
    assert status["reasons"] == []
    assert [r["name"] for r in status["remotes"]] == ["a", "b"]
    assert all(r["available"] for r in status["remotes"])
    assert (status["dirty_files"], status["invalid_keys"]) == (2, 3)

    backend_a = files[backend_file("a")]
    assert backend_a["breaker"] == "closed"
    assert backend_a["consecutive_failures"] == 0
    assert backend_a["success_rate"] == 1.0
    assert backend_a["stats"]["latency_s"]["stat"] == {
        "count": 4,
        "p50": pytest.approx(0.25),
        "p95": pytest.approx(0.25),
        "p99": pytest.approx(0.25),
    }
    assert backend_a["stats"]["in_flight"] == 0
    assert files[backend_file("b")]["last_error"] is None  # NotFound is routine
    # No chain: the journal and cache files still exist, with zeros.
    assert files["journal.json"]["pending_entries"] == 0
    assert files["journal.json"]["backends"] == {}
    assert files["cache.json"]["bytes"] == 0
    assert files["cache.json"]["hit_rate"] is None


async def test_open_breaker_degrades_and_every_open_breaker_is_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, fa = remote("a")
    b, fb = remote("b")
    report = HealthReport([a, b])
    await trip(a, fa)

    files = docs(report)
    status = files["status.json"]
    assert status["status"] == "degraded"
    assert any(
        "a: circuit breaker open" in r and "RetriesExhausted" in r for r in status["reasons"]
    ), status["reasons"]
    backend_a = files[backend_file("a")]
    assert backend_a["available"] is False
    assert backend_a["breaker"] == "open"
    assert backend_a["consecutive_failures"] == POLICY.breaker_failures
    assert backend_a["success_rate"] < 1.0
    err = backend_a["last_error"]
    assert err["type"] == "RetriesExhausted" and "injected fault" in err["message"]
    assert abs(err["at"] - time.time()) < 60  # wall clock, for people

    await trip(b, fb)
    status = docs(report)["status.json"]
    assert status["status"] == "down"
    assert status["reasons"][0] == "no remote backend answers"

    # The breaker half-opens after its reset time: still not available, still down.
    autojump_clock.jump(POLICY.breaker_reset + 1)
    fa.set_up()
    await a.stat("k")  # the probe answers: closed again
    status = docs(report)["status.json"]
    assert status["status"] == "degraded"
    assert [r["available"] for r in status["remotes"]] == [True, False]


async def test_failing_retries_degrade_before_the_breaker_opens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, fa = remote("a")
    fa.set_down(ops="read")
    with pytest.raises(BackendUnavailable):
        await a.read("k", 0, 5)
    report = HealthReport([a])
    status = docs(report)["status.json"]
    assert a.breaker_state == "closed"
    assert status["status"] == "degraded"
    assert any("last 1 operation(s) failed after all retries" in r for r in status["reasons"])
    fa.set_up()
    await a.read("k", 0, 5)  # one answer clears it
    assert docs(report)["status.json"]["status"] == "ok"


def test_chain_states_backlog_quarantine_full_journal_and_unreachable() -> None:
    chain = StatusChain()
    report = HealthReport(chain=chain, rules=HealthRules(backlog_age=60.0))
    assert docs(report)["status.json"]["status"] == "ok"

    # Young backlog: fine. Old backlog: degraded, naming the remote and the figures.
    targets = chain.doc["journal"]["targets"]
    targets["b"] = {"pending_ops": 3, "pending_bytes": 3 * 1024 * 1024, "oldest_age": 30.0}
    assert docs(report)["status.json"]["status"] == "ok"
    targets["b"]["oldest_age"] = 90.0
    files = docs(report)
    assert files["status.json"]["status"] == "degraded"
    assert files["status.json"]["reasons"] == [
        "journal backlog for secondary b: 3 operation(s), 3.0 MiB, oldest 90 s old"
    ]
    assert files["journal.json"]["backends"]["b"]["pending_ops"] == 3
    assert files["journal.json"]["backends"]["b"]["oldest_age_s"] == 90.0
    assert files[backend_file("b")]["pending_bytes"] == 3 * 1024 * 1024
    targets["b"] = {"pending_ops": 0, "pending_bytes": 0, "oldest_age": None}

    chain.doc["journal"]["quarantined"] = 2
    chain.doc["journal"]["pending_bytes"] = 950
    reasons = docs(report)["status.json"]["reasons"]
    assert any("journal 95% full" in r for r in reasons), reasons
    assert any("2 journal entries quarantined" in r for r in reasons), reasons
    chain.doc["journal"]["quarantined"] = 0
    chain.doc["journal"]["pending_bytes"] = 0

    chain.doc["remotes"][0]["reachable"] = False
    chain.doc["remotes"][0]["last_error"] = "RetriesExhausted: a stat 'x': gave up"
    status = docs(report)["status.json"]
    assert status["status"] == "degraded"
    assert status["reasons"] == [
        "primary a is not answering; last error: RetriesExhausted: a stat 'x': gave up"
    ]
    chain.doc["remotes"][1]["reachable"] = False
    assert docs(report)["status.json"]["status"] == "down"


def test_stale_reads_degrade_for_one_window() -> None:
    now = [1000.0]
    chain = StatusChain()
    report = HealthReport(chain=chain, clock=lambda: now[0])
    assert docs(report)["status.json"]["status"] == "ok"
    now[0] += 5
    chain.doc["stale_reads"] = 2
    status = docs(report)["status.json"]
    assert status["status"] == "degraded"
    assert status["stale_reads_recent"] == 2
    assert any(
        "2 read(s) in the last 60 s served from the local cache" in r for r in reasons(status)
    )
    now[0] += 30
    assert docs(report)["status.json"]["status"] == "degraded"  # still within the minute
    now[0] += 31
    status = docs(report)["status.json"]
    assert status["status"] == "ok", status["reasons"]
    assert (status["stale_reads"], status["stale_reads_recent"]) == (2, 0)
    now[0] += 1
    chain.doc["stale_reads"] = 3
    assert docs(report)["status.json"]["stale_reads_recent"] == 1


def test_cache_file() -> None:
    cache = docs(HealthReport(chain=StatusChain()))["cache.json"]
    assert cache["bytes"] == 300 and cache["max_bytes"] == 1000
    assert cache["hit_rate"] == 0.75
    assert cache["evictions"] == 4


# --- robustness -----------------------------------------------------------------------------


class BrokenChain:
    def status(self) -> dict[str, Any]:
        raise RuntimeError("chain exploded")


class BrokenStats:
    def snapshot(self) -> dict[str, Any]:
        raise ZeroDivisionError("stats exploded")


class BrokenBackend:
    name = "broken"
    stats = BrokenStats()
    breaker_state = "closed"


async def test_internal_errors_become_reasons_and_are_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    good, _ = remote("good")

    def core() -> CoreFigures:
        raise KeyError("core exploded")

    report = HealthReport([good, BrokenBackend()], BrokenChain(), core=core)
    with caplog.at_level(logging.DEBUG, logger="storagefs.health"):
        first = report.files()
        report.files()
    status = json.loads(first["status.json"])
    assert status["status"] == "degraded"
    assert "health report incomplete: chain: RuntimeError" in status["reasons"]
    assert "health report incomplete: backend broken: ZeroDivisionError" in status["reasons"]
    assert "health report incomplete: core: KeyError" in status["reasons"]
    assert set(first) >= {"status.json", "journal.json", "cache.json", "metrics.prom"}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3  # once per kind, though the files were built twice
    samples = prom(report)
    assert samples[(m.PROM_REPORT_ERRORS, ())] == 9  # three per build, three builds


def test_a_report_that_cannot_be_built_at_all_still_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    report = HealthReport()
    report.snapshot = None  # type: ignore[assignment,method-assign]
    with caplog.at_level(logging.ERROR, logger="storagefs.health"):
        files = report.files()
    assert json.loads(files["status.json"])["status"] == "degraded"
    assert caplog.records


async def test_files_do_no_backend_calls_and_names_match(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, fa = remote("a/odd name")
    report = HealthReport([a], StatusChain())
    before = sum(fa.calls.values())
    files = report.files()
    assert sum(fa.calls.values()) == before
    assert sorted(report.names()) == sorted(files)
    assert "backends/a_odd_name.json" in files  # a name is one safe path component


# --- a real chain -----------------------------------------------------------------------------


async def test_real_chain_down_with_stale_reads_and_journal_backlog(tmp_path: Path) -> None:
    policy = RetryPolicy(
        request_timeout=2.0,
        retry_attempts=1,
        retry_initial_backoff=0.01,
        retry_max_backoff=0.02,
        operation_deadline=5.0,
        breaker_failures=1,
        breaker_reset=600.0,
    )
    faults = [FaultyBackend(MemoryBackend("primary")), FaultyBackend(MemoryBackend("secondary"))]
    rbs = [ResilientBackend(f, policy) for f in faults]
    settings = Settings(
        cache_dir=tmp_path,
        write_deadline=0.3,
        retry_initial_backoff=0.01,
        breaker_reset=600.0,
        cache_max_bytes=10**6,
    )
    chain = FallbackChain.from_settings(rbs, settings)
    report = HealthReport(rbs, chain)
    await chain.open()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(chain.run)
            await chain.write_bytes("a", b"cached", {"mode": "33188"})
            assert await chain.flush(5.0)
            assert docs(report)["status.json"]["status"] == "ok"

            for f in faults:
                f.set_down()
            assert await chain.read("a", 0, 100) == b"cached"  # stale, from the cache
            await chain.write_bytes("b", b"journal only", {"mode": "33188"})
            files = docs(report)
            chain.stop()
    finally:
        await chain.close()

    status = files["status.json"]
    assert status["status"] == "down", status
    assert status["stale_reads"] == 1 and status["stale_reads_recent"] == 1
    assert status["journal"]["pending_entries"] >= 1
    assert {r["name"]: r["available"] for r in status["remotes"]} == {
        "primary": False,
        "secondary": False,
    }
    assert files["journal.json"]["backends"]["primary"]["pending_ops"] >= 1
    assert files["journal.json"]["backends"]["primary"]["pending_bytes"] >= len(b"journal only")
    assert files["cache.json"]["hits"] >= 1
    assert files[backend_file("primary")]["breaker"] == "open"
    assert files[backend_file("primary")]["role"] == "primary"


# --- Prometheus -------------------------------------------------------------------------------


async def test_metrics_prom_matches_the_json_and_the_catalog(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, fa = remote("a")
    b, _ = remote("b")
    await a.stat("k")
    await trip(a, fa)
    await b.read("k", 0, 5)
    chain = StatusChain()
    chain.doc["journal"]["targets"]["a"] = {
        "pending_ops": 4,
        "pending_bytes": 40,
        "oldest_age": 12.5,
    }
    chain.doc["journal"]["pending_entries"] = 4
    chain.doc["stale_reads"] = 6
    report = HealthReport([a, b], chain, core=lambda: CoreFigures(dirty_files=1, invalid_keys=5))
    before = {family.name for family in REGISTRY.collect()}
    text = report.files()["metrics.prom"].decode()
    assert {family.name for family in REGISTRY.collect()} == before  # no global registry

    families = list(text_string_to_metric_families(text))
    catalog = {doc.name for doc in m.PROMETHEUS}
    exposed = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    assert exposed == catalog  # every family documented, every documented family present

    samples = prom(report)
    assert samples[(m.PROM_STATUS, ())] == 1  # degraded
    assert samples[(m.PROM_BACKEND_AVAILABLE, (("backend", "a"),))] == 0
    assert samples[(m.PROM_BACKEND_AVAILABLE, (("backend", "b"),))] == 1
    assert samples[(m.PROM_BACKEND_BREAKER_STATE, (("backend", "a"), ("state", "open")))] == 1
    assert samples[(m.PROM_BACKEND_BREAKER_STATE, (("backend", "a"), ("state", "closed")))] == 0
    assert samples[(m.PROM_BACKEND_CONSECUTIVE_FAILURES, (("backend", "a"),))] == 2
    ops_a = {
        labels[1][1]: v
        for (name, labels), v in samples.items()
        if name == m.PROM_BACKEND_OPERATIONS and labels[0] == ("backend", "a")
    }
    assert ops_a == {"answered": 1, "failed": 2, "rejected": 0}
    assert samples[(m.PROM_BACKEND_RETRIES, (("backend", "a"),))] == a.stats.retries > 0
    latency = (m.PROM_BACKEND_LATENCY, (("backend", "b"), ("op", "read"), ("quantile", "0.99")))
    assert latency in samples
    assert samples[(m.PROM_JOURNAL_PENDING_OPS, (("backend", "a"),))] == 4
    assert samples[(m.PROM_JOURNAL_OLDEST_AGE, (("backend", "a"),))] == 12.5
    assert (m.PROM_JOURNAL_OLDEST_AGE, (("backend", "b"),)) not in samples  # nothing pending
    assert samples[(m.PROM_JOURNAL_ENTRIES, ())] == 4
    assert samples[(m.PROM_CACHE_HITS, ())] == 3
    assert samples[(m.PROM_STALE_READS, ())] == 6
    assert samples[(m.PROM_DIRTY_FILES, ())] == 1
    assert samples[(m.PROM_INVALID_KEYS, ())] == 5


def test_metrics_doc_is_generated_from_the_catalog() -> None:
    text = (REPO / "docs" / "METRICS.md").read_text()
    assert text == m.render_markdown(), (
        "docs/METRICS.md is out of date: "
        "python -m storagefs.observability.metric_names > docs/METRICS.md"
    )
    names = [doc.name for doc in m.CATALOG]
    assert len(names) == len(set(names))
    for doc in m.CATALOG:
        assert f"`{doc.name}`" in text


def test_health_doc_covers_files_states_and_probes() -> None:
    text = (REPO / "docs" / "HEALTH.md").read_text()
    for needle in (
        "status.json",
        "journal.json",
        "cache.json",
        "metrics.prom",
        "backends/",
        "`ok`",
        "`degraded`",
        "`down`",
        "storagefs health",
        "[Service]",  # systemd
        "livenessProbe",  # Kubernetes
    ):
        assert needle in text, needle


# --- storagefs health -------------------------------------------------------------------------


def write_health(root: Path, report: HealthReport) -> Path:
    """A directory shaped like a mount: MOUNT/.health/<the report's files>."""
    for rel, content in report.files().items():
        path = root / ".health" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


async def test_cli_health_exit_codes_table_and_json(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    a, fa = remote("alpha")
    b, fb = remote("beta")
    await a.stat("k")
    runner = CliRunner()

    ok_dir = write_health(tmp_path / "ok", HealthReport([a, b]))
    result = runner.invoke(main, ["health", str(ok_dir)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "alpha" in result.output and "beta" in result.output

    await trip(a, fa)
    degraded_dir = write_health(tmp_path / "degraded", HealthReport([a, b]))
    result = runner.invoke(main, ["health", str(degraded_dir)])
    assert result.exit_code == 1, result.output
    assert "DEGRADED" in result.output
    assert "circuit breaker open" in result.output
    assert "RetriesExhausted" in result.output  # the last error column

    result = runner.invoke(main, ["health", "--json", str(degraded_dir)])
    assert result.exit_code == 1
    assert result.output == (degraded_dir / ".health" / "status.json").read_text()
    assert json.loads(result.output)["status"] == "degraded"

    await trip(b, fb)
    down_dir = write_health(tmp_path / "down", HealthReport([a, b]))
    result = runner.invoke(main, ["health", str(down_dir)])
    assert result.exit_code == 2
    assert "DOWN" in result.output and "no remote backend answers" in result.output


def test_cli_health_hung_mount_answers_within_the_timeout(tmp_path: Path) -> None:
    health = tmp_path / ".health"
    health.mkdir()
    os.mkfifo(health / "status.json")  # opening it blocks, like a request to a hung mount
    started = time.monotonic()
    result = CliRunner().invoke(main, ["health", "--timeout", "0.5", str(tmp_path)])
    elapsed = time.monotonic() - started
    assert result.exit_code == 2
    assert elapsed < 3.0
    assert result.output.strip().splitlines() == [
        f"storagefs: error: {tmp_path} did not answer within 0.5 s (the mount may be hung)"
    ]


def test_cli_health_without_health_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["health", str(tmp_path)])
    assert result.exit_code == 2
    assert "no health files" in result.output
    (tmp_path / ".health").mkdir()
    (tmp_path / ".health" / "status.json").write_text("not json")
    result = CliRunner().invoke(main, ["health", str(tmp_path)])
    assert result.exit_code == 2
    assert "status.json is not valid JSON" in result.output


def test_default_mountpoint_from_proc_mounts(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    other = "proc /proc proc rw 0 0\n/dev/sda1 / ext4 rw 0 0\n"
    ours = "storagefs /mnt/my\\040data fuse.storagefs rw,nosuid 0 0\n"
    mounts.write_text(other + ours)
    assert storagefs_mounts(str(mounts)) == [Path("/mnt/my data")]
    assert default_mountpoint(str(mounts)) == Path("/mnt/my data")
    mounts.write_text(other)
    with pytest.raises(ProbeError, match="no storagefs mount found"):
        default_mountpoint(str(mounts))
    mounts.write_text(other + ours + ours.replace("my\\040data", "second"))
    with pytest.raises(ProbeError, match="several storagefs mounts"):
        default_mountpoint(str(mounts))


# --- secrets ----------------------------------------------------------------------------------

AWS_SECRET = "AwsSecretKEY0123456789+abcdefXYZ/TESTONLY"
# Valid base64, as real keys are: the SDK signs every request with them.
ACCOUNT_KEY = base64.b64encode(b"TESTONLY account key \xfb\xff secret 0123456789ab").decode()
CONN_KEY = base64.b64encode(b"TESTONLY connection string key \xfb\xff 0123456789").decode()
SAS_SIG = "SasSignature0123456789abcdefTESTONLY%3D"
SAS_TOKEN = f"sv=2023-11-03&ss=b&srt=sco&sp=rwdlac&se=2099-01-01T00:00:00Z&sig={SAS_SIG}"
SECRETS = (AWS_SECRET, ACCOUNT_KEY, CONN_KEY, SAS_SIG, "SasSignature0123456789abcdefTESTONLY")


def leaked(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def calls_of(rb: ResilientBackend) -> list[Callable[[], Awaitable[object]]]:
    return [
        lambda: rb.stat("dir/key"),
        lambda: rb.read("dir/key", 0, 10),
        lambda: rb.write_bytes("dir/key", b"x", {"mode": "33188"}),
        lambda: rb.list("dir/"),
        rb.health,
    ]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    factory = logging.getLogRecordFactory()  # setup_logging installs a redacting one
    levels = {name: logging.getLogger(name).level for name in ("azure", "urllib3", "botocore")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.setLogRecordFactory(factory)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


async def test_no_secret_reaches_health_files_logs_prometheus_errors_or_describe(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    port = free_port()  # nothing listens there: every request is refused
    endpoint = f"http://127.0.0.1:{port}"
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={CONN_KEY};"
        f"BlobEndpoint={endpoint}/devstoreaccount1;"
    )
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("STORAGEFS_AZURE_ACCOUNT_KEY", ACCOUNT_KEY)
    monkeypatch.setenv("STORAGEFS_AZURE_CONNECTION_STRING", conn)
    monkeypatch.setenv("STORAGEFS_AZURE_SAS_TOKEN", SAS_TOKEN)
    setup_logging("DEBUG", "json")  # the daemon's own set-up; captured through capsys
    assert logging.getLogger("azure").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("urllib3").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("botocore").getEffectiveLevel() >= logging.WARNING

    fast: dict[str, Any] = {"connect_timeout": 1.0, "request_timeout": 2.0}
    # Explicit values win over the environment, so each Azure backend uses one credential.
    only: dict[str, Any] = {
        **fast,
        "azure_connection_string": None,
        "azure_account_key": None,
        "azure_sas_token": None,
        "azure_account_url": f"{endpoint}/devstoreaccount1",
    }
    backends: list[Backend] = [
        S3Backend("bucket", "p", Settings(s3_endpoint_url=endpoint, **fast), name="s3"),
        AzureBackend("c", "", Settings(**fast), name="az-conn"),  # the connection string
        AzureBackend(
            "c",
            "",
            Settings(
                **{
                    **only,
                    "azure_account_name": "devstoreaccount1",
                    "azure_account_key": ACCOUNT_KEY,
                }
            ),
            name="az-key",
        ),
        AzureBackend("c", "", Settings(**{**only, "azure_sas_token": SAS_TOKEN}), name="az-sas"),
    ]
    assert {b.auth_method for b in backends[1:] if isinstance(b, AzureBackend)} == {
        "connection-string",
        "account-key",
        "sas",
    }
    policy = RetryPolicy(
        request_timeout=3.0,
        retry_attempts=2,
        retry_initial_backoff=0.01,
        retry_max_backoff=0.02,
        operation_deadline=10.0,
        breaker_failures=2,
        breaker_reset=600.0,
    )
    rbs = [ResilientBackend(b, policy) for b in backends]
    errors: list[BaseException] = []
    log = logging.getLogger("storagefs.test")
    for rb in rbs:
        for call in calls_of(rb):
            with pytest.raises(BackendError) as info:
                await call()
            errors.append(info.value)
            log.warning("call failed: %s", info.value, exc_info=info.value)
        assert rb.breaker_state == "open"
        assert rb.stats.last_error is not None
        with pytest.raises(BackendError) as opened:
            await rb.inner.open()
        errors.append(opened.value)
    assert any(isinstance(e.__cause__, TransientError) for e in errors)

    # Each layer on its own: the backends' messages and describe(), the raw stats, ...
    raw = [json.dumps(rb.stats.snapshot().to_json()) for rb in rbs] + [
        b.describe() for b in backends
    ]
    for exc in errors:
        raw.append("".join(traceback.format_exception(exc)))
        raw.append(repr(exc))
    assert leaked("\n".join(raw)) == []
    # ... and what leaves the process: the health files, Prometheus text and the log, which
    # scrub even a careless message (the second line of defence is tested, not only assumed).
    careless = FaultyBackend(MemoryBackend("careless"))
    careless.set_down(TransientError(f"endpoint said {conn} and {SAS_TOKEN}"))
    rbs.append(ResilientBackend(careless, policy))
    for _ in range(policy.breaker_failures):
        with pytest.raises(BackendUnavailable):
            await rbs[-1].stat("k")
    assert leaked(json.dumps(rbs[-1].stats.snapshot().to_json()))  # the raw figure does hold them
    log.warning("careless: %s / %s / %s", conn, SAS_TOKEN, AWS_SECRET)
    files = HealthReport(rbs).files()
    for name, content in files.items():
        assert leaked(content.decode()) == [], name
    assert json.loads(files["status.json"])["status"] == "down"
    assert b"storagefs_backend_breaker_state" in files["metrics.prom"]
    for backend in backends:
        await backend.close()
    output = capsys.readouterr().err
    assert "call failed" in output and "careless: <redacted>" in output  # captured, scrubbed
    assert leaked(output) == []


def test_redactor_replaces_secret_values_parts_and_credential_pairs() -> None:
    conn = f"AccountName=acct;AccountKey={CONN_KEY};BlobEndpoint=http://x/acct"
    redact = Redactor.from_environment(
        {
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "STORAGEFS_AZURE_CONNECTION_STRING": conn,
            "STORAGEFS_AZURE_SAS_TOKEN": "?" + SAS_TOKEN,
            "AWS_SESSION_TOKEN": "short",  # too short to replace everywhere
        }
    )
    text = (
        f"key {AWS_SECRET} conn {conn} bare {CONN_KEY} "
        f"url http://x/c/b?{SAS_TOKEN} quoted {AWS_SECRET.replace('+', '%2B').replace('/', '%2F')} "
        "AccountKey=unknownvalue sig=othersig X-Amz-Signature=abc123 short"
    )
    clean = redact(text)
    assert leaked(clean) == []
    assert "unknownvalue" not in clean and "othersig" not in clean and "abc123" not in clean
    assert redact("AccountName=other;AccountKey=zzzzzzzzzz;EndpointSuffix=x") == (
        "AccountName=other;AccountKey=<redacted>;EndpointSuffix=x"  # only the secret part
    )
    assert "short" in clean
    assert redact("nothing secret here") == "nothing secret here"
