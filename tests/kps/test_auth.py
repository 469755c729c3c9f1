"""SDK-HMAC-SHA256: canonical pieces as tables, and the whole header against Huawei's own signer."""

from datetime import datetime, timezone

import pytest
import requests

from kpsbot.kps import auth
from kpsbot.kps.auth import AkSkAuth, TokenAuth


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/v3/p1/running-tasks", "/v3/p1/running-tasks/"),
        ("/v3/p1/running-tasks/", "/v3/p1/running-tasks/"),
        ("/", "/"),
        ("/v3/p 1/tasks/a~b", "/v3/p%201/tasks/a~b/"),
        ("/v3/p1/tasks/x%2Fy", "/v3/p1/tasks/x/y/"),  # decoded first, as the official signer does
        ("/v3/é/", "/v3/%C3%A9/"),
        ("/v3/a+b/c:d", "/v3/a%2Bb/c%3Ad/"),
    ],
)
def test_canonical_uri(path, expected):
    assert auth.canonical_uri(path) == expected


@pytest.mark.parametrize(
    "pairs, expected",
    [
        ([], ""),
        ([("offset", "0"), ("limit", "10")], "limit=10&offset=0"),
        ([("b", "2"), ("a", "1"), ("a", "0")], "a=0&a=1&b=2"),
        ([("name", "a b"), ("x", "~*")], "name=a%20b&x=~%2A"),
        ([("k", "")], "k="),
        ([("ünï", "çode")], "%C3%BCn%C3%AF=%C3%A7ode"),
    ],
)
def test_canonical_query(pairs, expected):
    assert auth.canonical_query(pairs) == expected


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"Host": "h", "X-Sdk-Date": "d"}, ["host", "x-sdk-date"]),
        ({"X-Project-Id": "p", "host": "h", "X_Custom": "no"}, ["host", "x-project-id"]),
        ({"X-Security-Token": "t", "Host": "h"}, ["host", "x-security-token"]),
    ],
)
def test_signed_header_names(headers, expected):
    assert auth.signed_header_names(headers) == expected


def test_canonical_headers_trim_values_and_lowercase_names():
    headers = {"Host": " kms.example.com ", "X-Sdk-Date": "20260101T000000Z"}
    names = auth.signed_header_names(headers)
    assert auth.canonical_headers(headers, names) == "host:kms.example.com\nx-sdk-date:20260101T000000Z\n"


def test_canonical_request_layout_and_empty_body_hash():
    headers = {"Host": "h", "X-Sdk-Date": "20260101T000000Z"}
    canonical = auth.canonical_request(
        "get", "/v3/p/running-tasks", [("limit", "1")], headers, ["host", "x-sdk-date"]
    )
    assert canonical.split("\n") == [
        "GET",
        "/v3/p/running-tasks/",
        "limit=1",
        "host:h",
        "x-sdk-date:20260101T000000Z",
        "",
        "host;x-sdk-date",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ]


@pytest.mark.parametrize(
    "value, ok",
    [
        ("SDK-HMAC-SHA256 Access=AK, SignedHeaders=host;x-sdk-date, Signature=ab12", True),
        ("SDK-HMAC-SHA256 Access=AK,SignedHeaders=host,Signature=ab", True),
        ("AWS4-HMAC-SHA256 Access=AK, SignedHeaders=host, Signature=ab", False),
        ("SDK-HMAC-SHA256 Access=AK", False),
        ("", False),
    ],
)
def test_parse_authorization(value, ok):
    assert (auth.parse_authorization(value) is not None) is ok


FIXED = datetime(2026, 11, 27, 8, 30, 15, tzinfo=timezone.utc)


def _prepare(url: str, auth_obj) -> requests.PreparedRequest:
    return requests.Request("GET", url, auth=auth_obj).prepare()


def _official_authorization(url_host: str, path: str, query, headers: dict, ak: str, sk: str) -> str:
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer

    request = SdkRequest(
        method="GET",
        schema="https",
        host=url_host,
        resource_path=path,
        query_params=list(query),
        header_params=dict(headers),
        body="",
    )
    Signer(BasicCredentials(ak, sk)).sign(request)
    return request.header_params["Authorization"]


@pytest.mark.parametrize(
    "path, query, token",
    [
        ("/v3/0a1b2c3d/running-tasks", [("limit", "1000"), ("offset", "0")], None),
        ("/v3/0a1b2c3d/failed-tasks", [("offset", "20"), ("limit", "10")], None),
        ("/v3/0a1b2c3d/tasks/6b9c8e3a-2c1f-4a7b-9d2e-1f0a9b8c7d6e", [], None),
        ("/v3/0a1b2c3d/running-tasks", [("limit", "5")], "temporary-security-token"),
    ],
)
def test_authorization_matches_official_huaweicloud_signer(path, query, token):
    host = "kms.cn-north-4.myhuaweicloud.com"
    ak, sk = "HPUAEXAMPLEAK12345", "exampleSecretKeyOnlyForTests0123456789abcd"
    url = f"https://{host}{path}" + ("?" + "&".join(f"{k}={v}" for k, v in query) if query else "")
    ours = _prepare(url, AkSkAuth(ak, sk, "0a1b2c3d", token, clock=lambda: FIXED))
    headers = {"X-Sdk-Date": "20261127T083015Z", "Host": host, "X-Project-Id": "0a1b2c3d"}
    if token:
        headers["X-Security-Token"] = token
    assert ours.headers["X-Sdk-Date"] == "20261127T083015Z"
    assert ours.headers["Authorization"] == _official_authorization(host, path, query, headers, ak, sk)


def test_signature_changes_with_secret_date_and_query():
    url = "https://kms.example.com/v3/p/running-tasks?limit=10"
    base = _prepare(url, AkSkAuth("AK", "SK", "p", clock=lambda: FIXED)).headers["Authorization"]
    other_sk = _prepare(url, AkSkAuth("AK", "SK2", "p", clock=lambda: FIXED)).headers["Authorization"]
    later = datetime(2026, 11, 27, 8, 30, 16, tzinfo=timezone.utc)
    other_date = _prepare(url, AkSkAuth("AK", "SK", "p", clock=lambda: later)).headers["Authorization"]
    other_query = _prepare(url + "&offset=1", AkSkAuth("AK", "SK", "p", clock=lambda: FIXED))
    assert len({base, other_sk, other_date, other_query.headers["Authorization"]}) == 4


def test_token_auth_sets_header_and_hides_token_in_repr():
    prepared = _prepare("https://kms.example.com/v3/p/running-tasks", TokenAuth("tok-123456", "p"))
    assert prepared.headers["X-Auth-Token"] == "tok-123456"
    assert prepared.headers["X-Project-Id"] == "p"
    assert "tok-123456" not in repr(TokenAuth("tok-123456"))
    assert "SECRET" not in repr(AkSkAuth("AKID", "SECRET", "p")) and "AKID" not in repr(
        AkSkAuth("AKID", "SECRET", "p")
    )
