"""The `/kps-tasks` and paging listeners as plain functions: `Mock` ack and respond (as in Slack's Bolt
starter template), a work queue that runs jobs inline, stub replies and subscriptions."""

from __future__ import annotations

from typing import Any
from unittest.mock import Mock, call

import pytest

from kpsbot.slack.access import REFUSAL, AccessPolicy
from kpsbot.slack.actions import handle_paging
from kpsbot.slack.blocks import NEXT, PREV, REFRESH, render_help, render_notice
from kpsbot.slack.commands import NO_SUBSCRIPTIONS, handle_kps_tasks
from kpsbot.slack.paging import PageRef, encode_page_value
from kpsbot.slack.query import SUBSCRIBE, SUBSCRIPTIONS, UNSUBSCRIBE, Query
from kpsbot.slack.replies import BUSY

NAMES = ("cn-north-4", "cn-north-4_dev", "ap-southeast-1_prod")


class InlineWork:
    """`submit` runs the job at once (or refuses it, when full) and records what it was given."""

    def __init__(self, *, full: bool = False) -> None:
        self.full = full
        self.jobs: list[tuple[Any, tuple, dict]] = []

    def submit(self, fn, *args, **kwargs) -> bool:  # noqa: ANN001
        if self.full:
            return False
        self.jobs.append((fn, args, kwargs))
        fn(*args, **kwargs)
        return True


class RecordingMetrics:
    def __init__(self) -> None:
        self.results: list[str] = []

    def command(self, result: str) -> None:
        self.results.append(result)


def stub_replies(names=NAMES) -> Mock:  # noqa: ANN001
    replies = Mock(name="replies")
    replies.catalog.names.return_value = list(names)
    return replies


def command(text: str = "", *, user: str = "U1", channel: str = "C1") -> dict:
    return {"command": "/kps-tasks", "text": text, "user_id": user, "channel_id": channel}


def notice(text: str) -> dict:
    """What an ephemeral notice looks like in an ack or a response_url post."""
    return dict(render_notice(text), response_type="ephemeral")


@pytest.fixture
def parts():
    """ack, respond, replies, subscriptions, work and metrics for one call of handle_kps_tasks."""

    class Parts:
        def __init__(self) -> None:
            self.ack = Mock(name="ack")
            self.respond = Mock(name="respond")
            self.replies = stub_replies()
            self.subscriptions = Mock(name="subscriptions")
            self.subscriptions.refuses.return_value = False
            self.work = InlineWork()
            self.metrics = RecordingMetrics()
            self.access = AccessPolicy()

        def run(self, text: str = "", *, with_subscriptions: bool = True, **who: str) -> None:
            handle_kps_tasks(
                self.ack,
                self.respond,
                command(text, **who),
                replies=self.replies,
                work=self.work,
                access=self.access,
                subscriptions=self.subscriptions if with_subscriptions else None,
                projects=self.replies.catalog.names,
                metrics=self.metrics,
            )

    return Parts()


# -- /kps-tasks ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "help", "reset web-", "subscribe", "subscriptions", "unsubscribe 1"])
@pytest.mark.parametrize(
    "access",
    [AccessPolicy(users=("U9",)), AccessPolicy(channels=("C9",)), AccessPolicy(("C1",), ("U9",))],
)
def test_outsiders_get_the_refusal_in_the_ack_and_no_work(parts, text, access):
    parts.access = access
    parts.run(text, user="U1", channel="C1")
    parts.ack.assert_called_once_with(**notice(REFUSAL))
    assert parts.work.jobs == []
    parts.replies.answer.assert_not_called()
    parts.subscriptions.answer.assert_not_called()
    parts.respond.assert_not_called()
    parts.replies.catalog.names.assert_not_called()  # not even the projects are looked at
    assert parts.metrics.results == ["refused"]


def test_insiders_pass_the_allow_lists(parts):
    parts.access = AccessPolicy(channels=("C1",), users=("U1",))
    parts.run("", user="U1", channel="C1")
    parts.ack.assert_called_once_with()
    assert parts.metrics.results == ["ok"]


