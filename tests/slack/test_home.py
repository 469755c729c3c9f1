"""The App Home tab: the rendered view (pure, plain tables of cases), the listener with a Mock client,
and app_home_opened end to end over signed HTTP and over a Socket Mode WebSocket."""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from unittest.mock import Mock

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web import SlackResponse
from support.compose import compose_app
from support.fake_slack import FakeSlack, assert_valid_view
from support.fake_socket_mode import FakeSocketMode
from support.slack_requests import Bot

from kpsbot.settings import settings_from
from kpsbot.slack.home import (
    FINISHED_SHOWN,
    LINE,
    MAX_VIEW_BLOCKS,
    WORST_CASE_BLOCKS,
    FinishedTask,
    HomeStatus,
    ProjectStatus,
    SubscriptionLine,
    handle_home_opened,
    render_home,
)
from kpsbot.slack.server import SocketModeService
from kpsbot.slack.workers import WorkerPool
from kpsbot.store import Store

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
HOSTILE = "<!channel> <@U1> & `tick` *bold* <https://evil.example|click> " + "x" * 10_000
# The only <…> constructs kpsbot writes itself: date tokens and mentions of validated channel IDs.
ALLOWED_ANGLES = re.compile(r"<!date\^\d+\^\{date_short_pretty\} \{time\}\|[^<>]*>|<#[CGD][A-Z0-9]+>")


def project(name: str = "cn-north-4_prod", **changes) -> ProjectStatus:
    base = ProjectStatus(
        name=name,
        region=name.split("_")[0],
        resolved=True,
        last_success=NOW - timedelta(seconds=40),
        running={"Reset": 3, "Replace": 1},
        stuck=0,
        outage_since=None,
        outage_error=None,
    )
    return replace(base, **changes)


def finished(n: int = 0, **changes) -> FinishedTask:
    base = FinishedTask(
        project="cn-north-4_prod",
        action="RESET",
        operate_type="RUNNING_RESET",
        server_name=f"web-{n:02d}",
        server_id=f"srv-{n}",
        task_id=f"task-{n}",
        outcome="succeeded",
        duration_s=125.0,
        finished_at=NOW - timedelta(minutes=n + 1),
    )
    return replace(base, **changes)


def status(**changes) -> HomeStatus:
    base = HomeStatus(
        version="0.1.0",
        watcher="leader",
        stuck_minutes=60,
        projects=[project()],
        finished=[finished()],
        subscriptions=[SubscriptionLine("C0123ABCD", 1, "cn-north-4_prod · reset · failures only")],
    )
    return replace(base, **changes)


def texts(view: dict) -> list[str]:
    """Every piece of mrkdwn or plain text in the view, block by block."""
    found = []
    for block in view["blocks"]:
        if "text" in block:
            found.append(block["text"]["text"])
        found.extend(element["text"] for element in block.get("elements", []))
        found.extend(field["text"] for field in block.get("fields", []))
    return found


def whole(view: dict) -> str:
    return "\n".join(texts(view))


def assert_safe(view: dict) -> None:
    """Valid for Slack, and no text from KPS or users formed a mention, link or broken token."""
    assert_valid_view(view)
    for text in texts(view):
        leftover = ALLOWED_ANGLES.sub("", text)
        assert "<" not in leftover and ">" not in leftover, f"unescaped angle bracket in {text[:300]!r}"
        assert len(text) <= 3000


# -- render_home ---------------------------------------------------------------------------

