"""Which credential the Azure backend uses, chosen from settings and the usual Azure variables.

Order (first match wins): a connection string; an account name + key; a SAS token; otherwise
``DefaultAzureCredential`` (managed identity, workload identity, ``az login``...). Within each
step a ``STORAGEFS_AZURE_*`` setting wins over the Azure SDK's own ``AZURE_STORAGE_*``
variable. Emulator and cloud take the same path: only the endpoint and the credential differ.

Nothing here performs I/O; the chosen credential is first used by the first request.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.storage.blob import BlobServiceClient

from storagefs.backends.base import ConfigurationError
from storagefs.config import Settings

AuthMethod = Literal["connection-string", "account-key", "sas", "default-credential"]


@dataclasses.dataclass(frozen=True)
class AzureClient:
    service: BlobServiceClient = dataclasses.field(repr=False)
    method: AuthMethod
    account_url: str  # without query string: safe to show
    sas_token: str | None = dataclasses.field(default=None, repr=False)  # for copy sources
    credential_to_close: Any = dataclasses.field(default=None, repr=False)


def _pick(settings_value: str | None, environ: Mapping[str, str], env_name: str) -> str | None:
    value = settings_value if settings_value else environ.get(env_name)
    return value.strip() if value and value.strip() else None


def strip_query(url: str) -> str:
    """The URL without query or fragment: a connection string's SAS must not reach a message."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def account_name_from_url(url: str) -> str | None:
    """``devstoreaccount1`` from an emulator URL (path style), ``acct`` from acct.blob.core..."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    path_style = host == "localhost"
    try:
        ipaddress.ip_address(host)
        path_style = True
    except ValueError:
        pass
    if path_style:
        first = parts.path.strip("/").split("/", 1)[0]
        return first or None
    return host.split(".", 1)[0] or None


def build_client(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    **client_options: Any,
) -> AzureClient:
    """A BlobServiceClient for the configured account; ``client_options`` go to the SDK."""
    env = os.environ if environ is None else environ
    conn = _pick(settings.azure_connection_string, env, "AZURE_STORAGE_CONNECTION_STRING")
    if conn:
        try:
            service = BlobServiceClient.from_connection_string(conn, **client_options)
        except ValueError:
            # The SDK's message may quote the string; say only what is wrong.
            raise ConfigurationError(
                "the Azure connection string is malformed (expected "
                "'AccountName=...;AccountKey=...;BlobEndpoint=...' or a SAS form)"
            ) from None
        return AzureClient(service, "connection-string", strip_query(service.url))

    account = _pick(settings.azure_account_name, env, "AZURE_STORAGE_ACCOUNT")
    url = settings.azure_account_url
    if not url:
        if not account:
            raise ConfigurationError(
                "no Azure account: set STORAGEFS_AZURE_ACCOUNT_NAME (or AZURE_STORAGE_ACCOUNT), "
                "STORAGEFS_AZURE_ACCOUNT_URL, or STORAGEFS_AZURE_CONNECTION_STRING"
            )
        url = f"https://{account}.blob.core.windows.net"
    url = strip_query(url)
    if not urlsplit(url).scheme or not urlsplit(url).hostname:
        raise ConfigurationError(f"STORAGEFS_AZURE_ACCOUNT_URL is not a URL: {url!r}")

    key = _pick(settings.azure_account_key, env, "AZURE_STORAGE_KEY")
    if key:
        name = account or account_name_from_url(url)
        if not name:
            raise ConfigurationError(
                "an Azure account key needs an account name: set STORAGEFS_AZURE_ACCOUNT_NAME"
            )
        service = BlobServiceClient(url, AzureNamedKeyCredential(name, key), **client_options)
        return AzureClient(service, "account-key", url)

    sas = _pick(settings.azure_sas_token, env, "AZURE_STORAGE_SAS_TOKEN")
    if sas:
        sas = sas.lstrip("?")
        # A credential object, not a URL query: keeps the token out of every URL we print.
        service = BlobServiceClient(url, AzureSasCredential(sas), **client_options)
        return AzureClient(service, "sas", url, sas_token=sas)

    from azure.identity import DefaultAzureCredential  # slow import; only this path needs it

    credential = DefaultAzureCredential()
    service = BlobServiceClient(url, credential, **client_options)
    return AzureClient(service, "default-credential", url, credential_to_close=credential)
