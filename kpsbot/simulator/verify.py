"""Request authentication as Huawei's API gateway does it: SDK-HMAC-SHA256 signatures and X-Auth-Token."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from kpsbot.kps.auth import DATE_FORMAT, canonical_request, parse_authorization, signature, string_to_sign

CLOCK_SKEW = 15 * 60  # seconds of X-Sdk-Date drift the API gateway tolerates


class AuthFailure(Exception):
    """A request the API gateway would reject with 401 APIGW.0301."""


@dataclass(frozen=True, repr=False)
class Credentials:
    """What one simulated account accepts: an AK/SK pair, an IAM token, both, or nothing (no checks)."""

    ak: str | None = None
    sk: str | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if (self.ak is None) != (self.sk is None):
            raise ValueError("set both ak and sk, or neither")

    def __repr__(self) -> str:
        return f"Credentials(auth={self.kinds})"

    @property
    def kinds(self) -> list[str]:
        """Which kinds are accepted (`aksk`, `token`), never the values."""
        return [kind for kind, value in (("aksk", self.ak), ("token", self.token)) if value]

    @property
    def required(self) -> bool:
        return bool(self.ak or self.token)

    def check_token(self, value: str) -> bool:
        return bool(self.token) and hmac.compare_digest(value.encode(), (self.token or "").encode())

    def check_access_key(self, value: str) -> bool:
        return bool(self.ak) and hmac.compare_digest(value.encode(), (self.ak or "").encode())


def _header_value(raw: str) -> str:
    # http.server decodes headers as latin-1; the signer hashed the UTF-8 text.
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def verify_request(
    credentials: Credentials,
    method: str,
    raw_path: str,
    headers: Any,
    body: bytes,
    now: float,
    project_id: str | None = None,
) -> None:
    """Raise AuthFailure unless the request carries an accepted token or a valid AK/SK signature.

    `raw_path` is the path and query as sent (a region prefix included): that is what was signed.
    `project_id`: the served project the request addresses; a present X-Project-Id must name it.
    """
    project = headers.get("X-Project-Id")
    if project_id is not None and project is not None and project != project_id:
        raise AuthFailure("X-Project-Id does not match the project in the request path")
    if not credentials.required:
        return
    token = headers.get("X-Auth-Token")
    if token is not None:
        if not credentials.check_token(token):
            raise AuthFailure("the token is invalid or has expired")
        return
    authorization = headers.get("Authorization")
    if authorization is None:
        raise AuthFailure("no Authorization or X-Auth-Token header")
    if credentials.sk is None:
        raise AuthFailure("AK/SK authentication is not enabled")
    fields = parse_authorization(authorization)
    if fields is None:
        raise AuthFailure("malformed Authorization header")
    if not credentials.check_access_key(fields["Access"]):
        raise AuthFailure("unknown access key")
    names = fields["SignedHeaders"].split(";")
    if names != sorted(names) or any(name != name.lower() or not name for name in names):
        raise AuthFailure("SignedHeaders must be lower-case and sorted")
    if not {"host", "x-sdk-date"} <= set(names):
        raise AuthFailure("host and x-sdk-date must be signed")
    signed = {}
    for name in names:
        value = headers.get(name)
        if value is None:
            raise AuthFailure(f"signed header {name} is missing")
        signed[name] = _header_value(value)
    sdk_date = signed["x-sdk-date"]
    try:
        when = datetime.strptime(sdk_date, DATE_FORMAT).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise AuthFailure("X-Sdk-Date is not YYYYMMDDTHHMMSSZ") from None
    if abs(now - when) > CLOCK_SKEW:
        raise AuthFailure("X-Sdk-Date is more than 15 minutes away from the server time")
    parts = urlsplit(raw_path)
    canonical = canonical_request(
        method, parts.path, parse_qsl(parts.query, keep_blank_values=True), signed, names, body
    )
    expected = signature(credentials.sk, string_to_sign(sdk_date, canonical))
    if not hmac.compare_digest(expected, fields["Signature"]):
        raise AuthFailure("the signature does not match")