CASES = [
    # (name, status, must appear, must not appear)
    (
        "one healthy project",
        status(),
        [
            "*cn-north-4_prod* · cn-north-4",
            "Last good poll <!date^1714564760^",
            "(40s ago)",
            ":arrows_counterclockwise: 3 Reset · :key: 1 Replace",
            "kpsbot 0.1.0",
            "this process runs the watcher",
            ":white_check_mark: *Reset* succeeded on *web-00* after 2m",
            "<#C0123ABCD> · no. 1 · cn-north-4_prod · reset · failures only",
        ],
        [":rotating_light:", ":hourglass:", "Not yet resolved", "…and", ":warning:"],
    ),
    (
        "stuck tasks",
        status(projects=[project(stuck=2)]),
        [":hourglass: *2 stuck* (running over 60 min)", ":hourglass: 2 stuck"],
        [":rotating_light:"],
    ),
    (
        "an outage",
        status(
            projects=[
                project(outage_since=NOW - timedelta(minutes=7), outage_error="KPS.0500 timeout after 10 s")
            ]
        ),
        [
            ":rotating_light: *KPS polls failing* since <!date^1714564380^",
            "(7m ago)",
            "Last error: KPS.0500 timeout after 10 s",
            ":rotating_light: 1 failing",
        ],
        [],
    ),
    (
        "a project whose ID is not looked up yet",
        status(projects=[project("ap-southeast-1", resolved=False, last_success=None, running={})]),
        ["Not yet resolved", "No successful poll yet", "No tasks running", "1 not yet resolved"],
        ["Last good poll"],
    ),
    (
        "an unknown operate_type and a failure with its error code",
        status(
            projects=[project(running={"ODD_THING": 2})],
            finished=[
                finished(
                    action=None,
                    operate_type="ODD_THING",
                    outcome="failed",
                    duration_s=None,
                    error_code="KPS.0001",
                )
            ],
        ),
        [":grey_question: 2 ODD_THING", ":x: *ODD_THING* failed on *web-00* · `KPS.0001`"],
        ["failed on *web-00* after"],
    ),
    (
        "several projects name the project of each finished task",
        status(
            projects=[project(), project("cn-north-4_dev")], finished=[finished(project="cn-north-4_dev")]
        ),
        ["2 projects", "after 2m · cn-north-4_dev · <!date^"],
        [],
    ),
    (
        "a channel that fails for good, and the fixed KPSBOT_CHANNEL subscription",
        status(
            subscriptions=[
                SubscriptionLine("C0123ABCD", 1, "reset"),
                SubscriptionLine("C0FAILING", None, "everything", failing="not_in_channel"),
            ]
        ),
        [
            "<#C0FAILING> · `KPSBOT_CHANNEL` · everything · :warning: cannot post: `not_in_channel`",
            "`/invite @kpsbot`",
            "cannot post in 1 channel until it is invited",
        ],
        [],
    ),
    (
        "a channel ID that is not one is shown as text, not a mention",
        status(subscriptions=[SubscriptionLine("<!here>", 2, "x"), SubscriptionLine("c123", 3, "y")]),
        ["`&lt;!here&gt;` · no. 2", "`c123` · no. 3"],
        ["<#c123>", "<!here>"],
    ),
    (
        "empty states",
        status(projects=[], finished=[], subscriptions=[]),
        ["No KPS projects configured", "No finished tasks yet.", "No subscriptions: `/kps-tasks subscribe`"],
        [],
    ),
    (
        "watcher on standby, stuck alerts off",
        status(watcher="standby", stuck_minutes=0),
        ["watcher on standby", "stuck alerts off"],
        ["runs the watcher"],
    ),
    (
        "watcher off in this process",
        status(watcher="off"),
        ["watcher off in this process"],
        [],
    ),
]


@pytest.mark.parametrize("name, home, present, absent", CASES, ids=[c[0] for c in CASES])
def test_render_home(name, home, present, absent):
    view = render_home(home, NOW)
    assert_safe(view)
    assert view["type"] == "home"
    text = whole(view)
    for part in present:
        assert part in text, f"{part!r} missing from:\n{text}"
    for part in absent:
        assert part not in text, f"{part!r} should not be in:\n{text}"


def test_worst_case_fits_slacks_block_limit():
    assert WORST_CASE_BLOCKS <= MAX_VIEW_BLOCKS


SIZES = [
    # (projects, finished, subscriptions, "…and N more" lines expected)
    (60, 10, 40, ["…and 10 more projects"]),
    (1000, 50, 1000, ["…and 950 more projects", "…and 960 more subscriptions"]),
    (1, 10, 41, ["…and 1 more subscription"]),
]


