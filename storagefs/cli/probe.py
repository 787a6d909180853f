"""``storagefs health``: read a mount's ``/.health`` files and say ok, degraded or down.

Meant for people and for probes (systemd, Kubernetes), so it must answer even when the mount
does not: the files are read by a small child process that is killed after ``timeout`` seconds.
A thread would not do: a read stuck in a hung FUSE mount cannot be interrupted, and could keep
the probe itself from exiting.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from storagefs import exit_codes, mounts_table
from storagefs.mounts_table import MOUNTS_FILE

HEALTH_DIR = ".health"

# Run with ``python -I -S``: no site packages, so it starts in a few milliseconds.
_READER = r"""
import json, os, sys
root = sys.argv[1]
def read(rel):
    with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
        return f.read(1 << 20)
out = {}
try:
    out["status.json"] = read("status.json")
    for rel in ("journal.json", "cache.json"):
        try:
            out[rel] = read(rel)
        except FileNotFoundError:
            pass
    try:
        names = sorted(os.listdir(os.path.join(root, "backends")))[:64]
    except FileNotFoundError:
        names = []
    for name in names:
        if name.endswith(".json"):
            out["backends/" + name] = read("backends/" + name)
except OSError as e:
    missing = isinstance(e, FileNotFoundError)
    json.dump({"error": e.strerror or type(e).__name__, "missing": missing}, sys.stdout)
else:
    json.dump({"files": out}, sys.stdout)
