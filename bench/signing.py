"""SDK-HMAC-SHA256 for the floor processes, as `requests` auth: signs what kpsbot signs (Host,
X-Sdk-Date, X-Project-Id), per SPEC §1, without importing kpsbot. The benchmark server checks it
with the official SDK's signer, so a floor that signed wrongly would fail, not run fast."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import requests

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _encode(value: str) -> str:
    return quote(value, safe="~")


def sign(method: str, url: str, project_id: str | None, ak: str, sk: bytes) -> dict[str, str]:
    """The headers that sign a body-less request: Host, X-Sdk-Date, X-Project-Id, Authorization."""
    parts = urlsplit(url)
    headers = {"host": parts.netloc, "x-sdk-date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())}
    if project_id:
        headers["x-project-id"] = project_id
    names = sorted(headers)
    uri = "/".join(_encode(segment) for segment in unquote(parts.path).split("/"))
    query = "&".join(
        f"{_encode(k)}={_encode(v)}" for k, v in sorted(parse_qsl(parts.query, keep_blank_values=True))
    )
    canonical = "\n".join(
        [
            method,
            uri if uri.endswith("/") else uri + "/",
            query,
            "".join(f"{name}:{headers[name]}\n" for name in names),
            ";".join(names),
            EMPTY_SHA256,
        ]
    )
    to_sign = f"SDK-HMAC-SHA256\n{headers['x-sdk-date']}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(sk, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"SDK-HMAC-SHA256 Access={ak}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return headers


class AkSk(requests.auth.AuthBase):
    def __init__(self, ak: str, sk: str) -> None:
        self.ak, self.sk = ak, sk.encode()

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        project_id = request.headers.get("X-Project-Id")
        for name, value in sign(
            request.method or "GET", request.url or "", project_id, self.ak, self.sk
        ).items():
            request.headers[name] = value
        return request


def projects_from_env() -> list[tuple[str, str]]:
    """(name, id) of each `KPS_PROJECTS` entry; the benchmarks always give `name:id`."""
    return [tuple(entry.split(":", 1)) for entry in os.environ["KPS_PROJECTS"].split(",")]  # type: ignore[misc]


def session_from_env() -> requests.Session:
    """A session signing with CLOUD_SDK_AK/CLOUD_SDK_SK, the credentials kpsbot reads."""
    session = requests.Session()
    session.auth = AkSk(os.environ["CLOUD_SDK_AK"], os.environ["CLOUD_SDK_SK"])
    session.headers["Accept"] = "application/json"
    return session