@pytest.mark.parametrize("n_projects, n_finished, n_subscriptions, more", SIZES)
def test_any_number_of_projects_tasks_and_subscriptions_stays_within_100_blocks(
    n_projects, n_finished, n_subscriptions, more
):
    home = status(
        projects=[project(f"cn-north-4_p{i:04d}") for i in range(n_projects)],
        finished=[finished(i) for i in range(n_finished)],
        subscriptions=[
            SubscriptionLine(f"C{i:08d}", i + 1, f"project p{i:04d}") for i in range(n_subscriptions)
        ],
    )
    view = render_home(home, NOW)
    assert_safe(view)
    assert len(view["blocks"]) <= MAX_VIEW_BLOCKS
    text = whole(view)
    for line in more:
        assert line in text
    assert text.count("succeeded on") == min(n_finished, FINISHED_SHOWN)


def test_troubled_projects_are_kept_when_not_all_fit():
    projects = [project(f"cn-north-4_p{i:02d}") for i in range(60)]
    projects[57] = project("cn-north-4_broken", outage_since=NOW - timedelta(minutes=3), outage_error="down")
    projects[58] = project("cn-north-4_stuck", stuck=4)
    view = render_home(status(projects=projects), NOW)
    text = whole(view)
    assert "*cn-north-4_broken*" in text and "*cn-north-4_stuck*" in text
    # The first 48 healthy ones, then the troubled two, in configured order; the other ten are summed up.
    assert text.index("*cn-north-4_p47*") < text.index("*cn-north-4_broken*")
    assert "*cn-north-4_p48*" not in text and "*cn-north-4_p59*" not in text
    assert "…and 10 more projects · 40 running" in text
    assert_safe(view)


def test_failing_channels_are_kept_when_not_all_subscriptions_fit():
    subs = [SubscriptionLine(f"C{i:08d}", i + 1, "all") for i in range(45)]
    subs.append(SubscriptionLine("C0GONE", 46, "all", failing="channel_not_found"))
    text = whole(render_home(status(subscriptions=subs), NOW))
    assert "<#C0GONE>" in text and "`channel_not_found`" in text
    assert "…and 6 more subscriptions" in text


HOSTILE_STATUS = status(
    version=HOSTILE,
    watcher=HOSTILE,
    projects=[
        project(
            HOSTILE,
            region=HOSTILE,
            running={HOSTILE: 1, "Reset": 2, **{f"{HOSTILE}{i}": i + 1 for i in range(10)}},
            outage_since=NOW,
            outage_error=HOSTILE,
            resolved=False,
        )
        for _ in range(3)
    ],
    finished=[
        finished(
            i,
            project=HOSTILE,
            action=None,
            operate_type=HOSTILE,
            server_name=HOSTILE,
            server_id=HOSTILE,
            outcome="failed",
            duration_s=10**12,
            error_code=HOSTILE,
            error_msg=HOSTILE,
        )
        for i in range(10)
    ],
    subscriptions=[SubscriptionLine(HOSTILE, 10**9, HOSTILE, failing=HOSTILE) for _ in range(40)],
)


def test_hostile_text_is_escaped_and_cut_without_breaking_lines():
    view = render_home(HOSTILE_STATUS, NOW)
    assert_safe(view)
    text = whole(view)
    assert "<!channel>" not in text and "<@U1>" not in text and "<https://" not in text
    assert "&lt;!channel&gt; &lt;@U1&gt; &amp;" in text
    assert "`&lt;!channel&gt; &lt;@U1&gt;" in text  # the error code, escaped inside its code span
    # Lines sharing a section are built short enough that no section had to be cut: each line is whole.
    sections = [b["text"]["text"] for b in view["blocks"] if b["type"] == "section"]
    assert all(len(text) < 3000 for text in sections)
    finished_lines = [line for text in sections for line in text.split("\n") if line.startswith(":x: ")]
    failing_lines = [
        line for text in sections for line in text.split("\n") if ":warning: cannot post" in line
    ]
    assert len(finished_lines) == 10 and all(
        re.search(r"\|\d{4}-\d\d-\d\d \d\d:\d\d>$", line) for line in finished_lines
    )
    assert len(failing_lines) == 40 and all(
        line.endswith("(`/invite @kpsbot` there)") for line in failing_lines
    )
    assert max(len(line) for line in finished_lines + failing_lines) <= LINE
    assert "of other kinds" in text  # more than six kinds of running task are summed up
    assert "stuck" in text


