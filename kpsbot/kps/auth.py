"""Huawei Cloud request authentication: SDK-HMAC-SHA256 (AK/SK) and IAM token, as requests auth."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import requests

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()


def percent_encode(value: str) -> str:
    """RFC 3986 encoding: unreserved characters and `~` stay bare, everything else is %XX."""
    return quote(value, safe="~")


def canonical_uri(path: str) -> str:
    """Each path segment encoded, with the trailing `/` the Huawei signer always appends."""
    uri = "/".join(percent_encode(segment) for segment in unquote(path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Sorted `key=value` pairs, both sides encoded, joined by `&`."""
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(pairs))


def signed_header_names(headers: Mapping[str, str]) -> list[str]:
    """Lower-case, sorted header names; names containing `_` are never signed."""
    return sorted(name.lower() for name in headers if "_" not in name)


def canonical_headers(headers: Mapping[str, str], names: Iterable[str]) -> str:
    lowered = {k.lower(): str(v).strip() for k, v in headers.items()}
    return "".join(f"{name}:{lowered[name]}\n" for name in names)


def canonical_request(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    names: list[str],
    body: bytes = b"",
) -> str:
    return "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            canonical_headers(headers, names),
            ";".join(names),
            hashlib.sha256(body).hexdigest() if body else EMPTY_BODY_SHA256,
        ]
    )


def string_to_sign(sdk_date: str, canonical: str) -> str:
    return f"{ALGORITHM}\n{sdk_date}\n{hashlib.sha256(canonical.encode()).hexdigest()}"


def signature(sk: str, to_sign: str) -> str:
    return hmac.new(sk.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


def authorization_header(ak: str, names: list[str], sig: str) -> str:
    return f"{ALGORITHM} Access={ak}, SignedHeaders={';'.join(names)}, Signature={sig}"


def sign_headers(
    method: str,
    url: str,
    headers: Mapping[str, str],
    ak: str,
    sk: str,
    body: bytes = b"",
) -> str:
    """The `Authorization` value for a request whose headers already include X-Sdk-Date and Host."""
    parts = urlsplit(url)
    names = signed_header_names(headers)
    canonical = canonical_request(
        method, parts.path or "/", parse_qsl(parts.query, keep_blank_values=True), headers, names, body
    )
    sdk_date = next(v for k, v in headers.items() if k.lower() == "x-sdk-date")
    return authorization_header(ak, names, signature(sk, string_to_sign(sdk_date, canonical)))


def parse_authorization(value: str) -> dict[str, str] | None:
    """Split `SDK-HMAC-SHA256 Access=..., SignedHeaders=..., Signature=...`; None if malformed."""
    scheme, _, rest = value.partition(" ")
    if scheme != ALGORITHM:
        return None
    fields = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if sep:
            fields[key] = val
    if not {"Access", "SignedHeaders", "Signature"} <= fields.keys():
        return None
    return fields


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class AkSkAuth(requests.auth.AuthBase):
    """Signs each request with SDK-HMAC-SHA256, the scheme Huawei's official SDKs use.

    `X-Project-Id` is signed when the request carries one (KPS calls do: the client sets it per
    project) or `project_id` is given; IAM's project look-up carries none.
    """

    def __init__(
        self,
        ak: str,
        sk: str,
        project_id: str | None = None,
        security_token: str | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.ak = ak
        self._sk = sk
        self.project_id = project_id
        self._security_token = security_token
        self._clock = clock

    def __repr__(self) -> str:
        return f"AkSkAuth(ak='***', project_id={self.project_id!r})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        parts = urlsplit(request.url or "")
        # Only the headers we control are signed: requests adds User-Agent, Accept etc.,
        # and a proxy may rewrite them.
        to_sign: dict[str, str] = {"Host": parts.netloc, "X-Sdk-Date": self._clock().strftime(DATE_FORMAT)}
        header = request.headers.get("X-Project-Id")
        project = (header.decode() if isinstance(header, bytes) else header) or self.project_id
        if project:
            to_sign["X-Project-Id"] = project
        if self._security_token:
            to_sign["X-Security-Token"] = self._security_token
        raw = request.body or b""
        body = raw.encode() if isinstance(raw, str) else raw if isinstance(raw, bytes) else b""
        request.headers.update(to_sign)
        request.headers["Authorization"] = sign_headers(
            request.method or "GET", request.url or "", to_sign, self.ak, self._sk, body
        )
        return request


class TokenAuth(requests.auth.AuthBase):
    """IAM token auth: the X-Subject-Token from `POST /v3/auth/tokens`, valid 24 hours."""

    def __init__(self, token: str, project_id: str | None = None) -> None:
        self._token = token
        self.project_id = project_id

    def __repr__(self) -> str:
        return "TokenAuth(token='***')"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["X-Auth-Token"] = self._token
        if self.project_id and "X-Project-Id" not in request.headers:
            request.headers["X-Project-Id"] = self.project_id
        return request
