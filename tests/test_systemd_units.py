"""The shipped systemd units: `systemd-analyze verify` finds nothing to say about them (with
ExecStart pointed at an existing program, as scripts/install --system does), and they wire the
health probe in."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).parents[1] / "storagefs" / "data" / "systemd"
INSTALLED_PATH = "/usr/local/bin/storagefs"


def _instances(tmp_path: Path) -> list[Path]:
    """The templates as instances for /mnt/data, with storagefs replaced by /bin/true."""
    out = []
    for template in sorted(UNITS.iterdir()):
        text = template.read_text()
        assert INSTALLED_PATH in text or template.suffix == ".timer", template
        target = tmp_path / template.name.replace("@.", "@mnt-data.")
        target.write_text(text.replace(INSTALLED_PATH, shutil.which("true") or "/bin/true"))
        out.append(target)
    return out


def test_units_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    units = _instances(tmp_path)
    assert len(units) == 3
    result = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    complaints = [ln for ln in (result.stdout + result.stderr).splitlines() if "storagefs" in ln]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def _parse(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def test_units_wire_the_health_probe_in() -> None:
    service = _parse("storagefs@.service")
    assert service["Service"]["ExecStart"] == f"{INSTALLED_PATH} mount %f"
    assert service["Service"]["ExecStartPost"] == f"{INSTALLED_PATH} health --degraded-ok %f"
    assert service["Service"]["ExecStop"].startswith(f"{INSTALLED_PATH} unmount ")
    assert service["Unit"]["After"] == "network-online.target"
    probe = _parse("storagefs-health@.service")
    assert probe["Service"]["ExecStart"].startswith(f"{INSTALLED_PATH} health --degraded-ok")
    timer = _parse("storagefs-health@.timer")
    assert timer["Unit"]["PartOf"] == "storagefs@%i.service"
    assert "OnUnitActiveSec" in timer["Timer"]


@pytest.mark.parametrize(
    ("state", "plain", "degraded_ok"), [("ok", 0, 0), ("degraded", 1, 0), ("down", 2, 2)]
)
def test_probe_exit_codes(tmp_path: Path, state: str, plain: int, degraded_ok: int) -> None:
    """What the units' probe answers, read from a directory laid out like a mount's."""
    from click.testing import CliRunner

    from storagefs.cli.main import main

    (tmp_path / ".health").mkdir()
    (tmp_path / ".health" / "status.json").write_text(f'{{"status": "{state}"}}')
    runner = CliRunner()
    assert runner.invoke(main, ["health", str(tmp_path)]).exit_code == plain
    result = runner.invoke(main, ["health", "--degraded-ok", str(tmp_path)])
    assert result.exit_code == degraded_ok, result.output
    assert runner.invoke(main, ["health", "--degraded-ok", str(tmp_path / "x")]).exit_code == 2
