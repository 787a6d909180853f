"""Scrubbing secrets out of text that leaves the process (health files, logs, telemetry).

Backends already build their messages without credentials; this is the second line of
defence for what they cannot foresee (an SDK quoting a signed URL, a connection string in an
exception). Two kinds of rules:

* the *values* of the credential variables in the environment (and their parts and URL-encoded
  forms) are replaced wherever they appear;
* ``name=value`` pairs that carry credentials by nature (``AccountKey=``, ``sig=``,
  ``X-Amz-Signature=`` ...) have their value replaced whatever it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote

REDACTED = "<redacted>"

# Environment variables whose values are credentials, for any SDK we use.
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "STORAGEFS_AZURE_ACCOUNT_KEY",
    "STORAGEFS_AZURE_CONNECTION_STRING",
    "STORAGEFS_AZURE_SAS_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
    "NEW_RELIC_LICENSE_KEY",
    "NEW_RELIC_API_KEY",
    "NEW_RELIC_INSERT_KEY",
)

# Shorter values are too likely to be ordinary words or numbers to replace everywhere.
_MIN_SECRET_CHARS = 8

_SECRET_PAIRS = re.compile(
    r"(AccountKey|SharedAccessSignature|sig|Signature|X-Amz-Signature|X-Amz-Credential"
    r"|X-Amz-Security-Token|aws_secret_access_key|client_secret|password|license_key)"
    r"(\s*[=:]\s*)[^\s;&'\",}]+",
    re.IGNORECASE,
)


def _parts(value: str) -> set[str]:
    """A secret plus the pieces of it that may show up on their own."""
    found = {value, value.lstrip("?")}
    for pair in value.split(";"):  # connection strings: Key=value;Key=value
        name, _, part = pair.partition("=")
        if name.strip().lower() in ("accountkey", "sharedaccesssignature") and part:
            found.add(part.strip())
            found.update(_parts(part.strip()) - {part.strip()})
    for name, part in parse_qsl(value.lstrip("?"), keep_blank_values=False):
        if name == "sig":  # a SAS token: its signature is the secret part
            found.add(part)
    found |= {quote(v, safe="") for v in found}
    return {v for v in found if len(v) >= _MIN_SECRET_CHARS}


class Redactor:
    """Replaces known secret values and credential-shaped ``name=value`` pairs."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values: set[str] = set()
        for secret in secrets:
            if secret:
                values |= _parts(secret.strip())
        # Longest first, so a secret that contains another is replaced whole.
        self._values = sorted(values, key=len, reverse=True)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Redactor:
        env = os.environ if environ is None else environ
        return cls([env.get(name, "") for name in SECRET_ENV_VARS])

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        return _SECRET_PAIRS.sub(rf"\1\2{REDACTED}", text)


_cached: tuple[tuple[str, ...], Redactor] | None = None


def current() -> Redactor:
    """The redactor for the environment as it is now (rebuilt only when it changed)."""
    global _cached
    key = tuple(os.environ.get(name, "") for name in SECRET_ENV_VARS)
    if _cached is None or _cached[0] != key:
        _cached = (key, Redactor.from_environment())
    return _cached[1]


def redact(text: str) -> str:
    return current()(text)
