"""Constants and helpers the simulator tests share."""

from kpsbot.kps.client import KpsClient

AK, SK, TOKEN, PROJECT = "AKSIMTEST", "sk-sim-secret", "tok-sim-secret", "proj1"


def make_client(url, auth, **kwargs):
    kwargs.setdefault("backoff", 0)
    return KpsClient(url, PROJECT, auth, **kwargs)
