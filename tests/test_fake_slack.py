"""The fake Slack Web API, driven by slack-sdk's own clients."""

import json

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackObjectFormationError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.webhook import WebhookClient
from support.fake_slack import FakeSlack, assert_valid_message, assert_valid_view

TOKEN = "xoxb-fake-token"
SECTION = {"type": "section", "text": {"type": "mrkdwn", "text": "*hello*"}}


@pytest.fixture
def slack():
    with FakeSlack(bot_token=TOKEN) as fake:
        yield fake


@pytest.fixture
def web(slack):
    return WebClient(token=TOKEN, base_url=slack.url)


def test_auth_test(web, slack):
    answer = web.auth_test()
    assert answer["user_id"] == "U000BOT" and answer["bot_id"] == "B000"
    assert slack.calls_to("auth.test")[0]["token"] == TOKEN


def test_post_then_update(web, slack):
    first = web.chat_postMessage(channel="C1", text="started", blocks=[SECTION])
    second = web.chat_postMessage(channel="C1", text="reply", thread_ts=first["ts"])
    assert float(second["ts"]) > float(first["ts"])
    assert second["message"]["thread_ts"] == first["ts"]

    updated = web.chat_update(channel="C1", ts=first["ts"], text="finished", blocks=[SECTION])
    assert (updated["channel"], updated["ts"], updated["text"]) == ("C1", first["ts"], "finished")
    assert slack.messages[("C1", first["ts"])]["text"] == "finished"

    [post, reply] = slack.calls_to("chat.postMessage")
    assert post["args"]["blocks"] == [SECTION]  # decoded, whatever the wire format was
    assert reply["args"]["thread_ts"] == first["ts"]
    assert_valid_message(post["args"])
    assert [c["method"] for c in slack.calls] == ["chat.postMessage", "chat.postMessage", "chat.update"]


def test_form_encoded_calls_are_parsed(web, slack):
    web.api_call("chat.postEphemeral", data={"channel": "C1", "user": "U1", "text": "hi", "blocks": "[]"})
    [call] = slack.calls_to("chat.postEphemeral")
    assert call["args"] == {"channel": "C1", "user": "U1", "text": "hi", "blocks": []}


def test_update_of_an_unknown_message_fails(web, slack):
    with pytest.raises(SlackApiError) as caught:
        web.chat_update(channel="C1", ts="1.000000", text="x")
    assert caught.value.response["error"] == "message_not_found"
    assert slack.calls == [] and len(slack.failed_calls) == 1


def test_wrong_token_is_invalid_auth(slack):
    with pytest.raises(SlackApiError) as caught:
        WebClient(token="xoxb-wrong", base_url=slack.url).chat_postMessage(channel="C1", text="x")
    assert caught.value.response["error"] == "invalid_auth"
    assert slack.calls == []
    assert slack.failed_calls[0]["token"] == "xoxb-wrong"


def test_rate_limit_is_retried_and_delivered_once(slack):
    web = WebClient(token=TOKEN, base_url=slack.url, retry_handlers=[RateLimitErrorRetryHandler(1)])
    slack.fail_next(1, status=429, retry_after=0)
    web.chat_postMessage(channel="C1", text="once")
    assert len(slack.calls_to("chat.postMessage")) == 1
    [failed] = slack.failed_calls
    assert (failed["status"], failed["error"]) == (429, "ratelimited")


def test_429_carries_retry_after(web, slack):
    slack.fail_next(1, status=429, retry_after=7)
    with pytest.raises(SlackApiError) as caught:
        web.chat_postMessage(channel="C1", text="x")
    assert caught.value.response.status_code == 429
    assert caught.value.response.headers["Retry-After"] in ("7", ["7"])


def test_error_and_server_error_faults(web, slack):
    slack.fail_next(1, error="not_in_channel")
    slack.fail_next(1, status=500, method="chat.update")
    with pytest.raises(SlackApiError) as caught:
        web.chat_postMessage(channel="C1", text="x")
    assert caught.value.response.status_code == 200
    assert caught.value.response["error"] == "not_in_channel"
    ts = web.chat_postMessage(channel="C1", text="x")["ts"]
    with pytest.raises(SlackApiError) as caught:
        web.chat_update(channel="C1", ts=ts, text="y")
    assert caught.value.response.status_code == 500
    assert [c["error"] for c in slack.failed_calls] == ["not_in_channel", "fatal_error"]
    assert [c["method"] for c in slack.calls] == ["chat.postMessage"]


