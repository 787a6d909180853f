"""The health report: what the ``/.health`` files of a mount say, built from live objects.

:class:`HealthReport` reads the figures the running pieces already keep (each ResilientBackend's
``stats``, the chain's ``status()``, a few counts from the filesystem core) and renders them as
virtual files. It does no I/O and calls no backend, so opening a health file is cheap and works
best exactly when the stores do not answer.

The state rules (docs/HEALTH.md explains them to users):

* A remote is **unavailable** when its circuit breaker is not closed (open, or half-open while a
  probe is out), or when the chain's last call to it got no answer. A remote nobody asked yet
  counts as available.
* **down**: there is at least one remote and every remote is unavailable. Reads may still be
  served from the local cache and writes land in the journal, but nothing reaches a store.
* **degraded**: not down, and any of: a remote unavailable; a remote whose last operations
  failed after all retries (``consecutive_failures > 0``) though its breaker is still closed;
  a remote unwell (the chain asks it last: see :class:`storagefs.resilience.stats.RemoteState`);
  the replayer paused for a remote; journal entries a remote has not applied for more than
  ``backlog_age`` seconds; the journal over ``journal_full_ratio`` of its limit; quarantined
  journal entries; reads served stale from the cache within the last ``stale_window`` seconds;
  an internal error while building this report.
* **ok** otherwise. Keys that cannot be paths and open files with unsaved changes are shown but
  change nothing: they are facts about the data, not about the service.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from storagefs import exit_codes
from storagefs.chain.cache import CacheStats
from storagefs.chain.fallback import ChainStatus, RemoteView
from storagefs.journal.store import JournalStats
from storagefs.observability import metric_names as m
from storagefs.observability.redact import redact
from storagefs.resilience.stats import RemoteSnapshot
from storagefs.sync.reconcile import SyncSnapshot

log = logging.getLogger("storagefs.health")

OK = "ok"
DEGRADED = "degraded"
DOWN = "down"

STATUS_FILE = "status.json"
JOURNAL_FILE = "journal.json"
CACHE_FILE = "cache.json"
METRICS_FILE = "metrics.prom"
BACKENDS_DIR = "backends"

BREAKER_STATES = ("closed", "open", "half-open")
_ROLES = {0: "primary", 1: "secondary"}  # as the chain names them


class _Stats(Protocol):
    def snapshot(self) -> RemoteSnapshot: ...


class MonitoredBackend(Protocol):
    """What the report needs of a backend: a ResilientBackend has all of it."""

    @property
    def name(self) -> str: ...

    @property
    def stats(self) -> _Stats: ...

    @property
    def breaker_state(self) -> str: ...


class ChainSource(Protocol):
    def status(self) -> ChainStatus: ...


@dataclasses.dataclass(frozen=True, slots=True)
class CoreFigures:
    dirty_files: int = 0  # open files with changes not yet uploaded
    invalid_keys: int = 0  # object keys seen that cannot be paths
    failed_uploads: int = 0  # files whose upload failed; their data waits locally for a retry
    abandoned_uploads: int = 0  # uploads given up on; their data is kept in the cache dir


@dataclasses.dataclass(frozen=True, slots=True)
class HealthRules:
    backlog_age: float = 60.0  # seconds a remote may lag behind the journal before it counts
    stale_window: float = 60.0  # seconds a stale read keeps the mount degraded
    journal_full_ratio: float = 0.9  # share of journal_max_bytes that counts as nearly full


def backend_file(name: str) -> str:
    """``backends/<name>.json``; a name is made safe to be one path component."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "_"
    return f"{BACKENDS_DIR}/{safe}.json"


