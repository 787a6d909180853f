"""Every ``storagefs.x.y`` named in the docs, the README, the scripts and the package's own
docstrings and comments resolves to a module or an attribute of one, and every
``storagefs/...`` path named in the docs exists: a module moved or renamed must take its
mentions along (issue #22 found eight stale ones). Logger names (``getLogger("storagefs.fs")``)
are names, not modules, and count as resolved."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOTTED = re.compile(r"(?<![\w/.-])storagefs(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(r"(?<![\w./~-])(storagefs/[\w./-]*\w)")
LOGGER = re.compile(r"getLogger\(\"(storagefs[\w.]*)\"\)")


def _texts() -> list[Path]:
    scripts = [p for p in (ROOT / "scripts").iterdir() if p.is_file()]
    return [
        *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "README.md",
        *sorted((ROOT / "storagefs").rglob("*.py")),
        *sorted(scripts),
    ]


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            continue
        obj: object = importlib.import_module(module)
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_named_module_and_path_exists() -> None:
    files = _texts()
    loggers = {m for f in files for m in LOGGER.findall(f.read_text(errors="replace"))}
    stale: list[str] = []
    for f in files:
        text = f.read_text(errors="replace")
        for name in sorted(set(DOTTED.findall(text))):
            if name not in loggers and not _resolves(name):
                stale.append(f"{f.relative_to(ROOT)}: {name}")
        if f.suffix == ".md":
            for path in sorted(set(PATH.findall(text))):
                if not (ROOT / path).exists():
                    stale.append(f"{f.relative_to(ROOT)}: {path}")
    assert not stale, "stale references:\n" + "\n".join(stale)