def test_non_finite_or_negative_durations_do_not_break_the_view():
    tasks = [
        finished(0, duration_s=float("nan")),
        finished(1, duration_s=float("inf")),
        finished(2, duration_s=-5),
    ]
    view = render_home(status(finished=tasks, projects=[project(last_success=NOW + timedelta(hours=1))]), NOW)
    assert_safe(view)
    assert "after 0s" in whole(view)


# -- the listener, with a Mock client ----------------------------------------------------


def home_event(user: str = "U1", tab: str = "home") -> dict:
    return {
        "type": "app_home_opened",
        "user": user,
        "channel": "D1",
        "tab": tab,
        "event_ts": "1714564800.000100",
    }


def test_opening_the_home_tab_publishes_the_view():
    client = Mock()
    handle_home_opened(home_event("U42"), client, status=status, clock=lambda: NOW)
    client.views_publish.assert_called_once()
    kwargs = client.views_publish.call_args.kwargs
    assert kwargs["user_id"] == "U42"
    assert kwargs["view"] == render_home(status(), NOW)
    assert_valid_view(kwargs["view"])


@pytest.mark.parametrize("event", [home_event(tab="messages"), {"type": "app_home_opened", "user": "U1"}])
def test_other_tabs_publish_nothing(event):
    client, provider = Mock(), Mock(side_effect=status)
    handle_home_opened(event, client, status=provider, clock=lambda: NOW)
    client.views_publish.assert_not_called()
    provider.assert_not_called()  # not even the store is read


def test_a_failing_status_provider_is_logged_not_raised(caplog):
    client = Mock()
    logger = logging.getLogger("test.home")

    def broken() -> HomeStatus:
        raise RuntimeError("database is locked")

    with caplog.at_level(logging.ERROR, logger="test.home"):
        handle_home_opened(home_event("U7"), client, logger, status=broken, clock=lambda: NOW)
    client.views_publish.assert_not_called()
    [record] = caplog.records
    assert "U7" in record.getMessage() and record.exc_info[0] is RuntimeError


def test_a_slack_error_is_logged_with_its_code(caplog):
    response = SlackResponse(
        client=None,
        http_verb="POST",
        api_url="views.publish",
        req_args={},
        data={"ok": False, "error": "not_enabled"},
        headers={},
        status_code=200,
    )
    client = Mock()
    client.views_publish.side_effect = SlackApiError("The request to the Slack API failed.", response)
    with caplog.at_level(logging.WARNING, logger="kpsbot.slack.home"):
        handle_home_opened(home_event(), client, status=status, clock=lambda: NOW)
    [record] = caplog.records
    assert "not_enabled" in record.getMessage() and record.exc_info is None


# -- over HTTP: signed Events API requests to the real server --------------------------


def provider() -> HomeStatus:
    return status(projects=[project("p1", region="cn-north-4")])


def test_app_home_opened_over_http_publishes_one_view(start_bot, fake):
    bot = start_bot(tasks=0, home=provider)
    answer = bot.event(home_event("U1"))
    assert answer.status == 200 and answer.seconds < 3  # Slack re-sends an event not acked in 3 s
    [call] = fake.wait_for_calls("views.publish", 1)
    assert call["args"]["user_id"] == "U1" and call["token"] == "xoxb-test"
    view = call["args"]["view"]
    assert_valid_view(view)
    assert "*p1* · cn-north-4" in whole(view)
    assert fake.home_views["U1"]["blocks"] == view["blocks"]


