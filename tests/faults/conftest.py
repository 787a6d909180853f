"""A real mount over S3 (moto) as primary and Azure (Azurite) as secondary, each reached
through its own :class:`FaultProxy`, with timeouts small enough for faults to play out in
seconds.

Fixture order matters and is fixed by the dependencies: ``rig`` (emulator bucket and
container, proxies) is set up before H5's ``mount`` factory and torn down after it, and
``chain_mount`` sets both proxies back to ``pass`` before ``mount`` unmounts, so the daemon
always exits against reachable stores and a test that failed mid-outage still cleans up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from storagefs.devtools import emulators
from storagefs.devtools.emulators import EmulatorProcess
from tests.conftest import AzureContainer, S3Bucket
from tests.faultproxy import FaultProxy
from tests.mount.conftest import mount  # noqa: F401  (H5's factory, reused as is)
from tests.mount.harness import FUSERMOUNT, Mount, MountFactory
from tests.mount.stores import AzureStore, S3Store

PREFIX = "data"

# The knobs of storagefs.resilience, small: one attempt gets REQUEST_TIMEOUT seconds, an
# operation RETRY_ATTEMPTS attempts (backoff at most RETRY_MAX_BACKOFF between them), and
# BREAKER_FAILURES failed operations in a row open the breaker for BREAKER_RESET seconds.
REQUEST_TIMEOUT = 1.0
CONNECT_TIMEOUT = 0.5
RETRY_ATTEMPTS = 2
RETRY_MAX_BACKOFF = 0.2
OPERATION_DEADLINE = 3.0
BREAKER_FAILURES = 2
BREAKER_RESET = 1.0
WRITE_DEADLINE = 3.0
METADATA_TTL = 0.5

FAST_ENV = {
    "STORAGEFS_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
    "STORAGEFS_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
    "STORAGEFS_RETRY_ATTEMPTS": str(RETRY_ATTEMPTS),
    "STORAGEFS_RETRY_INITIAL_BACKOFF": "0.05",
    "STORAGEFS_RETRY_MAX_BACKOFF": str(RETRY_MAX_BACKOFF),
    "STORAGEFS_OPERATION_DEADLINE": str(OPERATION_DEADLINE),
    "STORAGEFS_BREAKER_FAILURES": str(BREAKER_FAILURES),
    "STORAGEFS_BREAKER_RESET": str(BREAKER_RESET),
    "STORAGEFS_WRITE_DEADLINE": str(WRITE_DEADLINE),
    "STORAGEFS_METADATA_TTL": str(METADATA_TTL),
}


@dataclasses.dataclass
class ChainStore:
    """What the mount factory needs (a Store's url, env, kind) for the S3 -> Azure chain."""

    url: str
    env: dict[str, str]
    kind: str = "s3+azure"


@dataclasses.dataclass
class Rig:
    s3_proxy: FaultProxy  # between the daemon and moto
    azure_proxy: FaultProxy  # between the daemon and Azurite
    s3: S3Store  # moto directly, for checking what really arrived
    azure: AzureStore  # Azurite directly
    chain: ChainStore  # what the daemon is told: the proxies' addresses

    def heal(self) -> None:
        self.s3_proxy.set_mode("pass")
        self.azure_proxy.set_mode("pass")


@pytest.fixture
def rig(
    s3_bucket: S3Bucket, azure_container: AzureContainer, azurite_server: EmulatorProcess
) -> Iterator[Rig]:
    s3_target = s3_bucket.endpoint_url.rsplit(":", 1)
    with (
        FaultProxy(s3_target[0].removeprefix("http://"), int(s3_target[1])) as s3_proxy,
        FaultProxy(emulators.HOST, azurite_server.port) as azure_proxy,
    ):
        s3 = S3Store(s3_bucket.endpoint_url, s3_bucket.bucket, PREFIX)
        azure = AzureStore(azure_container.connection_string, azure_container.container, PREFIX)
        via_proxy = emulators.azurite_connection_string(azure_proxy.port)
        chain = ChainStore(
            url=s3.url,
            env={
                "STORAGEFS_S3_ENDPOINT_URL": s3_proxy.url,
                "STORAGEFS_SECONDARY": azure.url,
                "STORAGEFS_AZURE_CONNECTION_STRING": via_proxy,
                **FAST_ENV,
            },
        )
        yield Rig(s3_proxy, azure_proxy, s3, azure, chain)
        s3.client.close()


@pytest.fixture
def chain_mount(rig: Rig, mount: MountFactory) -> Iterator[MountFactory]:  # noqa: F811
    """``chain_mount(env={...}) -> Mount``: the rig's chain mounted; ``env`` overrides.
    ``defaults=True`` leaves out the shortened timeouts of FAST_ENV."""
    if not Path("/dev/fuse").exists():
        pytest.skip("/dev/fuse is missing: FUSE mounts are not possible here")
    if FUSERMOUNT is None:
        pytest.skip("fusermount3 is not installed (apt-get install fuse3)")

    def start(*, env: Mapping[str, str] | None = None, defaults: bool = False) -> Mount:
        store = rig.chain
        if defaults:  # the shipped timeouts, as a new user has them
            plain = {k: v for k, v in store.env.items() if k not in FAST_ENV}
            store = dataclasses.replace(store, env=plain)
        return mount(store, env={**store.env, **(env or {})})

    yield start
    rig.heal()
