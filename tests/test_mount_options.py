"""`-o` options and the mount(8) helper's arguments, without a mount: what goes to libfuse,
what becomes a setting, what is dropped, and that a bad option is named in the error."""

from __future__ import annotations

import os
import sys

import pytest

from storagefs.cli import mount_helper, mount_options
from storagefs.cli.mount_options import MountOptionError, parse
from storagefs.config import ConfigError, load_settings


def test_owner_and_modes_map_to_settings() -> None:
    opts = parse(["uid=1234,gid=99", "umask=027,file_mode=0640,dir-mode=750"])
    assert opts.settings == {
        "uid": 1234,
        "gid": 99,
        "umask": 0o27,
        "file_mode": 0o640,
        "dir_mode": 0o750,
    }
    settings = load_settings(**opts.settings)
    assert (settings.uid, settings.gid) == (1234, 99)
    assert (settings.umask, settings.file_mode, settings.dir_mode) == (0o27, 0o640, 0o750)
    assert opts.fuse == []


def test_owner_by_name() -> None:
    assert parse(["uid=root,gid=root"]).settings == {"uid": 0, "gid": 0}


def test_fuse_flags_pass_through_and_ro_means_read_only() -> None:
    opts = parse(["allow_other,default_permissions,ro,noatime"])
    assert opts.fuse == ["allow_other", "default_permissions", "ro", "noatime"]
    assert opts.read_only
    assert not parse(["allow_other"]).read_only


def test_fstab_and_systemd_options_are_dropped() -> None:
    given = "defaults,_netdev,nofail,noauto,auto,user,users,nouser,x-systemd.automount,relatime"
    opts = parse([f"{given},x-systemd.requires=network-online.target,comment=x,user=alice"])
    assert opts.fuse == [] and opts.settings == {} and opts.env_file is None
    assert len(opts.ignored) == 13


def test_settings_by_name_and_env_file(tmp_path: os.PathLike[str]) -> None:
    opts = parse([f"cache_dir={tmp_path},secondary=azure://c,env_file=/etc/storagefs/a.env"])
    assert opts.settings == {"cache_dir": str(tmp_path), "secondary": "azure://c"}
    assert str(opts.env_file) == "/etc/storagefs/a.env"


def test_env_umask_is_octal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGEFS_UMASK", "022")
    monkeypatch.setenv("STORAGEFS_UID", "1000")
    settings = load_settings()
    assert settings.umask == 0o22 and settings.uid == 1000
    monkeypatch.setenv("STORAGEFS_UMASK", "9")
    with pytest.raises(ConfigError, match="STORAGEFS_UMASK"):
        load_settings()


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ("allow_othr", "'allow_othr'"),
        ("bogus=1", "'bogus=1'"),
        ("=x", "'=x'"),
        ("umask=999", "umask="),
        ("umask=u+r", "umask="),
        ("file_mode=17777", "file_mode="),
        ("uid=-1", "uid="),
        ("uid=no-such-user-here", "no such user"),
        ("gid=no-such-group-here", "no such group"),
        ("max_read=131072", "'max_read=131072'"),
        ("azure_account_key=abc", "azure_account_key"),
    ],
)
def test_bad_option_is_named(given: str, named: str) -> None:
    with pytest.raises(MountOptionError) as err:
        parse([f"ro,{given}"])
    message = str(err.value)
    assert named in message
    assert "\n" not in message
    assert "abc" not in message  # a secret given by mistake is not echoed


def test_helper_arguments_as_mount8_passes_them() -> None:
    call = mount_helper.parse_args(
        ["s3://bucket/data", "/mnt/data", "-n", "-o", "rw,allow_other,_netdev", "-t", "fuse"]
    )
    assert (call.source, call.mountpoint, call.options, call.fake) == (
        "s3://bucket/data",
        "/mnt/data",
        ["rw,allow_other,_netdev"],
        False,
    )
    assert mount_helper.storagefs_argv(call) == [
        sys.executable,
        "-m",
        "storagefs",
        "mount",
        "/mnt/data",
        "--primary",
        "s3://bucket/data",
        "-o",
        "rw,allow_other,_netdev",
    ]
    assert mount_helper.parse_args(["storagefs", "/m", "-fv"]).fake