# --- small readers that never raise on odd input --------------------------------------------


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: object) -> int:
    number = _num(value)
    return int(number) if number is not None else 0


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _clean(value: Any) -> Any:
    """JSON-ready and scrubbed: strings through the redactor, odd types as text."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return redact(str(value))


def _json(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(_clean(doc), indent=2) + "\n").encode()


# --- the snapshot ---------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Snapshot:
    """One consistent reading of everything; the files are renderings of it."""

    status: str
    reasons: list[str]
    generated_at: float
    remotes: list[dict[str, Any]]  # one per remote, in chain order, for status.json
    backends: dict[str, dict[str, Any]]  # name -> the backends/<name>.json document
    journal: dict[str, Any]
    cache: dict[str, Any]
    stale_reads: int
    stale_reads_recent: int
    journal_only_writes: int
    core: CoreFigures
    report_errors: int
    rules: HealthRules
    secondary: SyncSnapshot | None = None  # reconciliation (storagefs.sync), when it runs

    def status_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "status": self.status,
            "reasons": self.reasons,
            "generated_at": self.generated_at,
            "remotes": self.remotes,
            "journal": {
                k: self.journal[k]
                for k in ("pending_entries", "pending_bytes", "oldest_age_s", "quarantined")
            },
            "stale_reads": self.stale_reads,
            "stale_reads_recent": self.stale_reads_recent,
            "journal_only_writes": self.journal_only_writes,
            "dirty_files": self.core.dirty_files,
            "failed_uploads": self.core.failed_uploads,
            "abandoned_uploads": self.core.abandoned_uploads,
            "invalid_keys": self.core.invalid_keys,
            "rules": dataclasses.asdict(self.rules),
        }
        if self.secondary is not None:
            doc["secondary"] = _secondary_doc(self.secondary)
        return doc


class HealthReport:
    """Builds the ``/.health`` files from live objects; every call is a fresh snapshot.

    ``backends``: the remotes' ResilientBackends (anything with ``name``, ``stats.snapshot()``
    and ``breaker_state``). ``chain``: the FallbackChain, for reachability, journal and cache.
    ``core``: a callable giving the filesystem core's figures. All optional: what is missing
    reads as zeros. Create it when the daemon starts: stale reads are judged against what this
    object has seen since (see :meth:`_recent_stale`).
    """

    def __init__(
        self,
        backends: Sequence[MonitoredBackend] = (),
        chain: ChainSource | None = None,
        *,
        core: Callable[[], CoreFigures] | None = None,
        rules: HealthRules | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.backends = list(backends)
        self.chain = chain
        self.core = core
        # The reconciliation's progress (Syncer.snapshot), set by the daemon when it runs one.
        self.sync: Callable[[], SyncSnapshot] | None = None
        self.rules = rules or HealthRules()
        self._clock = clock
        self._wall_clock = wall_clock
        self.errors = 0  # internal errors so far, exposed as a metric
        self._logged: set[tuple[str, str]] = set()
        # (clock, stale_reads) readings; the first stands for "none when the daemon started".
        self._stale_seen: collections.deque[tuple[float, int]] = collections.deque([(clock(), 0)])

    # --- the virtual files ----------------------------------------------------------------

    def names(self) -> list[str]:
        """The files :meth:`files` returns, without computing them (for directory listings)."""
        names = [STATUS_FILE, JOURNAL_FILE, CACHE_FILE, METRICS_FILE]
        try:
            remote_names = [r.name for r in self.chain.status().remotes] if self.chain else []
        except Exception:
            remote_names = []
        seen = dict.fromkeys([*remote_names, *(b.name for b in self.backends)])
        return names + [backend_file(name) for name in seen]

    def files(self) -> dict[str, bytes]:
        """``{relative path: content}`` for status.json, backends/*.json, journal.json,
        cache.json and metrics.prom. Never raises: a failure becomes a reason, and logged."""
        try:
            snap = self.snapshot()
        except Exception as exc:
            self._internal_error("report", exc)
            doc = {
                "status": DEGRADED,
                "reasons": [f"health report failed: {type(exc).__name__}"],
                "generated_at": self._wall_clock(),
            }
            return {STATUS_FILE: _json(doc)}
        files = {STATUS_FILE: _json(snap.status_doc())}
        for name, doc in snap.backends.items():
            files[backend_file(name)] = _json(doc)
        files[JOURNAL_FILE] = _json(snap.journal)
        files[CACHE_FILE] = _json(snap.cache)
        try:
            files[METRICS_FILE] = render_prometheus(snap)
        except Exception as exc:
            self._internal_error("metrics.prom", exc)
            files[METRICS_FILE] = b""
        return files

    # --- building the snapshot --------------------------------------------------------------

    def _internal_error(self, section: str, exc: BaseException) -> None:
        self.errors += 1
        key = (section, type(exc).__name__)
        if key in self._logged:  # once per kind: the files may be read every few seconds
            log.debug("health report: %s: %s", section, redact(str(exc)))
        else:
            self._logged.add(key)
            log.error("health report: reading %s failed", section, exc_info=exc)

    def _read(self, section: str, read: Callable[[], Any], problems: list[str]) -> Any:
        try:
            return read()
        except Exception as exc:
            self._internal_error(section, exc)
            problems.append(f"health report incomplete: {section}: {type(exc).__name__}")
            return None

    def snapshot(self) -> Snapshot:
        problems: list[str] = []
        read = self._read("chain", self._chain_status, problems)
        chain = read if isinstance(read, ChainStatus) else None
        stats: dict[str, RemoteSnapshot] = {}
        for backend in self.backends:
            snap = self._read(f"backend {backend.name}", _stats_reader(backend), problems)
            if isinstance(snap, RemoteSnapshot):
                stats[backend.name] = snap
        core = self._read("core", self.core, problems) if self.core else None
        core = core if isinstance(core, CoreFigures) else CoreFigures()

        views = chain.remotes if chain is not None else ()
        journal = _journal_doc(chain.journal if chain else None, views, chain)
        cache = _cache_doc(chain.cache if chain else None)
        remotes, backends = self._remotes(views, stats, journal)
        stale_reads = chain.stale_reads if chain else 0
        stale_recent = self._recent_stale(stale_reads, chain.last_stale_read if chain else None)

        reasons = self._reasons(remotes, backends, journal, stale_recent)
        secondary = self._read("secondary", self.sync, problems) if self.sync else None
        secondary = secondary if isinstance(secondary, SyncSnapshot) else None
        if secondary is not None and secondary.incomplete:  # a secondary that lacks objects
            reasons.append(_sync_reason(secondary))
        reasons.extend(problems)
        if remotes and not any(r["available"] for r in remotes):
            status = DOWN
            reasons.insert(0, "no remote backend answers")
        else:
            status = DEGRADED if reasons else OK
        return Snapshot(
            status=status,
            reasons=reasons,
            generated_at=self._wall_clock(),
            remotes=remotes,
            backends=backends,
            journal=journal,
            cache=cache,
            stale_reads=stale_reads,
            stale_reads_recent=stale_recent,
            journal_only_writes=chain.journal_only_writes if chain else 0,
            core=core,
            report_errors=self.errors,
            rules=self.rules,
            secondary=secondary,
        )

    def _chain_status(self) -> ChainStatus | None:
        return self.chain.status() if self.chain is not None else None

    def _remotes(
        self,
        views: Sequence[RemoteView],
        stats: Mapping[str, RemoteSnapshot],
        journal: Mapping[str, Any],
    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        seen = {view.name: view for view in views}
        names = list(dict.fromkeys([*seen, *stats]))
        remotes: list[dict[str, Any]] = []
        backends: dict[str, dict[str, Any]] = {}
        for index, name in enumerate(names):
            view = seen.get(name)
            snap = stats.get(name) or (view.state if view is not None else None)
            # A breaker exists only behind a ResilientBackend (one of self.backends).
            breaker = stats[name].breaker if name in stats else None
            # Reachability as the chain's calls and the replayer's saw it; without a chain,
            # unknown (the breaker and the failure counts speak instead).
            reachable = view.state.reachable if view is not None else None
            unwell = snap.unwell if snap is not None else False
            available = breaker in (None, "closed") and reachable is not False
            role = view.role if view is not None else _ROLES.get(index, f"remote{index}")
            queue = _map(_map(journal.get("backends")).get(name))
            summary = {
                "name": name,
                "role": role,
                "available": available,
                "unwell": unwell,
                "breaker": breaker,
                "reachable": reachable,
                "consecutive_failures": snap.consecutive_failures if snap else 0,
                "success_rate": snap.success_rate if snap else None,
                "pending_ops": _int(queue.get("pending_ops")),
                "last_error": _last_error(snap),
            }
            remotes.append(summary)
            backends[name] = {
                **summary,
                "describe": view.backend if view is not None else None,
                "reachable_since": view.state.reachable_since if view is not None else None,
                "replay": view.replay.to_json() if view is not None else None,
                "pending_bytes": _int(queue.get("pending_bytes")),
                "oldest_pending_age_s": _num(queue.get("oldest_age_s")),
                "stats": snap.to_json() if snap is not None else {},
            }
        return remotes, backends

    def _recent_stale(self, count: int, last_at: object) -> int:
        """Stale reads within ``stale_window``. With the chain's time of the last one, exact;
        otherwise the growth of the counter since the newest reading at least a window old
        (or since this report was created), which can over-report once after a long gap."""
        now = self._clock()
        last = _num(last_at)
        if last is not None:
            return count if self._wall_clock() - last <= self.rules.stale_window else 0
        seen = self._stale_seen
        if now - seen[-1][0] >= 1.0 or count != seen[-1][1]:  # bounded: ~1 reading a second
            seen.append((now, count))
        while len(seen) > 1 and seen[1][0] <= now - self.rules.stale_window:
            seen.popleft()
        return max(0, count - seen[0][1]) if count >= seen[0][1] else count

    def _reasons(
        self,
        remotes: list[dict[str, Any]],
        backends: Mapping[str, Mapping[str, Any]],
        journal: Mapping[str, Any],
        stale_recent: int,
    ) -> list[str]:
        reasons: list[str] = []
        for remote in remotes:
            reasons.extend(_remote_reasons(remote, backends[remote["name"]], self.rules))
        reasons.extend(_journal_reasons(journal, self.rules))
        if stale_recent:
            reasons.append(
                f"{stale_recent} read(s) in the last {self.rules.stale_window:.0f} s served"
                " from the local cache because no remote answered (may be stale)"
            )
        return reasons


def _stats_reader(backend: MonitoredBackend) -> Callable[[], RemoteSnapshot]:
    return lambda: backend.stats.snapshot()


def _last_error(snap: RemoteSnapshot | None) -> dict[str, Any] | None:
    err = snap.last_error if snap is not None else None
    if err is None:
        return None
    return {"op": err.op, "type": err.type, "message": err.message, "at": err.at}


def _error_text(remote: Mapping[str, Any]) -> str:
    err = remote.get("last_error")
    if not err:
        return ""
    return f"; last error: {err.get('type')}: {err.get('message')}"


def _remote_reasons(
    remote: Mapping[str, Any], detail: Mapping[str, Any], rules: HealthRules
) -> list[str]:
    who = f"{remote['role']} {remote['name']}"
    breaker = remote["breaker"]
    reasons = []
    if breaker == "open":
        probe = _num(_map(detail.get("stats")).get("probe_in_s"))
        when = f", next probe in {probe:.0f} s" if probe is not None else ""
        reasons.append(f"{who}: circuit breaker open{when}{_error_text(remote)}")
    elif breaker not in (None, "closed"):
        reasons.append(f"{who}: circuit breaker {breaker}, probing{_error_text(remote)}")
    elif remote["reachable"] is False:
        reasons.append(f"{who} is not answering{_error_text(remote)}")
    elif remote["consecutive_failures"]:
        reasons.append(
            f"{who}: the last {remote['consecutive_failures']} operation(s) failed after"
            f" all retries{_error_text(remote)}"
        )
    elif remote["unwell"]:
        why = _map(detail.get("stats")).get("unwell_reason")
        reasons.append(f"{who} is slow or not answering, reads ask it last: {why}")
    replay = _map(detail.get("replay"))
    if replay and replay.get("up") is False and remote["available"]:
        retry = _num(replay.get("retry_in"))
        when = f", retrying in {retry:.0f} s" if retry is not None else ""
        reasons.append(f"{who}: journal replay paused after a failure{when}")
    age = _num(detail.get("oldest_pending_age_s"))
    if age is not None and age > rules.backlog_age:
        reasons.append(
            f"journal backlog for {who}: {detail['pending_ops']} operation(s),"
            f" {_size(detail['pending_bytes'])}, oldest {age:.0f} s old"
        )
    return reasons


def _journal_reasons(journal: Mapping[str, Any], rules: HealthRules) -> list[str]:
    reasons = []
    used, limit = journal["pending_bytes"], journal["max_bytes"]
    if limit and used > rules.journal_full_ratio * limit:
        reasons.append(
            f"journal {100 * used / limit:.0f}% full ({_size(used)} of {_size(limit)}):"
            " writes fail with ENOSPC when it is full"
        )
    if journal["quarantined"]:
        reasons.append(
            f"{journal['quarantined']} journal entries quarantined: a store refused them"
            " permanently (see the daemon log)"
        )
    return reasons


def _journal_doc(
    stats: JournalStats | None, views: Sequence[RemoteView], chain: ChainStatus | None
) -> dict[str, Any]:
    per_backend: dict[str, dict[str, Any]] = {}
    replay_of = {view.name: view.replay for view in views}
    targets = stats.targets if stats is not None else {}
    for name, queue in targets.items():
        replay = replay_of.get(name)
        per_backend[name] = {
            "pending_ops": queue.pending_ops,
            "pending_bytes": queue.pending_bytes,
            "oldest_age_s": queue.oldest_age,
            "replay_up": replay.up if replay is not None else None,
            "applied": replay.applied if replay is not None else 0,
            "quarantined": replay.quarantined if replay is not None else 0,
        }
    return {
        "pending_entries": stats.pending_entries if stats else 0,
        "pending_bytes": stats.pending_bytes if stats else 0,
        "max_bytes": stats.max_bytes if stats else 0,
        "oldest_age_s": stats.oldest_age if stats else None,
        "quarantined": stats.quarantined if stats else 0,
        "recovered_orphans": stats.recovered_orphans if stats else 0,
        "write_mode": chain.write_mode if chain is not None else None,
        "backends": per_backend,
    }


def _cache_doc(stats: CacheStats | None) -> dict[str, Any]:
    if stats is None:
        stats = CacheStats(False, 0, 0, 0, 0, 0, 0, 0)
    doc: dict[str, Any] = dataclasses.asdict(stats)
    looked = stats.hits + stats.misses
    doc["hit_rate"] = stats.hits / looked if looked else None
    return doc


def _sync_reason(snap: SyncSnapshot) -> str:
    found = " found so far" if snap.counting else ""
    return (
        f"failover is incomplete: the secondary lacks {snap.behind_objects} object(s),"
        f" {snap.behind_bytes} bytes{found} of the primary; reconciliation is {snap.state}"
    )


def _secondary_doc(snap: SyncSnapshot) -> dict[str, Any]:
    doc: dict[str, Any] = dataclasses.asdict(snap)
    doc["failed_keys"] = list(snap.failed_keys)
    if snap.incomplete:
        doc["reason"] = _sync_reason(snap)
    return doc


# --- Prometheus -------------------------------------------------------------------------------


def _doc(name: str) -> str:
    for entry in m.PROMETHEUS:
        if entry.name == name:
            return entry.meaning
    raise KeyError(name)


def _gauge(name: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, _doc(name), labels=list(labels))


def _counter(name: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    # prometheus_client appends "_total" itself; the catalog holds the exposed name.
    return CounterMetricFamily(name.removesuffix("_total"), _doc(name), labels=list(labels))


class _SnapshotCollector:
    """A custom collector over one snapshot (registered in a private registry per render)."""

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap

    def collect(self) -> Iterator[Metric]:
        snap = self._snap
        yield from self._backends(snap)
        yield from self._journal(snap)
        yield from self._cache(snap)
        status = _gauge(m.PROM_STATUS)
        status.add_metric([], exit_codes.HEALTH[snap.status])
        yield status
        for name, value in (
            (m.PROM_STALE_READS, snap.stale_reads),
            (m.PROM_JOURNAL_ONLY_WRITES, snap.journal_only_writes),
            (m.PROM_INVALID_KEYS, snap.core.invalid_keys),
            (m.PROM_REPORT_ERRORS, snap.report_errors),
        ):
            counter = _counter(name)
            counter.add_metric([], value)
            yield counter
        dirty = _gauge(m.PROM_DIRTY_FILES)
        dirty.add_metric([], snap.core.dirty_files)
        yield dirty

    def _backends(self, snap: Snapshot) -> Iterator[Metric]:
        available = _gauge(m.PROM_BACKEND_AVAILABLE, ["backend"])
        breaker = _gauge(m.PROM_BACKEND_BREAKER_STATE, ["backend", "state"])
        failures = _gauge(m.PROM_BACKEND_CONSECUTIVE_FAILURES, ["backend"])
        ratio = _gauge(m.PROM_BACKEND_SUCCESS_RATIO, ["backend"])
        latency = _gauge(m.PROM_BACKEND_LATENCY, ["backend", "op", "quantile"])
        in_flight = _gauge(m.PROM_BACKEND_IN_FLIGHT, ["backend"])
        ops = _counter(m.PROM_BACKEND_OPERATIONS, ["backend", "outcome"])
        retries = _counter(m.PROM_BACKEND_RETRIES, ["backend"])
        timeouts = _counter(m.PROM_BACKEND_TIMEOUTS, ["backend"])
        for name, doc in snap.backends.items():
            stats = _map(doc.get("stats"))
            available.add_metric([name], 1 if doc["available"] else 0)
            if doc["breaker"] is not None:
                for state in BREAKER_STATES:
                    breaker.add_metric([name, state], 1 if doc["breaker"] == state else 0)
            failures.add_metric([name], doc["consecutive_failures"])
            if doc["success_rate"] is not None:
                ratio.add_metric([name], doc["success_rate"])
            for op, figures in sorted(_map(stats.get("latency_s")).items()):
                for quantile, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
                    value = _num(_map(figures).get(key))
                    if value is not None:
                        latency.add_metric([name, str(op), quantile], value)
            if stats:
                in_flight.add_metric([name], _int(stats.get("in_flight")))
                for outcome, key in (
                    ("answered", "successes"),
                    ("failed", "failures"),
                    ("rejected", "rejected"),
                ):
                    ops.add_metric([name, outcome], _int(stats.get(key)))
                retries.add_metric([name], _int(stats.get("retries")))
                timeouts.add_metric([name], _int(stats.get("timeouts")))
        yield from (available, breaker, failures, ratio, latency, in_flight, ops, retries)
        yield timeouts

    def _journal(self, snap: Snapshot) -> Iterator[Metric]:
        journal = snap.journal
        for name, key in (
            (m.PROM_JOURNAL_ENTRIES, "pending_entries"),
            (m.PROM_JOURNAL_BYTES, "pending_bytes"),
            (m.PROM_JOURNAL_MAX_BYTES, "max_bytes"),
            (m.PROM_JOURNAL_QUARANTINED, "quarantined"),
        ):
            gauge = _gauge(name)
            gauge.add_metric([], journal[key])
            yield gauge
        ops = _gauge(m.PROM_JOURNAL_PENDING_OPS, ["backend"])
        size = _gauge(m.PROM_JOURNAL_PENDING_BYTES, ["backend"])
        age = _gauge(m.PROM_JOURNAL_OLDEST_AGE, ["backend"])
        for name, queue in journal["backends"].items():
            ops.add_metric([name], queue["pending_ops"])
            size.add_metric([name], queue["pending_bytes"])
            if queue["oldest_age_s"] is not None:
                age.add_metric([name], queue["oldest_age_s"])
        yield from (ops, size, age)

    def _cache(self, snap: Snapshot) -> Iterator[Metric]:
        cache = snap.cache
        for name, key in (
            (m.PROM_CACHE_BYTES, "bytes"),
            (m.PROM_CACHE_MAX_BYTES, "max_bytes"),
            (m.PROM_CACHE_OBJECTS, "objects"),
        ):
            gauge = _gauge(name)
            gauge.add_metric([], cache[key])
            yield gauge
        for name, key in (
            (m.PROM_CACHE_HITS, "hits"),
            (m.PROM_CACHE_MISSES, "misses"),
            (m.PROM_CACHE_EVICTIONS, "evictions"),
        ):
            counter = _counter(name)
            counter.add_metric([], cache[key])
            yield counter


def render_prometheus(snap: Snapshot) -> bytes:
    """Prometheus text exposition of ``snap`` (a private registry: no global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))
    return redact(generate_latest(registry).decode()).encode()