def test_random_faults_are_seeded():
    def outcomes():
        with FakeSlack(seed=4) as fake:
            fake.fault_ratio, fake.fault_kinds = 0.5, ("error",)
            web = WebClient(token=TOKEN, base_url=fake.url)
            results = []
            for _ in range(12):
                try:
                    web.chat_postMessage(channel="C1", text="x")
                    results.append(True)
                except SlackApiError:
                    results.append(False)
            assert len(fake.calls) == results.count(True)
            return results

    first = outcomes()
    assert first == outcomes()
    assert True in first and False in first


def test_response_url_posts_are_recorded(slack):
    url = slack.response_url("cmd1")
    answer = WebhookClient(url).send(text="page", blocks=[SECTION], replace_original=True)
    assert answer.status_code == 200
    [response] = slack.wait_for_responses(1, timeout=2)
    assert response["name"] == "cmd1"
    assert response["body"]["replace_original"] is True
    assert_valid_message(response["body"])
    assert slack.calls == []  # response_url posts are not Web API calls


def test_waiting_times_out_with_a_clear_message(slack):
    with pytest.raises(AssertionError, match="expected 1 chat.postMessage"):
        slack.wait_for_calls("chat.postMessage", 1, timeout=0.1)


def test_assert_valid_message():
    assert_valid_message({"text": "ok", "blocks": [SECTION, {"type": "divider"}]})
    with pytest.raises(AssertionError, match="51 blocks"):
        assert_valid_message({"text": "x", "blocks": [{"type": "divider"}] * 51})
    with pytest.raises(AssertionError, match="unknown type"):
        assert_valid_message({"text": "x", "blocks": [{"type": "no_such_block"}]})
    with pytest.raises(AssertionError, match="unknown fields"):
        assert_valid_message({"text": "x", "blocks": [dict(SECTION, colour="red")]})
    with pytest.raises(SlackObjectFormationError):  # a header longer than Slack's 150 characters
        assert_valid_message(
            {"text": "x", "blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}]}
        )
    with pytest.raises(SlackObjectFormationError):  # a nested button whose text is too long
        button = {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "b" * 76}}
        assert_valid_message({"text": "x", "blocks": [{"type": "actions", "elements": [button]}]})
    with pytest.raises(AssertionError, match="no top-level text"):
        assert_valid_message({"blocks": [SECTION]})
    with pytest.raises(AssertionError, match="over Slack's 4000"):
        assert_valid_message({"text": "x" * 4001})


HOME = {"type": "home", "blocks": [SECTION]}


def test_views_publish_answers_the_stored_view(web, slack):
    answer = web.views_publish(user_id="U1", view=HOME)
    assert answer["view"]["type"] == "home" and answer["view"]["blocks"] == [SECTION]
    assert answer["view"]["id"].startswith("V") and answer["view"]["hash"]
    [call] = slack.calls_to("views.publish")
    assert call["args"] == {"user_id": "U1", "view": HOME}
    assert slack.home_views["U1"]["blocks"] == [SECTION]


def test_views_publish_form_encoded_view_is_parsed(web, slack):
    web.api_call("views.publish", data={"user_id": "U2", "view": json.dumps(HOME)})
    assert slack.calls_to("views.publish")[0]["args"]["view"] == HOME


@pytest.mark.parametrize(
    "args",
    [
        {"view": HOME},  # no user
        {"user_id": "U1", "view": {"type": "modal", "blocks": [SECTION]}},
        {"user_id": "U1", "view": {"type": "home", "blocks": []}},
        {"user_id": "U1", "view": {"type": "home", "blocks": [SECTION] * 101}},
    ],
)
def test_views_publish_refuses_what_slack_refuses(web, slack, args):
    with pytest.raises(SlackApiError) as caught:
        web.api_call("views.publish", json=args)
    assert caught.value.response["error"] == "invalid_arguments"
    assert slack.calls_to("views.publish") == [] and slack.home_views == {}


def test_assert_valid_view():
    assert_valid_view(HOME)
    assert_valid_view({**HOME, "callback_id": "x", "private_metadata": "y", "blocks": [SECTION] * 100})
    for bad in (
        {**HOME, "type": "modal"},
        {**HOME, "blocks": []},
        {**HOME, "blocks": [SECTION] * 101},
        {**HOME, "colour": "red"},
        {**HOME, "callback_id": "x" * 256},
        {**HOME, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]},
        {**HOME, "blocks": [{"type": "section", "txt": {"type": "mrkdwn", "text": "x"}}]},
    ):
        with pytest.raises((AssertionError, SlackObjectFormationError)):
            assert_valid_view(bad)
