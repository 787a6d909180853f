"""Every metric, event and transaction name storagefs emits, in one place.

Dashboards and alerts are written against these strings, so a rename is a breaking change:
it happens here, and ``docs/METRICS.md`` (rendered from :data:`CATALOG` by
``python -m storagefs.observability.metric_names``; a test fails when the two differ) says so.

Two outlets share the names:

* ``/.health/metrics.prom``: Prometheus text (:mod:`storagefs.health`). Counters are listed
  with their exposed ``_total`` sample name.
* New Relic (:mod:`storagefs.telemetry`): custom metrics (``Custom/...``, names with
  ``{placeholders}``), custom events and background transactions.
"""

from __future__ import annotations

import dataclasses
import sys

# --- Prometheus (/.health/metrics.prom) ------------------------------------------------------

PROM_STATUS = "storagefs_status"
PROM_BACKEND_AVAILABLE = "storagefs_backend_available"
PROM_BACKEND_BREAKER_STATE = "storagefs_backend_breaker_state"
PROM_BACKEND_CONSECUTIVE_FAILURES = "storagefs_backend_consecutive_failures"
PROM_BACKEND_SUCCESS_RATIO = "storagefs_backend_success_ratio"
PROM_BACKEND_LATENCY = "storagefs_backend_latency_seconds"
PROM_BACKEND_IN_FLIGHT = "storagefs_backend_in_flight"
PROM_BACKEND_OPERATIONS = "storagefs_backend_operations_total"
PROM_BACKEND_RETRIES = "storagefs_backend_retries_total"
PROM_BACKEND_TIMEOUTS = "storagefs_backend_attempt_timeouts_total"
PROM_JOURNAL_ENTRIES = "storagefs_journal_entries"
PROM_JOURNAL_BYTES = "storagefs_journal_bytes"
PROM_JOURNAL_MAX_BYTES = "storagefs_journal_max_bytes"
PROM_JOURNAL_PENDING_OPS = "storagefs_journal_pending_ops"
PROM_JOURNAL_PENDING_BYTES = "storagefs_journal_pending_bytes"
PROM_JOURNAL_OLDEST_AGE = "storagefs_journal_oldest_pending_seconds"
PROM_JOURNAL_QUARANTINED = "storagefs_journal_quarantined_entries"
PROM_CACHE_BYTES = "storagefs_cache_bytes"
PROM_CACHE_MAX_BYTES = "storagefs_cache_max_bytes"
PROM_CACHE_OBJECTS = "storagefs_cache_objects"
PROM_CACHE_HITS = "storagefs_cache_hits_total"
PROM_CACHE_MISSES = "storagefs_cache_misses_total"
PROM_CACHE_EVICTIONS = "storagefs_cache_evictions_total"
PROM_STALE_READS = "storagefs_stale_reads_total"
PROM_JOURNAL_ONLY_WRITES = "storagefs_journal_only_writes_total"
PROM_DIRTY_FILES = "storagefs_dirty_open_files"
PROM_INVALID_KEYS = "storagefs_invalid_keys_total"
PROM_REPORT_ERRORS = "storagefs_health_report_errors_total"

# --- New Relic custom metrics (templates; placeholders filled per call) ----------------------

NR_BACKEND_LATENCY = "Custom/storagefs/backend/{backend}/{op}/latency"
NR_BACKEND_ERRORS = "Custom/storagefs/backend/{backend}/{op}/errors"
NR_JOURNAL_PENDING_OPS = "Custom/storagefs/journal/pending_ops"
NR_JOURNAL_PENDING_BYTES = "Custom/storagefs/journal/pending_bytes"
NR_TASK_OVERLAPPED = "Custom/storagefs/task/{task}/duration"

# --- New Relic custom events ---------------------------------------------------------------

EVENT_BREAKER_CHANGE = "StorageFsBreakerChange"
EVENT_FAILOVER = "StorageFsFailover"
EVENT_JOURNAL_BACKLOG = "StorageFsJournalBacklog"

# --- New Relic background transactions (OtherTransaction/<group>/<task>) --------------------

NR_TRANSACTION_GROUP = "storagefs"
NR_TRANSACTION = "OtherTransaction/storagefs/{task}"
TASK_JOURNAL_REPLAY = "journal-replay"
TASK_BULK_DOWNLOAD = "bulk-download"
TASKS = (TASK_JOURNAL_REPLAY, TASK_BULK_DOWNLOAD)


