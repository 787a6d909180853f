"""Uploads carry a Content-Type guessed from the object's name (S3 and Azure)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from azure.storage.blob import ContainerClient

from storagefs.backends.azure import AzureBackend
from storagefs.backends.base import content_type
from storagefs.backends.s3 import S3Backend
from storagefs.config import Settings
from tests.conftest import AzureContainer, S3Bucket


def test_guesses() -> None:
    assert content_type("docs/report.pdf") == "application/pdf"
    assert content_type("a/b.txt") == "text/plain"
    assert content_type("site/index.html") == "text/html"
    assert content_type("backup.tar.gz") == "application/gzip"
    assert content_type("no-extension") == "application/octet-stream"
    assert content_type("dir/") == "application/x-directory"


@pytest.mark.s3
async def test_s3_uploads_have_a_content_type(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    backend = S3Backend(s3_bucket.bucket, "", Settings(s3_endpoint_url=s3_bucket.endpoint_url))
    await backend.open()
    source = tmp_path / "src"
    source.write_text("<p>hi</p>")
    await backend.write("page.html", str(source), {})
    await backend.write_bytes("notes.txt", b"hi", {})
    await backend.copy("notes.txt", "notes.json", {"mode": "33188"})
    client = boto3.client("s3", endpoint_url=s3_bucket.endpoint_url)
    types = {
        key: client.head_object(Bucket=s3_bucket.bucket, Key=key)["ContentType"]
        for key in ("page.html", "notes.txt", "notes.json")
    }
    await backend.close()
    assert types == {
        "page.html": "text/html",
        "notes.txt": "text/plain",
        "notes.json": "application/json",
    }


@pytest.mark.azure
async def test_azure_uploads_have_a_content_type(
    azure_container: AzureContainer, tmp_path: Path
) -> None:
    settings = Settings(azure_connection_string=azure_container.connection_string)
    backend = AzureBackend(azure_container.container, "", settings, environ={})
    await backend.open()
    source = tmp_path / "src"
    source.write_text("<p>hi</p>")
    await backend.write("page.html", str(source), {})
    await backend.write_bytes("notes.txt", b"hi", {})
    client = ContainerClient.from_connection_string(
        azure_container.connection_string, azure_container.container
    )
    types = {
        name: client.get_blob_client(name).get_blob_properties().content_settings.content_type
        for name in ("page.html", "notes.txt")
    }
    await backend.close()
    assert types == {"page.html": "text/html", "notes.txt": "text/plain"}
