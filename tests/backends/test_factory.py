"""backend_from_url: what each URL builds, and one clear line for each malformed one."""

from __future__ import annotations

from pathlib import Path

import pytest

from storagefs.backends import backend_from_url
from storagefs.backends.base import ConfigurationError
from storagefs.backends.local import LocalBackend
from storagefs.backends.s3 import S3Backend
from storagefs.config import Settings, default_data_dir


@pytest.fixture
def settings() -> Settings:
    return Settings(s3_endpoint_url="http://127.0.0.1:4566")


def test_file_url(tmp_path: Path, settings: Settings) -> None:
    backend = backend_from_url(f"file://{tmp_path}/with%20space", settings)
    assert isinstance(backend, LocalBackend)
    assert backend.root == tmp_path / "with space"
    assert backend.name == "local"
    assert backend_from_url(f"file://{tmp_path}", settings, name="cache").name == "cache"


def test_s3_url(settings: Settings) -> None:
    backend = backend_from_url("s3://my-bucket.example/some/prefix/", settings)
    assert isinstance(backend, S3Backend)
    assert (backend.bucket, backend.prefix, backend.name) == (
        "my-bucket.example",
        "some/prefix/",
        "s3",
    )
    plain = backend_from_url("s3://my-bucket", settings, name="primary")
    assert isinstance(plain, S3Backend)
    assert (plain.prefix, plain.name) == ("", "primary")


def test_the_default_data_directory_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    url = Settings().resolved_primary()
    assert url == f"file://{default_data_dir()}"
    backend = backend_from_url(url, settings)
    assert isinstance(backend, LocalBackend)
    assert backend.root.is_dir()
    assert backend.root.is_relative_to(tmp_path)


def test_other_missing_directories_are_not_created(tmp_path: Path, settings: Settings) -> None:
    backend_from_url(f"file://{tmp_path}/typo", settings)
    assert not (tmp_path / "typo").exists()  # open() will say it does not exist


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://host/path", "unknown scheme 'ftp'"),
        ("/just/a/path", "unknown scheme '(none)'"),
        ("file://relative/path", "absolute path"),
        ("file:relative", "absolute path"),
        ("file://", "absolute path"),
        ("s3://", "no bucket name"),
        ("s3:///prefix", "no bucket name"),
        ("s3://UpperCase", "not a valid S3 bucket name"),
        ("s3://ab", "not a valid S3 bucket name"),
        ("s3://under_score", "not a valid S3 bucket name"),
        ("s3://" + "a" * 64, "not a valid S3 bucket name"),
        ("s3://-dash-first", "not a valid S3 bucket name"),
        ("s3://two..dots", "two adjacent periods"),
        ("s3://192.168.1.1", "IP address"),
        ("s3://xn--bucket", "reserved"),
        ("s3://bucket-s3alias", "reserved"),
        ("s3://bucket:4566", "not a valid S3 bucket name"),
        ("s3://bucket?versioning=1", "query strings"),
        ("azure://", "no container name"),
    ],
)
def test_malformed_urls(url: str, problem: str, settings: Settings) -> None:
    with pytest.raises(ConfigurationError) as err:
        backend_from_url(url, settings)
    message = str(err.value)
    assert problem in message
    assert url in message
    assert "\n" not in message


def test_credentials_in_a_url_are_refused_and_not_echoed(settings: Settings) -> None:
    with pytest.raises(ConfigurationError) as err:
        backend_from_url("s3://AKIAID:topsecret@bucket/prefix", settings)
    assert "topsecret" not in str(err.value)
    assert "AKIAID" not in str(err.value)
    assert "s3://***@bucket/prefix" in str(err.value)


def test_azure_url(settings: Settings) -> None:
    try:
        import storagefs.backends.azure as azure
    except ModuleNotFoundError:
        with pytest.raises(ConfigurationError, match="azure backend not available yet"):
            backend_from_url("azure://container/prefix", settings)
        return
    conn = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    )
    settings = settings.model_copy(update={"azure_connection_string": conn})
    backend = backend_from_url("azure://container/prefix", settings, name="secondary")
    assert isinstance(backend, azure.AzureBackend)
    assert backend.name == "secondary"