@dataclasses.dataclass(frozen=True, slots=True)
class MetricDoc:
    name: str
    kind: str  # "gauge", "counter", "metric", "event", "transaction"
    labels: str  # Prometheus labels, or the event's attributes; "" for none
    meaning: str


PROMETHEUS: tuple[MetricDoc, ...] = (
    MetricDoc(
        PROM_STATUS,
        "gauge",
        "",
        "Overall state: 0 ok, 1 degraded, 2 down (the exit code of `storagefs health`).",
    ),
    MetricDoc(
        PROM_BACKEND_AVAILABLE,
        "gauge",
        "backend",
        "1 when the remote counts as available (breaker closed and its last call "
        "answered), else 0.",
    ),
    MetricDoc(
        PROM_BACKEND_BREAKER_STATE,
        "gauge",
        "backend, state",
        "1 for the breaker's current state (`closed`, `open`, `half-open`), 0 for the other two.",
    ),
    MetricDoc(
        PROM_BACKEND_CONSECUTIVE_FAILURES,
        "gauge",
        "backend",
        "Operations in a row that failed after all retries (0 after any answer).",
    ),
    MetricDoc(
        PROM_BACKEND_SUCCESS_RATIO,
        "gauge",
        "backend",
        "Share of answered operations among the recent window (absent before any).",
    ),
    MetricDoc(
        PROM_BACKEND_LATENCY,
        "gauge",
        "backend, op, quantile",
        "p50/p95/p99 (quantile 0.5/0.95/0.99) of operation latency over the recent "
        "window, retries and backoff included.",
    ),
    MetricDoc(PROM_BACKEND_IN_FLIGHT, "gauge", "backend", "Operations running right now."),
    MetricDoc(
        PROM_BACKEND_OPERATIONS,
        "counter",
        "backend, outcome",
        "Operations by outcome: `answered` (a result or a verdict such as not-found), "
        "`failed` (given up as unavailable), `rejected` (refused by an open breaker).",
    ),
    MetricDoc(
        PROM_BACKEND_RETRIES, "counter", "backend", "Extra attempts made after transient errors."
    ),
    MetricDoc(
        PROM_BACKEND_TIMEOUTS, "counter", "backend", "Attempts cut by the per-attempt timeout."
    ),
    MetricDoc(
        PROM_JOURNAL_ENTRIES, "gauge", "", "Journal entries not yet applied to every remote."
    ),
    MetricDoc(
        PROM_JOURNAL_BYTES,
        "gauge",
        "",
        "Bytes of content held by the journal (counted against its limit).",
    ),
    MetricDoc(
        PROM_JOURNAL_MAX_BYTES,
        "gauge",
        "",
        "The journal's limit; writes fail with ENOSPC beyond it.",
    ),
    MetricDoc(
        PROM_JOURNAL_PENDING_OPS,
        "gauge",
        "backend",
        "Journaled operations this remote has not applied yet.",
    ),
    MetricDoc(
        PROM_JOURNAL_PENDING_BYTES,
        "gauge",
        "backend",
        "Bytes of uploads this remote has not received yet.",
    ),
    MetricDoc(
        PROM_JOURNAL_OLDEST_AGE,
        "gauge",
        "backend",
        "Age of the oldest operation this remote has not applied (absent when none).",
    ),
    MetricDoc(
        PROM_JOURNAL_QUARANTINED,
        "gauge",
        "",
        "Journal entries set aside after a permanent refusal (need a person).",
    ),
    MetricDoc(PROM_CACHE_BYTES, "gauge", "", "Bytes of clean copies in the local cache."),
    MetricDoc(PROM_CACHE_MAX_BYTES, "gauge", "", "The local cache's limit (0: cache off)."),
    MetricDoc(PROM_CACHE_OBJECTS, "gauge", "", "Objects in the local cache."),
    MetricDoc(PROM_CACHE_HITS, "counter", "", "Reads served by the local cache."),
    MetricDoc(PROM_CACHE_MISSES, "counter", "", "Cache lookups that found no copy."),
    MetricDoc(PROM_CACHE_EVICTIONS, "counter", "", "Copies evicted to stay under the limit."),
    MetricDoc(
        PROM_STALE_READS,
        "counter",
        "",
        "Reads served from the local cache because no remote answered (may be stale).",
    ),
    MetricDoc(
        PROM_JOURNAL_ONLY_WRITES,
        "counter",
        "",
        "Write-through writes acknowledged on the journal alone (primary not answering "
        "or too slow).",
    ),
    MetricDoc(PROM_DIRTY_FILES, "gauge", "", "Open files with changes not yet uploaded."),
    MetricDoc(
        PROM_INVALID_KEYS,
        "counter",
        "",
        "Object keys that cannot be POSIX paths, left out of listings.",
    ),
    MetricDoc(
        PROM_REPORT_ERRORS,
        "counter",
        "",
        "Internal errors while building the health report (each also a reason).",
    ),
)