@pytest.mark.parametrize("text", ["help", "HELP", "help me"])
def test_help_is_answered_in_the_ack(parts, text):
    parts.run(text)
    parts.ack.assert_called_once_with(**render_help(), response_type="ephemeral")
    assert "subscribe" in parts.ack.call_args.kwargs["text"]
    assert parts.work.jobs == [] and not parts.respond.called
    assert parts.metrics.results == ["help"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("status", "`status` needs exactly one task ID"),
        ("status a b", "`status` needs exactly one task ID"),
        ("unsubscribe", "`unsubscribe` needs a number"),
        ("unsubscribe one", "`unsubscribe` needs a number"),
    ],
)
def test_a_usage_mistake_is_answered_in_the_ack_with_help(parts, text, problem):
    parts.run(text)
    [ack] = parts.ack.call_args_list
    assert ack.kwargs["response_type"] == "ephemeral"
    assert problem in ack.kwargs["blocks"][0]["text"]["text"]
    assert ack.kwargs["blocks"][1:] == render_help()["blocks"]
    assert parts.work.jobs == [] and not parts.subscriptions.answer.called
    assert parts.metrics.results == ["usage"]


@pytest.mark.parametrize(
    "text", ["", "failed", "status t-1", "subscribe", "subscriptions", "unsubscribe all"]
)
def test_a_full_work_queue_gets_the_busy_notice_in_the_ack(parts, text):
    parts.work.full = True
    parts.run(text)
    parts.ack.assert_called_once_with(**notice(BUSY))
    parts.replies.answer.assert_not_called()
    parts.subscriptions.answer.assert_not_called()
    assert parts.metrics.results == ["busy"]


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("", Query()),
        ("failed", Query(failed=True)),
        ("cn-north-4_dev reset web-", Query(action="RESET", project="cn-north-4_dev", text="web-")),
        (
            "web- UNBIND ap-southeast-1_prod",
            Query(action="UNBIND", project="ap-southeast-1_prod", text="web-"),
        ),
        ("eu-west-0 reset", Query(action="RESET", text="eu-west-0")),  # not a configured project
        ("CN-NORTH-4", Query(text="CN-NORTH-4")),  # project names are exact
        ("status t-1", Query(kind="status", task_id="t-1")),
    ],
)
def test_a_list_query_acks_empty_and_submits_the_parsed_query(parts, text, query):
    parts.run(text, user="U7", channel="C7")
    parts.ack.assert_called_once_with()
    [(fn, args, kwargs)] = parts.work.jobs
    assert fn == parts.replies.answer
    assert args == (parts.respond, query)
    assert kwargs == {"who": "user=U7 channel=C7"}
    parts.replies.answer.assert_called_once_with(parts.respond, query, who="user=U7 channel=C7")
    parts.subscriptions.answer.assert_not_called()
    assert parts.metrics.results == ["ok"]


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("subscribe", Query(kind=SUBSCRIBE)),
        (
            "subscribe cn-north-4 replace reset failures db-",
            Query(
                kind=SUBSCRIBE,
                projects=("cn-north-4",),
                actions=("RESET", "REPLACE"),
                failed=True,
                text="db-",
            ),
        ),
        ("subscribe failed", Query(kind=SUBSCRIBE, failed=True)),
        ("Subscriptions", Query(kind=SUBSCRIPTIONS)),
        ("unsubscribe 3", Query(kind=UNSUBSCRIBE, target="3")),
        ("unsubscribe ALL", Query(kind=UNSUBSCRIBE, target="all")),
    ],
)
def test_subscription_commands_go_to_the_subscriptions_object(parts, text, query):
    parts.run(text, user="U7", channel="C7")
    parts.ack.assert_called_once_with()
    parts.subscriptions.answer.assert_called_once_with(parts.respond, query, user="U7", channel="C7")
    parts.replies.answer.assert_not_called()
    assert parts.metrics.results == ["ok"]


def test_a_change_the_admin_list_refuses_is_counted_refused_and_answered_by_the_job(parts):
    parts.subscriptions.refuses.side_effect = lambda user, query: query.kind != SUBSCRIPTIONS
    parts.run("subscribe reset", user="U9")
    parts.run("subscriptions", user="U9")
    assert parts.subscriptions.answer.call_count == 2  # the refusal itself comes from the job
    assert parts.metrics.results == ["refused", "ok"]


@pytest.mark.parametrize("text", ["subscribe", "subscriptions", "unsubscribe 1"])
def test_without_a_subscriptions_object_subscription_commands_get_a_clear_notice(parts, text):
    parts.run(text, with_subscriptions=False)
    parts.ack.assert_called_once_with(**notice(NO_SUBSCRIPTIONS))
    assert "database" in NO_SUBSCRIPTIONS
    assert parts.work.jobs == [] and not parts.replies.answer.called
    assert parts.metrics.results == ["error"]


