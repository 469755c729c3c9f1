"""Request authentication as Huawei's API gateway does it: SDK-HMAC-SHA256 signatures and X-Auth-Token."""

from __future__ import annotations

import hmac
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from kpsbot.kps.auth import DATE_FORMAT, canonical_request, parse_authorization, string_to_sign

if TYPE_CHECKING:
    from kpsbot.simulator.state import Simulator

CLOCK_SKEW = 15 * 60  # seconds of X-Sdk-Date drift the API gateway tolerates


class AuthFailure(Exception):
    """A request the API gateway would reject with 401 APIGW.0301."""


def _header_value(raw: str) -> str:
    # http.server decodes headers as latin-1; the signer hashed the UTF-8 text.
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def verify_request(
    sim: Simulator,
    method: str,
    raw_path: str,
    headers: Any,
    body: bytes,
) -> None:
    """Raise AuthFailure unless the request carries an accepted token or a valid AK/SK signature."""
    project = headers.get("X-Project-Id")
    if project is not None and project != sim.project_id:
        raise AuthFailure("X-Project-Id does not match the project of the credentials")
    if not sim.auth_required:
        return
    token = headers.get("X-Auth-Token")
    if token is not None:
        if not sim.check_token(token):
            raise AuthFailure("the token is invalid or has expired")
        return
    authorization = headers.get("Authorization")
    if authorization is None:
        raise AuthFailure("no Authorization or X-Auth-Token header")
    if not sim.aksk_enabled:
        raise AuthFailure("AK/SK authentication is not enabled")
    fields = parse_authorization(authorization)
    if fields is None:
        raise AuthFailure("malformed Authorization header")
    if not sim.check_access_key(fields["Access"]):
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
    if abs(sim.clock() - when) > CLOCK_SKEW:
        raise AuthFailure("X-Sdk-Date is more than 15 minutes away from the server time")
    parts = urlsplit(raw_path)
    canonical = canonical_request(
        method, parts.path, parse_qsl(parts.query, keep_blank_values=True), signed, names, body
    )
    expected = sim.expected_signature(string_to_sign(sdk_date, canonical))
    if not hmac.compare_digest(expected, fields["Signature"]):
        raise AuthFailure("the signature does not match")
