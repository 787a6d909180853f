"""Configuration from ``STORAGEFS_*`` environment variables (pydantic-settings).

Every setting has a documented default; a bad value fails at start with one clear line naming
the variable (see :func:`load_settings`), never a traceback.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storagefs import sizes


class ConfigError(Exception):
    """A configuration problem, phrased for the user (one line)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field  # the setting at fault, when there is one


PREFIX = "STORAGEFS_"
# STORAGEFS_* variables that are not settings: read by scripts/emulators, the test suite and
# scripts/bench, never by the daemon. Anything else with the prefix must be a setting.
NOT_SETTINGS = ("STORAGEFS_EMULATOR_", "STORAGEFS_BENCH_", "STORAGEFS_TEST_")
NOT_SETTINGS_NAMES = frozenset({"STORAGEFS_FAULT_FILES", "STORAGEFS_SYNC_OBJECTS"})


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("storagefs"))


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("storagefs")) / "bucket"


# Never echoed in messages, logs or health files.
SECRET_FIELDS = frozenset({"azure_connection_string", "azure_account_key", "azure_sas_token"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STORAGEFS_", extra="ignore")

    # --- what to mount -------------------------------------------------------------------
    primary: str | None = Field(
        default=None,
        description="Primary backend URL: file:///path, s3://bucket/prefix, azure://container/prefix."
        " Unset: a local directory under the user's data directory.",
    )
    secondary: str | None = Field(default=None, description="Optional secondary backend URL.")
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Staging files, cache and journal (created with mode 0700).",
    )
    read_only: bool = Field(default=False, description="Mount read-only (same as -o ro).")

    # --- attributes of objects without stored ones (-o uid=,gid=,umask=,file_mode=,dir_mode=)
    uid: int | None = Field(
        default=None, ge=0, lt=2**32, description="Owner; default: the mounting user."
    )
    gid: int | None = Field(
        default=None, ge=0, lt=2**32, description="Group; default: the mounting user's."
    )
    umask: int | None = Field(
        default=None,
        ge=0,
        le=0o7777,
        description="Octal; file mode 0666 & ~umask, directory mode 0777 & ~umask"
        " (unless file_mode / dir_mode say otherwise). Default: 0644 and 0755.",
    )
    file_mode: int | None = Field(default=None, ge=0, le=0o7777, description="Octal, e.g. 0640.")
    dir_mode: int | None = Field(default=None, ge=0, le=0o7777, description="Octal, e.g. 0750.")
    default_permissions: bool = Field(
        default=True,
        description="The kernel checks mode bits and ownership on every access (FUSE"
        " default_permissions). Off: anyone who may enter the mount may do anything.",
    )

    # --- S3 ------------------------------------------------------------------------------
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (moto, LocalStack, MinIO...)."
    )
    s3_region: str | None = Field(
        default=None, description="Region; default AWS_REGION / AWS_DEFAULT_REGION / us-east-1."
    )
    s3_addressing_style: Literal["path", "virtual", "auto"] = Field(
        default="path", description="Bucket addressing style."
    )

    # --- Azure ---------------------------------------------------------------------------
    azure_connection_string: str | None = Field(default=None, repr=False)
    azure_account_name: str | None = None
    azure_account_key: str | None = Field(default=None, repr=False)
    azure_sas_token: str | None = Field(default=None, repr=False)
    azure_account_url: str | None = Field(
        default=None, description="Blob service URL, e.g. http://127.0.0.1:10000/devstoreaccount1"
    )

    # --- transfers -----------------------------------------------------------------------
    multipart_threshold: int = Field(default=sizes.MULTIPART_THRESHOLD, ge=5 * sizes.MIB)
    multipart_chunksize: int = Field(default=sizes.MULTIPART_CHUNK, ge=5 * sizes.MIB)
    transfer_concurrency: int = Field(
        default=8, ge=1, le=64, description="Parallel parts of one upload/download."
    )
    max_requests: int = Field(
        default=32, ge=1, le=512, description="Requests in flight per backend."
    )
    read_chunk_size: int = Field(
        default=sizes.READ_CHUNK, ge=64 * 1024, description="Size of one ranged GET when reading."
    )
    # 8 rather than 4: a cold 256 MiB read on s3rver, median of 5, 714 -> 588 ms (boto3's
    # download_file has 10 ranges in flight); read_budget still bounds all readers together.
    readahead_chunks: int = Field(
        default=8, ge=0, le=32, description="Chunks fetched ahead in parallel on sequential reads."
    )
    read_budget: int = Field(
        default=128 * 1024 * 1024,
        ge=1024 * 1024,
        description="Bytes of read chunks held or in flight across all open files together.",
    )

    # --- timeouts and caching ------------------------------------------------------------
    connect_timeout: float = Field(
        default=2.0, gt=0, description="Seconds to connect (the SDKs' connect timeout)."
    )
    first_byte_timeout: float = Field(
        default=2.0,
        gt=0,
        description="Seconds one attempt of a metadata request (stat, list, delete) or of a"
        " read/write of at most 1 MiB waits for its answer.",
    )
    request_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds one attempt of a larger transfer may take, plus 1 s per MiB; also"
        " the SDKs' socket read timeout (a transfer silent that long is stalled).",
    )
    hedge_min_delay: float = Field(
        default=0.1,
        gt=0,
        description="A read not answered within the backend's p99 latency, but at least this"
        " many seconds, is also asked of the next backend.",
    )
    hedge_max_delay: float = Field(
        default=1.0,
        gt=0,
        description="... and at most this many seconds (the delay before there are samples).",
    )
    metadata_ttl: float = Field(
        default=5.0, ge=0, description="Seconds attributes and listings are trusted."
    )

    listing_head_limit: int = Field(
        default=256,
        ge=0,
        description="A listing fetches stored attributes (one HEAD each, in parallel) for at"
        " most this many never-seen objects; larger listings show listing attributes.",
    )

    # --- retries and breakers (storagefs.resilience) -------------------------------------
    retry_attempts: int = Field(default=4, ge=1, le=20)
    retry_initial_backoff: float = Field(default=0.1, gt=0)
    retry_max_backoff: float = Field(default=2.0, gt=0)
    operation_deadline: float = Field(
        default=60.0, gt=0, description="Total seconds for one operation, retries included."
    )
    breaker_failures: int = Field(default=5, ge=1, description="Failures that open a breaker.")
    breaker_reset: float = Field(
        default=10.0, gt=0, description="Seconds an open breaker waits before a probe."
    )

    # --- journal and write policy (storagefs.journal, storagefs.chain) -------------------
    write_mode: Literal["through", "back"] = "through"
    write_deadline: float = Field(
        default=3.0,
        gt=0,
        description="Seconds close/fsync wait for the primary (through), plus 1 s per MiB"
        " written; then the journal alone acknowledges it. Not at all once the primary is"
        " known to be unwell.",
    )
    write_back_delay: float = Field(
        default=2.0,
        ge=0,
        description="Seconds a change waits in the journal before replay (back mode), so a"
        " rename or attribute change right after close is folded in (rsync's temp files).",
    )
    commit_interval: float = Field(
        default=1.0,
        ge=0,
        description="Seconds between group commits of the journal (ext4's commit=): changes"
        " journaled without an fsync of their own (write-back mode, held names) are made"
        " durable at least this often, and at once by fsync(). 0: only by fsync() and the next"
        " durable commit.",
    )
    held_names: str = Field(
        default=".*.??????",
        description="Comma-separated globs of temporary file names (default: rsync's"
        " '.NAME.XXXXXX'). In write-through mode such a file is not uploaded at close: it waits"
        " write_back_delay in the journal, so the rename that follows uploads it once, under"
        " its final name, and that rename waits for the primary as a close would. Empty: off.",
    )
    journal_max_bytes: int = Field(default=10 * 1024**3, gt=0)
    cache_max_bytes: int = Field(
        default=2 * 1024**3,
        ge=0,
        description="Clean copies kept on disk to serve reads while remotes are down; 0 = off.",
    )
    replay_workers: int = Field(default=4, ge=1, le=64)
    replay_bytes_per_second: int = Field(
        default=0, ge=0, description="Replay bandwidth cap; 0 = unlimited."
    )

    # --- reconciliation (storagefs.sync) ------------------------------------------------
    sync_enabled: bool = Field(
        default=True,
        description="With a secondary, copy to it in the background what it lacks of the primary.",
    )
    sync_interval: float = Field(
        default=3600.0, gt=0, description="Seconds between two reconciliation passes."
    )
    sync_workers: int = Field(default=4, ge=1, le=64, description="Objects copied at once.")
    sync_bytes_per_second: int = Field(
        default=0, ge=0, description="Reconciliation bandwidth cap; 0 = unlimited."
    )

    # --- logging -------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("umask", "file_mode", "dir_mode", mode="before")
    @classmethod
    def _octal(cls, v: object) -> object:
        # "022", "0o022" and "0022" all mean octal, as in mount(8) options and chmod(1).
        if isinstance(v, str):
            text = v.strip().lower().removeprefix("0o")
            try:
                return int(text, 8)
            except ValueError:
                raise ValueError("expected an octal mode such as 022 or 0644") from None
        return v

    def object_modes(self) -> tuple[int, int]:
        """(file mode, directory mode) of objects that carry no stored mode."""
        umask = self.umask
        file_mode = 0o644 if umask is None else 0o666 & ~umask
        dir_mode = 0o755 if umask is None else 0o777 & ~umask
        if self.file_mode is not None:
            file_mode = self.file_mode
        if self.dir_mode is not None:
            dir_mode = self.dir_mode
        return file_mode, dir_mode

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    def resolved_primary(self) -> str:
        return self.primary or f"file://{default_data_dir()}"


def check_variables(environ: Mapping[str, str]) -> None:
    """ConfigError for a ``STORAGEFS_*`` variable that is no setting (a typo would otherwise
    be ignored silently), naming the closest valid one."""
    valid = sorted(PREFIX + name.upper() for name in Settings.model_fields)
    for var in sorted(environ):
        name = var.upper()
        if not name.startswith(PREFIX) or name in valid or name in NOT_SETTINGS_NAMES:
            continue
        if name.startswith(NOT_SETTINGS):
            continue
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "the settings are listed in README.md"
        raise ConfigError(f"unknown variable {var}: {hint}", field=var)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment plus explicit overrides (CLI flags); ConfigError if bad."""
    check_variables(os.environ)
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        shown = "<redacted>" if field in SECRET_FIELDS else repr(err.get("input"))
        if field in clean:  # given as a command-line flag: name the flag
            flag = "--" + field.replace("_", "-")
            raise ConfigError(f"invalid {flag} {shown}: {err['msg']}", field=field) from None
        raise ConfigError(
            f"invalid STORAGEFS_{field.upper()}={shown}: {err['msg']}", field=field
        ) from None