def test_metrics_are_optional(parts):
    handle_kps_tasks(
        parts.ack,
        parts.respond,
        command("help"),
        replies=parts.replies,
        work=parts.work,
        access=AccessPolicy(),
    )
    parts.ack.assert_called_once_with(**render_help(), response_type="ephemeral")


def test_each_command_counts_one_result(parts):
    parts.access = AccessPolicy(users=("U1", "U2"))
    parts.run("", user="U1")
    parts.run("help", user="U1")
    parts.run("status", user="U2")
    parts.run("", user="U3")
    parts.run("subscriptions", user="U2", with_subscriptions=False)
    parts.work.full = True
    parts.run("reset", user="U1")
    assert parts.metrics.results == ["ok", "help", "usage", "refused", "error", "busy"]


# -- paging buttons --------------------------------------------------------------------------


def press(action_id: str, value: Any, *, user: str = "U1", channel: str = "C1") -> tuple[dict, dict]:
    body = {"type": "block_actions", "user": {"id": user}, "channel": {"id": channel}}
    return body, {"action_id": action_id, "value": value}


def page_value(query: Query = Query(), offset: int = 0) -> str:  # noqa: B008 - a frozen dataclass
    return encode_page_value(PageRef(query, offset))


@pytest.fixture
def paging():
    """Call handle_paging with Mock ack/respond (children of one Mock, so their order is recorded)."""

    class Paging:
        def __init__(self) -> None:
            self.calls = Mock(name="slack")
            self.replies = stub_replies()
            self.work = InlineWork()
            self.access = AccessPolicy()

        def press(self, action_id: str, value: Any, **who: str) -> None:
            body, action = press(action_id, value, **who)
            handle_paging(
                self.calls.ack,
                self.calls.respond,
                body,
                action,
                replies=self.replies,
                work=self.work,
                access=self.access,
            )

    return Paging()


@pytest.mark.parametrize(
    ("action_id", "query", "offset", "clamp"),
    [
        (NEXT, Query(), 10, False),
        (PREV, Query(failed=True, action="RESET", text="web-"), 20, False),
        (REFRESH, Query(project="cn-north-4_dev", text="db"), 30, True),
        (REFRESH, Query(), 0, True),
    ],
)
def test_a_good_button_acks_first_then_replaces_the_page(paging, action_id, query, offset, clamp):
    paging.press(action_id, page_value(query, offset), user="U7", channel="C7")
    assert paging.calls.mock_calls[0] == call.ack()
    paging.calls.ack.assert_called_once_with()
    paging.replies.answer.assert_called_once_with(
        paging.calls.respond,
        query,
        offset,
        replace=True,
        clamp=clamp,
        who=f"user=U7 channel=C7 action={action_id}",
    )
    paging.calls.respond.assert_not_called()  # the (stub) replies answer; nothing else is said


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("garbage", "older or altered message"),
        (None, "older or altered message"),
        ({"offset": 10}, "older or altered message"),
        ("v1|10|", "older or altered message"),
        ("v2||10|status t-1", "older or altered message"),
        ("v2||-5|", "cannot exist"),
        ("v2||99999999999|", "cannot exist"),
        ("v2|eu-west-0|0|", "no longer watches"),
    ],
)
def test_a_tampered_value_gets_an_ephemeral_error_and_no_replies_call(paging, value, complaint):
    paging.press(NEXT, value)
    assert paging.calls.mock_calls[0] == call.ack()
    [respond] = paging.calls.respond.call_args_list
    assert respond.kwargs["response_type"] == "ephemeral" and respond.kwargs["replace_original"] is False
    assert complaint in respond.kwargs["text"]
    paging.replies.answer.assert_not_called()


def test_an_outsiders_press_is_acked_and_refused(paging):
    paging.access = AccessPolicy(users=("U9",))
    paging.press(NEXT, page_value(offset=10), user="U1")
    assert paging.calls.mock_calls[0] == call.ack()
    paging.calls.respond.assert_called_once_with(**notice(REFUSAL), replace_original=False)
    paging.replies.answer.assert_not_called()


def test_a_press_with_a_full_work_queue_is_told_busy(paging):
    paging.work.full = True
    paging.press(REFRESH, page_value())
    assert paging.calls.mock_calls[0] == call.ack()
    paging.calls.respond.assert_called_once_with(**notice(BUSY), replace_original=False)
    paging.replies.answer.assert_not_called()
