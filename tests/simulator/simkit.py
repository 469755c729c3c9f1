"""Constants and helpers the simulator tests share."""

from datetime import datetime, timezone
from urllib.parse import urlsplit

import requests

from kpsbot.kps.auth import DATE_FORMAT, AkSkAuth, sign_headers
from kpsbot.kps.client import KpsClient

AK, SK, TOKEN, PROJECT = "AKSIMTEST", "sk-sim-secret", "tok-sim-secret", "proj1"


def make_client(url, auth, **kwargs):
    kwargs.setdefault("backoff", 0)
    return KpsClient(url, PROJECT, auth, **kwargs)


def project_client(url, sim, **kwargs):
    """kpsbot's own client for one simulated project, signing with the shared AK/SK."""
    kwargs.setdefault("backoff", 0)
    return KpsClient(url, sim.project_id, AkSkAuth(AK, SK, sim.project_id), **kwargs)


class IamAuth(requests.auth.AuthBase):
    """Signs as the official SDK does its IAM project look-up: Host and X-Sdk-Date, no X-Project-Id."""

    def __init__(self, ak=AK, sk=SK):
        self.ak, self.sk = ak, sk

    def __call__(self, request):
        to_sign = {
            "Host": urlsplit(request.url).netloc,
            "X-Sdk-Date": datetime.now(timezone.utc).strftime(DATE_FORMAT),
        }
        request.headers.update(to_sign)
        request.headers["Authorization"] = sign_headers(
            request.method, request.url, to_sign, self.ak, self.sk
        )
        return request
