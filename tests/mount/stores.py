"""Direct access to the store under a mount, without storagefs in the way.

The mount tests write through FUSE and then look at the bucket (or directory) itself, and put
objects "behind the mount's back"; each store kind speaks its own SDK here.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

# Parallel requests when seeding many objects: the emulators answer each request slowly, not
# many requests slowly.
SEED_WORKERS = 16


class Store(Protocol):
    kind: str  # "local", "s3", "azure"
    url: str  # what STORAGEFS_PRIMARY says
    env: dict[str, str]  # what the daemon needs besides STORAGEFS_PRIMARY

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None: ...

    def list_keys(self) -> list[str]:
        """Every key below the mount root, relative to it, sorted."""
        ...

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None: ...

    def put_with_metadata(self, key: str, data: bytes, metadata: Mapping[str, str]) -> None:
        """An object (``dir/``: a marker) written by another tool, with its own metadata."""
        ...

    def metadata(self, key: str) -> dict[str, str]:
        """The user metadata of ``key`` as the store keeps it."""
        ...


# The local backend's metadata: extended attributes of the backing file (backends/local.py).
LOCAL_META_PREFIX = "user.storagefs."


class LocalStore:
    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"
        self.env: dict[str, str] = {}

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def delete(self, key: str) -> None:
        (self.root / key).unlink()

    def list_keys(self) -> list[str]:
        # The local backend keeps its in-flight temporary files in a hidden directory.
        return sorted(
            str(p.relative_to(self.root))
            for p in self.root.rglob("*")
            if p.is_file() and not p.relative_to(self.root).parts[0].startswith(".storagefs")
        )

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        for key, data in items:
            self.put(key, data)

    def put_with_metadata(self, key: str, data: bytes, metadata: Mapping[str, str]) -> None:
        path = self.root / key
        if key.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            self.put(key, data)
        for name, value in metadata.items():
            os.setxattr(path, LOCAL_META_PREFIX + name, value.encode())

    def metadata(self, key: str) -> dict[str, str]:
        path = self.root / key
        return {
            n[len(LOCAL_META_PREFIX) :]: os.getxattr(path, n).decode()
            for n in os.listxattr(path)
            if n.startswith(LOCAL_META_PREFIX)
        }


class S3Store:
    kind = "s3"

    def __init__(self, endpoint_url: str, bucket: str, prefix: str) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}"
        self.env = {"STORAGEFS_S3_ENDPOINT_URL": endpoint_url}
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(max_pool_connections=SEED_WORKERS * 2),
        )

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + "/" + key, Body=data)

    def get(self, key: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + "/" + key)["Body"]
        data: bytes = body.read()
        return data

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + "/" + key)

    def list_keys(self) -> list[str]:
        found: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            found.extend(o["Key"] for o in page.get("Contents", []))
        outside = [k for k in found if not k.startswith(self.prefix + "/")]
        assert not outside, f"objects outside the prefix {self.prefix!r}: {outside[:5]}"
        return sorted(k[len(self.prefix) + 1 :] for k in found)

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        _parallel(self.put, items)

    def put_with_metadata(self, key: str, data: bytes, metadata: Mapping[str, str]) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=self.prefix + "/" + key, Body=data, Metadata=dict(metadata)
        )

    def metadata(self, key: str) -> dict[str, str]:
        head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + "/" + key)
        return dict(head["Metadata"])


class AzureStore:
    kind = "azure"

    def __init__(self, connection_string: str, container: str, prefix: str) -> None:
        from azure.storage.blob import ContainerClient

        self.prefix = prefix
        self.url = f"azure://{container}/{prefix}"
        self.env = {"STORAGEFS_AZURE_CONNECTION_STRING": connection_string}
        self.client: Any = ContainerClient.from_connection_string(connection_string, container)

    def put(self, key: str, data: bytes) -> None:
        self.client.upload_blob(self.prefix + "/" + key, data, overwrite=True)

    def get(self, key: str) -> bytes:
        data: bytes = self.client.download_blob(self.prefix + "/" + key).readall()
        return data

    def delete(self, key: str) -> None:
        self.client.delete_blob(self.prefix + "/" + key)

    def list_keys(self) -> list[str]:
        found = list(self.client.list_blob_names())
        outside = [k for k in found if not k.startswith(self.prefix + "/")]
        assert not outside, f"blobs outside the prefix {self.prefix!r}: {outside[:5]}"
        return sorted(k[len(self.prefix) + 1 :] for k in found)

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        _parallel(self.put, items)

    def put_with_metadata(self, key: str, data: bytes, metadata: Mapping[str, str]) -> None:
        self.client.upload_blob(
            self.prefix + "/" + key, data, overwrite=True, metadata=dict(metadata)
        )

    def metadata(self, key: str) -> dict[str, str]:
        props = self.client.get_blob_client(self.prefix + "/" + key).get_blob_properties()
        return dict(props.metadata)


def _parallel(put: Any, items: Iterable[tuple[str, bytes]]) -> None:
    with concurrent.futures.ThreadPoolExecutor(SEED_WORKERS) as pool:
        for future in [pool.submit(put, key, data) for key, data in items]:
            future.result()