def test_messages_tab_over_http_publishes_nothing(start_bot, fake):
    bot = start_bot(tasks=0, home=provider)
    assert bot.event(home_event("U-messages", tab="messages")).status == 200
    assert bot.event(home_event("U-home")).status == 200
    [call] = fake.wait_for_calls("views.publish", 1)
    time.sleep(0.3)  # the events are handled in order of arrival; nothing else should follow
    assert [c["args"]["user_id"] for c in fake.calls_to("views.publish")] == ["U-home"]
    assert call["args"]["user_id"] == "U-home"


@pytest.mark.parametrize(
    "sign",
    [{"secret": "not-the-signing-secret"}, {"timestamp": int(time.time()) - 6 * 60}],
    ids=["forged signature", "stale timestamp"],
)
def test_unverified_event_gets_401_and_publishes_nothing(start_bot, fake, sign):
    bot = start_bot(tasks=0, home=provider)
    assert bot.event(home_event("U-forged"), sign=sign).status == 401
    assert bot.event(home_event("U-real")).status == 200  # a good one after it, to know when to look
    fake.wait_for_calls("views.publish", 1)
    time.sleep(0.3)
    assert [c["args"]["user_id"] for c in fake.calls_to("views.publish")] == ["U-real"]


def test_url_verification_challenge_is_answered(start_bot):
    bot = start_bot(tasks=0, home=provider)
    challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    answer = bot.post_json({"token": "x", "challenge": challenge, "type": "url_verification"})
    assert answer.status == 200
    assert answer.body == {"challenge": challenge}


# -- over Socket Mode: an events_api envelope on a real WebSocket -----------------------

BOT_TOKEN = "xoxb-socket"
APP_TOKEN = "xapp-socket"


@pytest.fixture
def socket_bot():
    """kpsbot's Slack side in Socket Mode, in-process, against a fake Socket Mode server and Web API."""
    before = set(threading.enumerate())
    socket_mode = FakeSocketMode().start()
    fake = FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN, socket_mode=socket_mode).start()
    settings = settings_from(
        {
            "KPS_PROJECT_ID": "p1",
            "KPS_REGION": "cn-north-4",
            "KPS_ENDPOINT": "http://127.0.0.1:9",  # the Home tab never calls KPS
            "CLOUD_SDK_AK": "AK",
            "CLOUD_SDK_SK": "SK",
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "SLACK_API_URL": fake.url,
        }
    )
    store = Store(":memory:")
    work = WorkerPool(workers=2)
    app = compose_app(settings, store, work, home=provider)
    service = SocketModeService(app, APP_TOKEN)
    try:
        service.start()
        socket_mode.wait_for_connections(1)
        yield socket_mode, fake
    finally:
        # The WebSocket goes first: when the app closes it, websocket-client's reader thread can stay
        # blocked for good in select() on the socket closed under it (ping_timeout is None), about one
        # stop in three. Dropped by the server instead, the reader sees EOF and returns; reconnecting
        # is refused, and the app's close() then ends every thread.
        socket_mode.stop()
        service.stop(timeout=5)
        app.listener_runner.listener_executor.shutdown(wait=True)
        work.stop(2)
        store.close()
        fake.stop()
    deadline = time.monotonic() + 5
    while (
        left := [t for t in set(threading.enumerate()) - before if t.is_alive()]
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"threads left running: {sorted(t.name for t in left)}"


def test_app_home_opened_over_socket_mode_is_acked_and_publishes_one_view(socket_bot):
    socket_mode, fake = socket_bot
    bot = Bot("", None, fake)  # only to build the payloads
    envelope_id = socket_mode.send_envelope("events_api", bot.event_payload(home_event("U9")))
    assert socket_mode.wait_for_ack(envelope_id) == {"envelope_id": envelope_id}
    [call] = fake.wait_for_calls("views.publish", 1)
    assert call["args"]["user_id"] == "U9" and call["token"] == BOT_TOKEN
    assert_valid_view(call["args"]["view"])
    assert "*p1* · cn-north-4" in whole(call["args"]["view"])

    messages = socket_mode.send_envelope("events_api", bot.event_payload(home_event(tab="messages")))
    socket_mode.wait_for_ack(messages)
    time.sleep(0.3)
    assert len(fake.calls_to("views.publish")) == 1