def test_helper_configured_source_and_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    call = mount_helper.parse_args(["storagefs", "/mnt", "-ouid=1"])
    assert "--primary" not in mount_helper.storagefs_argv(call)
    assert call.options == ["uid=1"]
    assert mount_helper.main(["bucket-without-scheme", "/mnt"]) == 2
    assert "not a backend URL" in capsys.readouterr().err
    assert mount_helper.main(["/mnt"]) == 2
    assert mount_helper.main(["storagefs", "/mnt", "-o"]) == 2
    assert mount_helper.main(["storagefs", "/mnt", "-f"]) == 0  # mount --fake: nothing to do


def test_every_option_kind_is_documented() -> None:
    # The error message points at docs/MOUNTING.md: it must say what the parser accepts.
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "MOUNTING.md").read_text()
    flags = mount_options.FUSE_FLAGS | mount_options.IGNORED_FLAGS
    for name in sorted(flags | mount_options.IGNORED_ATIME_FLAGS):
        assert f"`{name}`" in doc, name
    for name in ("uid=", "gid=", "umask=", "file_mode=", "dir_mode=", "env_file="):
        assert f"`{name}" in doc, name


def test_cli_takes_the_form_mount_fuse3_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """`storagefs SOURCE MOUNTPOINT -o OPTS` is `storagefs mount MOUNTPOINT --primary SOURCE`."""
    from click.testing import CliRunner

    from storagefs.cli import main as cli

    seen: list[tuple[object, ...]] = []
    monkeypatch.setattr(cli, "check_mountpoint", lambda path: path)
    monkeypatch.setattr(cli, "_run_background", lambda s, mp: seen.append((s.primary, mp, s.uid)))
    result = CliRunner().invoke(cli.main, ["file:///srv/b", "/mnt/b", "-o", "rw,uid=7,_netdev"])
    assert result.exit_code == 0, result.output
    assert [(p, str(mp), uid) for p, mp, uid in seen] == [("file:///srv/b", "/mnt/b", 7)]
    bad = CliRunner().invoke(cli.main, ["file:///srv/b"])
    assert bad.exit_code == 2 and "expected SOURCE and MOUNTPOINT" in bad.output


def test_env_file_sets_what_the_environment_does_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    from pathlib import Path

    from click.testing import CliRunner

    from storagefs.cli import main as cli

    env_file = Path(tmp_path) / "data.env"
    env_file.write_text("STORAGEFS_PRIMARY=file:///from/file\nSTORAGEFS_UMASK=027\n")
    for var in ("STORAGEFS_PRIMARY", "STORAGEFS_UMASK"):
        # setenv first so that monkeypatch restores the variable (to unset) afterwards: the
        # env file's values land in os.environ and must not leak into later tests.
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setenv("STORAGEFS_UMASK", "022")  # the environment wins over the file
    seen: list[tuple[object, ...]] = []
    monkeypatch.setattr(cli, "check_mountpoint", lambda path: path)
    monkeypatch.setattr(cli, "_run_background", lambda s, mp: seen.append((s.primary, s.umask)))
    result = CliRunner().invoke(cli.main, ["mount", "/mnt/x", "-o", f"env_file={env_file}"])
    assert result.exit_code == 0, result.output
    assert seen == [("file:///from/file", 0o22)]
    missing = CliRunner().invoke(cli.main, ["mount", "/mnt/x", "-o", "env_file=/no/such.env"])
    assert missing.exit_code == 2
    assert (
        missing.output.strip()
        == "storagefs: error: env_file /no/such.env does not exist or is not a file"
    )