"""


class ProbeError(Exception):
    """The mount could not be asked or did not answer (one line for the user)."""


@dataclasses.dataclass(frozen=True)
class HealthFiles:
    raw_status: str
    status: Mapping[str, Any]
    backends: Mapping[str, Mapping[str, Any]]  # file name without .json -> document
    journal: Mapping[str, Any]

    @property
    def state(self) -> str:
        return str(self.status.get("status", "unknown"))


def exit_code(state: str) -> int:
    return exit_codes.HEALTH.get(state, exit_codes.HEALTH_UNKNOWN)


def default_mountpoint(mounts_file: str = MOUNTS_FILE) -> Path:
    try:
        mounts = mounts_table.storagefs_mounts(mounts_file)
    except OSError as exc:
        raise ProbeError(f"cannot read {mounts_file}: {exc.strerror}") from None
    if not mounts:
        raise ProbeError("no storagefs mount found; give the MOUNTPOINT")
    if len(mounts) > 1:
        shown = ", ".join(str(p) for p in mounts)
        raise ProbeError(f"several storagefs mounts ({shown}); give the MOUNTPOINT")
    return mounts[0]


def read_health(mountpoint: Path, timeout: float = 5.0) -> HealthFiles:
    """The health files of the mount at ``mountpoint``; ProbeError if it does not answer
    within ``timeout`` seconds or has no health files."""
    health_dir = mountpoint / HEALTH_DIR
    child = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _READER, str(health_dir)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        out, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        _reap(child)
        raise ProbeError(
            f"{mountpoint} did not answer within {timeout:g} s (the mount may be hung)"
        ) from None
    try:
        answer = json.loads(out)
    except ValueError:
        raise ProbeError(f"cannot read the health files of {mountpoint}") from None
    if "error" in answer:
        if answer.get("missing"):
            raise ProbeError(f"no health files in {health_dir} (is it a storagefs mount?)")
        raise ProbeError(f"cannot read {health_dir}: {answer['error']}")
    return _parse(answer["files"])


def _reap(child: subprocess.Popen[bytes]) -> None:
    # A process stuck in a FUSE request may take a moment to die; never wait long for it.
    deadline = time.monotonic() + 1.0
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def _doc(text: str, name: str) -> Mapping[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        raise ProbeError(f"{name} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ProbeError(f"{name} is not a JSON object")
    return doc


def _parse(files: Mapping[str, str]) -> HealthFiles:
    backends = {}
    for rel, text in files.items():
        if rel.startswith("backends/"):
            name = rel.removeprefix("backends/").removesuffix(".json")
            try:
                backends[name] = _doc(text, rel)
            except ProbeError:
                backends[name] = {"name": name, "unreadable": True}
    journal = _doc(files["journal.json"], "journal.json") if "journal.json" in files else {}
    return HealthFiles(
        raw_status=files["status.json"],
        status=_doc(files["status.json"], "status.json"),
        backends=backends,
        journal=journal,
    )


# --- rendering for people -------------------------------------------------------------------

_STYLE = {"ok": "bold green", "degraded": "bold yellow", "down": "bold red"}


def _seconds(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.0f} min"


def _size(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    n = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _worst_p95(doc: Mapping[str, Any]) -> str:
    latency = doc.get("stats", {}).get("latency_s", {}) if isinstance(doc, Mapping) else {}
    best: tuple[float, str] | None = None
    for op, figures in latency.items() if isinstance(latency, Mapping) else ():
        p95 = figures.get("p95") if isinstance(figures, Mapping) else None
        if isinstance(p95, int | float) and (best is None or p95 > best[0]):
            best = (p95, op)
    return "-" if best is None else f"{_seconds(best[0])} ({best[1]})"


def _last_error(doc: Mapping[str, Any]) -> str:
    err = doc.get("last_error")
    if not isinstance(err, Mapping):
        return "-"
    text = f"{err.get('type')}: {err.get('message')}"
    at = err.get("at")
    if isinstance(at, int | float):
        text += f" ({time.strftime('%H:%M:%S', time.localtime(at))})"
    return text


def _in_chain_order(files: HealthFiles) -> list[tuple[str, Mapping[str, Any]]]:
    remotes = files.status.get("remotes")
    order = [str(r.get("name")) for r in remotes if isinstance(r, Mapping)] if remotes else []
    by_name = {str(doc.get("name", key)): doc for key, doc in files.backends.items()}
    ranked = sorted(by_name, key=lambda n: order.index(n) if n in order else len(order))
    return [(name, by_name[name]) for name in ranked]


def render(mountpoint: Path, files: HealthFiles) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    state = files.state
    console.print(f"storagefs {mountpoint}: [{_STYLE.get(state, 'bold red')}]{state.upper()}[/]")
    for reason in files.status.get("reasons", ()) or ():
        console.print(f"  • {reason}", markup=False)

    table = Table(title="Backends", title_justify="left")
    for column in ("Name", "Role", "Available", "Breaker", "Fails in a row", "Success"):
        table.add_column(column)
    for column in ("p95 (slowest op)", "In flight", "Pending", "Last error"):
        table.add_column(column)
    for name, doc in _in_chain_order(files):
        raw_stats = doc.get("stats")
        stats: Mapping[str, Any] = raw_stats if isinstance(raw_stats, Mapping) else {}
        rate = doc.get("success_rate")
        table.add_row(
            str(doc.get("name", name)),
            str(doc.get("role", "-")),
            "[green]yes[/]" if doc.get("available") else "[red]no[/]",
            str(doc.get("breaker") or "-"),
            str(doc.get("consecutive_failures", "-")),
            f"{100 * rate:.1f}%" if isinstance(rate, int | float) else "-",
            _worst_p95(doc),
            str(stats.get("in_flight", "-")),
            str(doc.get("pending_ops", "-")),
            _last_error(doc),
        )
    if files.backends:
        console.print(table)

    journal = files.journal or files.status.get("journal") or {}
    if journal:
        console.print(
            f"Journal: {journal.get('pending_entries', 0)} pending"
            f" ({_size(journal.get('pending_bytes', 0))}),"
            f" oldest {_seconds(journal.get('oldest_age_s'))},"
            f" {journal.get('quarantined', 0)} quarantined",
            markup=False,
        )
    extra = [
        f"{files.status.get(key)} {label}"
        for key, label in (
            ("dirty_files", "open file(s) with unsaved changes"),
            ("stale_reads", "stale read(s) since start"),
            ("invalid_keys", "key(s) that cannot be paths"),
        )
        if files.status.get(key)
    ]
    if extra:
        console.print("; ".join(extra), markup=False)


def as_json(files: HealthFiles) -> str:
    text = files.raw_status
    return text if text.endswith("\n") else text + "\n"