NEW_RELIC: tuple[MetricDoc, ...] = (
    MetricDoc(
        NR_BACKEND_LATENCY,
        "metric",
        "",
        "Seconds per backend operation as the caller saw it (retries included); "
        "the metric's count is the number of operations.",
    ),
    MetricDoc(
        NR_BACKEND_ERRORS,
        "metric",
        "",
        "One per failed backend operation (anything but a result or not-found).",
    ),
    MetricDoc(
        NR_JOURNAL_PENDING_OPS, "metric", "", "Journal entries pending, sampled periodically."
    ),
    MetricDoc(
        NR_JOURNAL_PENDING_BYTES, "metric", "", "Journal bytes pending, sampled periodically."
    ),
    MetricDoc(
        NR_TASK_OVERLAPPED,
        "metric",
        "",
        "Seconds of a background task that ran while another transaction was open "
        "(New Relic allows one transaction per thread; trio runs all tasks on one).",
    ),
    MetricDoc(
        EVENT_BREAKER_CHANGE,
        "event",
        "backend, old_state, new_state",
        "A circuit breaker changed state.",
    ),
    MetricDoc(
        EVENT_FAILOVER,
        "event",
        "from_backend, to_backend, op, count",
        "Operations served by a later backend because an earlier one did not answer: at most "
        "one event per (from, to, op) every 10 s, `count` saying how many it stands for.",
    ),
    MetricDoc(
        EVENT_JOURNAL_BACKLOG,
        "event",
        "pending_ops, pending_bytes",
        "The journal backlog, sampled periodically.",
    ),
    MetricDoc(
        NR_TRANSACTION.format(task=TASK_JOURNAL_REPLAY),
        "transaction",
        "",
        "A journal replay run (background task).",
    ),
    MetricDoc(
        NR_TRANSACTION.format(task=TASK_BULK_DOWNLOAD),
        "transaction",
        "",
        "A bulk download (background task).",
    ),
)

CATALOG: tuple[MetricDoc, ...] = PROMETHEUS + NEW_RELIC

_INTRO = """\
# Metrics and events

Generated from `storagefs/observability/metric_names.py` by
`python -m storagefs.observability.metric_names > docs/METRICS.md`; a test fails when this
file and the code differ. Names are an interface: dashboards and alerts depend on them.

## Prometheus: `/.health/metrics.prom`

Read the file from the mount (for example with node_exporter's textfile collector, or
`cat MOUNT/.health/metrics.prom`). It is computed when opened; there is no HTTP server.
Counters restart from zero when the daemon restarts.

"""

_NEW_RELIC = """
## New Relic

Sent only when `NEW_RELIC_LICENSE_KEY` or `NEW_RELIC_CONFIG_FILE` is set. In metric names,
`{backend}` is the backend's short name (`primary`, `s3`, ...) and `{op}` the operation
(`stat`, `list`, `read`, `download`, `write`, `write_bytes`, `delete`, `copy`, `health`,
`open`). Events carry the attributes listed.

"""


def _table(rows: tuple[MetricDoc, ...], second: str) -> str:
    lines = [f"| Name | Type | {second} | Meaning |", "| --- | --- | --- | --- |"]
    for doc in rows:
        labels = ", ".join(f"`{part.strip()}`" for part in doc.labels.split(",") if part.strip())
        lines.append(f"| `{doc.name}` | {doc.kind} | {labels} | {doc.meaning} |")
    return "\n".join(lines) + "\n"


def render_markdown() -> str:
    """The text of docs/METRICS.md."""
    return _INTRO + _table(PROMETHEUS, "Labels") + _NEW_RELIC + _table(NEW_RELIC, "Attributes")


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
