"""The Slack sender sorts Slack's answers into what the outbox does next, and what /metrics calls them."""

from __future__ import annotations

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.web import SlackResponse
from support.fake_slack import FakeSlack

from kpsbot.slack.kit import message, section
from kpsbot.slack.sender import (
    AUTH,
    CHANNEL,
    CLIENT,
    CONNECTION,
    GONE,
    RATE_LIMITED,
    SERVER,
    DeliveryFailure,
    SlackSender,
    classify_slack_error,
    slack_retry_handlers,
)


def api_error(status: int, error: str | None, headers: dict | None = None) -> SlackApiError:
    data = {"ok": False} if error is None else {"ok": False, "error": error}
    response = SlackResponse(
        client=None,
        http_verb="POST",
        api_url="x",
        req_args={},
        data=data,
        headers=headers or {},
        status_code=status,
    )
    return SlackApiError("failed", response)


@pytest.mark.parametrize(
    ("status", "error", "kind", "reason"),
    [
        (429, "ratelimited", RATE_LIMITED, "rateLimited"),
        (200, "ratelimited", RATE_LIMITED, "rateLimited"),
        (500, None, SERVER, "serverError"),
        (503, "service_unavailable", SERVER, "serverError"),
        (200, "invalid_auth", AUTH, "authError"),
        (200, "token_revoked", AUTH, "authError"),
        (200, "not_in_channel", CHANNEL, "clientError"),
        (200, "channel_not_found", CHANNEL, "clientError"),
        (200, "is_archived", CHANNEL, "clientError"),
        (200, "message_not_found", GONE, "clientError"),
        (200, "internal_error", SERVER, "clientError"),
        (200, "msg_too_long", CLIENT, "clientError"),
        (400, None, CLIENT, "other"),
    ],
)
def test_slack_errors_are_sorted(status, error, kind, reason):
    failure = classify_slack_error(api_error(status, error))
    assert (failure.kind, failure.metric_reason) == (kind, reason)


def test_retry_after_is_read_from_the_answer():
    assert classify_slack_error(api_error(429, "ratelimited", {"Retry-After": ["42"]})).retry_after == 42


def sender(fake: FakeSlack, max_wait: float = 2) -> SlackSender:
    client = WebClient(
        token="xoxb-t",
        base_url=fake.url,
        retry_handlers=slack_retry_handlers(max_wait=max_wait, sleep=lambda s: None, backoff=0),
    )
    return SlackSender(client)


MESSAGE = message("hello", [section("hello")])


def test_a_short_rate_limit_is_waited_out_inside_the_call_a_long_one_is_not():
    with FakeSlack() as fake:
        fake.fail_next(1, status=429, retry_after=1)
        assert sender(fake).post("C1", MESSAGE)  # slack-sdk's handler waited and tried again
        fake.fail_next(1, status=429, retry_after=60)
        with pytest.raises(DeliveryFailure) as caught:
            sender(fake).post("C1", MESSAGE)
        assert caught.value.kind == RATE_LIMITED and caught.value.retry_after == 60
        assert len(fake.failed_calls) == 2 and len(fake.calls_to("chat.postMessage")) == 1


def test_a_thread_reply_shown_in_the_channel_and_an_unreachable_slack():
    with FakeSlack() as fake:
        ts = sender(fake).post("C1", MESSAGE)
        sender(fake).post("C1", MESSAGE, thread_ts=ts, broadcast=True)
        sender(fake).post("C1", MESSAGE, thread_ts=ts)
        replies = [c["args"] for c in fake.calls_to("chat.postMessage")][1:]
        assert replies[0]["reply_broadcast"] is True and "reply_broadcast" not in replies[1]
        url = fake.url
    with pytest.raises(DeliveryFailure) as caught:
        SlackSender(WebClient(token="x", base_url=url, retry_handlers=[])).post("C1", MESSAGE)
    assert caught.value.kind == CONNECTION and caught.value.metric_reason == "other"
