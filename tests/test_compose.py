"""docker-compose.yml must give Docker users the same emulators `scripts/emulators` gives
everybody else: same ports, same credentials, same bucket and container. There is no Docker
engine here, so the file is read as YAML and the parts that can run without Docker do run:
the Azurite init command (with the local node) against a real Azurite."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from azure.storage.blob import BlobServiceClient

from storagefs.devtools import emulators
from storagefs.devtools.emulators import EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def emulator_env() -> dict[str, str]:
    """What `scripts/emulators env` tells a user to export (default ports)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORAGEFS_EMULATOR_")}
    out = subprocess.run(
        [str(ROOT / "scripts" / "emulators"), "env"],
        env={**env, "VIRTUAL_ENV": str(Path(sys.executable).parent.parent)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    exported: dict[str, str] = {}
    for line in out.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            name, _, value = words[1].partition("=")
            exported[name] = value
    return exported


def conn_parts(conn: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in conn.split(";") if part)


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) for every short-syntax port mapping."""
    result = []
    for spec in service.get("ports", []):
        ip, host, container = str(spec).split(":")
        result.append((ip, int(host), int(container)))
    return result


def test_services_and_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"localstack", "azurite", "azurite-init"}
    assert services["localstack"]["image"].startswith("localstack/localstack:")
    for name in ("azurite", "azurite-init"):
        assert services[name]["image"].startswith("mcr.microsoft.com/azure-storage/azurite:")


def test_ports_match_the_emulator_script(
    compose: dict[str, Any], emulator_env: dict[str, str]
) -> None:
    services = compose["services"]
    s3 = urlsplit(emulator_env["STORAGEFS_S3_ENDPOINT_URL"])
    blob = urlsplit(conn_parts(emulator_env["STORAGEFS_AZURE_CONNECTION_STRING"])["BlobEndpoint"])
    assert (s3.hostname, s3.port) == ("127.0.0.1", 4566)
    assert (blob.hostname, blob.port) == ("127.0.0.1", 10000)
    # Published on loopback only: the emulators accept anyone's well-known credentials.
    assert published(services["localstack"]) == [("127.0.0.1", s3.port, 4566)]
    assert published(services["azurite"]) == [("127.0.0.1", blob.port, 10000)]


def test_s3_credentials_region_and_bucket_match(
    compose: dict[str, Any], emulator_env: dict[str, str]
) -> None:
    localstack = compose["services"]["localstack"]
    env = localstack["environment"]
    assert env["SERVICES"] == "s3"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        assert env[name] == emulator_env[name]
    assert emulator_env["AWS_DEFAULT_REGION"] == "us-east-1"
    bucket = urlsplit(emulator_env["STORAGEFS_PRIMARY"]).netloc
    assert bucket == emulators.DEFAULT_BUCKET

    # The init hook: an executable script in ready.d that creates that bucket.
    (mount,) = localstack["configs"]
    assert mount["target"].startswith("/etc/localstack/init/ready.d/")
    assert mount["target"].endswith(".sh")
    assert mount["mode"] & 0o111
    script = compose["configs"][mount["source"]]["content"]
    assert script.startswith("#!/bin/sh\n")
    assert f"s3://{bucket}" in script
    # Healthy only once the bucket exists.
    assert localstack["healthcheck"]["test"][-1] == f"http://127.0.0.1:4566/{bucket}"


def test_azure_account_key_and_endpoint_match(
    compose: dict[str, Any], emulator_env: dict[str, str]
) -> None:
    azurite = compose["services"]["azurite"]
    parts = conn_parts(emulator_env["STORAGEFS_AZURE_CONNECTION_STRING"])
    account, key = azurite["environment"]["AZURITE_ACCOUNTS"].split(":", 1)
    assert (account, key) == (parts["AccountName"], parts["AccountKey"])
    assert urlsplit(parts["BlobEndpoint"]).path == f"/{account}"

    command = azurite["command"]
    assert command[0] == "azurite-blob"  # blob service only
    for flag in ("--disableTelemetry", "--loose", "--skipApiVersionCheck"):
        assert flag in command
    assert command[command.index("--blobPort") + 1] == "10000"
    assert command[command.index("--blobHost") + 1] == "0.0.0.0"


def test_every_service_that_stays_up_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name in ("localstack", "azurite"):
        check = compose["services"][name]["healthcheck"]
        assert check["test"][0] == "CMD"
        assert check["interval"] and check["retries"] >= 1
    init = compose["services"]["azurite-init"]
    assert init["depends_on"]["azurite"]["condition"] == "service_healthy"
    assert init["restart"] == "no"
    assert init["environment"]["CONTAINER"] == emulators.DEFAULT_CONTAINER
    assert init["environment"]["AZURITE_HOST"] == "azurite"
    assert init["environment"]["AZURITE_ACCOUNT"] == emulators.AZURITE_ACCOUNT


def test_only_intended_compose_variables() -> None:
    # Compose substitutes every "$": any other "$" would silently mangle a script.
    dollars = re.findall(r"\$\{?[^\s]*", COMPOSE.read_text())
    allowed = re.compile(r"\$\{[A-Z_]+:-[^}]*\}")
    assert all(allowed.match(d) or d.startswith("$(scripts/") for d in dollars), dollars


def test_azurite_init_command_creates_the_container_and_is_idempotent(
    compose: dict[str, Any], azurite_server: EmulatorProcess
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    init = compose["services"]["azurite-init"]
    assert init["command"][:2] == ["node", "-e"]
    container = f"compose-{uuid.uuid4().hex[:12]}"
    env = {
        **{k: str(v) for k, v in init["environment"].items()},
        "AZURITE_HOST": "127.0.0.1",
        "AZURITE_PORT": str(azurite_server.port),
        "CONTAINER": container,
        "PATH": os.environ.get("PATH", ""),
    }
    for expected in ("HTTP 201", "HTTP 409"):  # created, then "already exists" is fine too
        done = subprocess.run(
            [node, *init["command"][1:]], env=env, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert expected in done.stdout
    conn = emulators.azurite_connection_string(azurite_server.port)
    with BlobServiceClient.from_connection_string(conn) as service:
        assert service.get_container_client(container).exists()
        service.delete_container(container)
