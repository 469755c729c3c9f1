"""Block Kit rendering for /kps-tasks: pages, status, help and errors, within Slack's limits."""

import json
from datetime import datetime, timedelta, timezone

import pytest
from support.fake_slack import assert_valid_message

from kpsbot.kps.client import KpsError
from kpsbot.kps.listing import ProjectTask
from kpsbot.kps.models import FailedTask, RunningTask, TaskStatus
from kpsbot.slack.blocks import (
    NEXT,
    PREV,
    REFRESH,
    PageScope,
    render_help,
    render_kps_error,
    render_notice,
    render_task_page,
    render_task_status,
)
from kpsbot.slack.paging import decode_page_value
from kpsbot.slack.query import Query, parse_command
from kpsbot.slack.text import BUTTON_VALUE, SECTION_TEXT

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def task(n: int, **fields) -> RunningTask:
    started = NOW - timedelta(minutes=5 + n)
    values = {
        "task_id": f"task-{n}",
        "operate_type": "RUNNING_RESET",
        "task_time": str(int(started.timestamp() * 1000)),
        "server_name": f"web-{n:02d}",
        "server_id": f"srv-{n}",
        "keypair_name": "kp-ops",
    }
    return RunningTask(**{**values, **fields})


ALL = Query()


def page(tasks, total, offset=0, page_size=10, query=ALL, project="p1", **options):
    rows = [ProjectTask(project, "id-" + project, t) for t in tasks]
    message = render_task_page(
        rows, total, offset, page_size, query, PageScope((project,), "cn-north-4"), NOW, **options
    )
    assert_valid_message(message)
    return message


def all_text(message) -> str:
    return json.dumps(message, ensure_ascii=False)


def buttons(message) -> dict:
    actions = [b for b in message["blocks"] if b["type"] == "actions"]
    assert len(actions) == 1
    return {e["action_id"]: decode_page_value(e["value"], ["p1"]).offset for e in actions[0]["elements"]}


def sections(message) -> list[str]:
    return [b["text"]["text"] for b in message["blocks"] if b["type"] == "section"]


@pytest.mark.parametrize(
    ("count", "total", "offset", "summary", "expected_buttons"),
    [
        (0, 0, 0, "No running tasks right now", {REFRESH: 0}),
        (3, 3, 0, "Showing *1–3* of *3*", {REFRESH: 0}),
        (10, 25, 0, "Showing *1–10* of *25*", {NEXT: 10, REFRESH: 0}),
        (10, 25, 10, "Showing *11–20* of *25*", {PREV: 0, NEXT: 20, REFRESH: 10}),
        (5, 25, 20, "Showing *21–25* of *25*", {PREV: 10, REFRESH: 20}),
        (0, 25, 30, "past the end", {PREV: 15, REFRESH: 30}),
    ],
)
def test_page_summary_and_buttons(count, total, offset, summary, expected_buttons):
    message = page([task(n) for n in range(count)], total, offset)
    assert summary in sections(message)[0]
    assert buttons(message) == expected_buttons
    assert len(sections(message)) == 1 + count


def test_header_names_project_and_region():
    message = page([task(1)], 1)
    assert message["blocks"][0]["type"] == "header"
    context = message["blocks"][1]["elements"][0]["text"]
    assert "Project *p1*" in context and "cn-north-4" in context


def test_a_task_row_shows_action_server_keypair_start_and_age():
    row = sections(page([task(1)], 1))[1]
    assert ":arrows_counterclockwise: *Reset*" in row
    assert "*web-01* `srv-1`" in row
    assert "Key pair *kp-ops*" in row
    started = int((NOW - timedelta(minutes=6)).timestamp())
    assert f"<!date^{started}^" in row and "|2024-05-01 11:54 UTC>" in row
    assert "running 6m" in row
    assert "Task `task-1`" in row


@pytest.mark.parametrize(
    ("operate_type", "shown"),
    [
        ("RUNNING_REPLACE", ":key: *Replace*"),
        ("FAILED_UNBIND", ":scissors: *Unbind*"),
        ("RUNNING_REBOOT", ":grey_question: *RUNNING_REBOOT*"),
        ("", ":grey_question: *Unknown*"),
    ],
)
def test_action_shown(operate_type, shown):
    assert shown in sections(page([task(1, operate_type=operate_type)], 1))[1]


def test_unknown_start_time():
    row = sections(page([task(1, task_time="soon")], 1))[1]
    assert "started unknown time" in row and "running" not in row


def test_filtered_empty_page_names_the_filter():
    message = page([], 0, query=parse_command("reset web-"))
    assert 'No running tasks match reset, matching "web-"' in sections(message)[0]
    assert decode_page_value(message["blocks"][-1]["elements"][0]["value"], "p1").query == parse_command(
        "reset web-"
    )


def test_failed_page_shows_errors():
    failed = FailedTask(**task(1).to_api(), task_error_code="KPS.2003", task_error_msg="server <off>")
    message = page([failed], 1, query=parse_command("failed"))
    assert message["blocks"][0]["text"]["text"] == "Failed KPS key-pair tasks"
    row = sections(message)[1]
    assert "Error `KPS.2003`: server &lt;off&gt;" in row
    assert "running" not in row


@pytest.mark.parametrize(
    "name",
    ["<!channel>", "<!here|here>", "<@U123>", "<https://evil.example|click>", "a & b", "<#C1>"],
)
def test_hostile_text_from_kps_cannot_ping_or_link(name):
    hostile = task(1, server_name=name, keypair_name=name, server_id=name, task_id=name)
    message = page([hostile], 1, query=Query(text=name))
    for button in message["blocks"][-1]["elements"]:
        assert decode_page_value(button.pop("value"), "p1").query.text == name  # values are never shown
    text = all_text(message)
    for raw in ("<!channel", "<!here", "<@", "<http", "<#"):
        assert raw not in text
    assert "&lt;" in text or "&amp;" in text


def test_control_characters_and_backticks_do_not_break_the_row():
    row = sections(page([task(1, server_name="a\nb\tc", server_id="x`y")], 1))[1]
    assert row.count("\n") == 2  # three lines, as always
    assert "`x'y`" in row


def test_huge_names_are_cut_within_limits():
    big = "ä&<" * 5000
    tasks = [task(n, server_name=big, keypair_name=big, server_id=big, task_id=big) for n in range(10)]
    message = page(tasks, 1000, query=Query(text="y" * 200))
    for text in sections(message):
        assert len(text) <= SECTION_TEXT
    for element in message["blocks"][-1]["elements"]:
        assert len(element["value"]) <= BUTTON_VALUE


def test_a_huge_page_size_still_fits_in_fifty_blocks():
    tasks = [task(n) for n in range(100)]
    message = page(tasks, 1000, page_size=100)
    assert len(message["blocks"]) <= 50
    assert buttons(message)[NEXT] == len(sections(message)) - 1


@pytest.mark.parametrize(
    ("task_status", "shown"),
    [
        ("RUNNING_RESET", ":arrows_clockwise: *Running* · Reset"),
        ("READY_REPLACE", ":hourglass_flowing_sand: *Waiting to start* · Replace"),
        ("SUCCESS_UNBIND", ":white_check_mark: *Succeeded* · Unbind"),
        ("FAILED_RESET", ":x: *Failed* · Reset"),
        ("PAUSED_<!channel>", ":grey_question: *PAUSED_&lt;!channel&gt;*"),
        ("", ":grey_question: *Unknown*"),
    ],
)
def test_task_status(task_status, shown):
    message = render_task_status(TaskStatus("t-1", task_status, "srv-1"), "p1", "cn-north-4")
    assert_valid_message(message)
    assert shown in sections(message)[0]
    assert "Task `t-1` · server `srv-1`" in sections(message)[0]


@pytest.mark.parametrize("problem", ["", "`status` needs exactly one task ID"])
def test_help(problem):
    message = render_help(problem)
    assert_valid_message(message)
    text = all_text(message)
    for word in ("failed", "status &lt;task_id&gt;", "reset", "replace", "unbind", "help"):
        assert word in text
    assert problem in text


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            KpsError("x", status=400, error_code="KPS.0001", error_msg="bad offset", request_id="req-1"),
            ":warning: KPS refused the request: `KPS.0001` bad offset (HTTP 400) Request id `req-1`.",
        ),
        (
            KpsError("x", error_code="timeout"),
            ":hourglass: KPS did not answer in time. Try again in a minute.",
        ),
        (KpsError("x", error_code="connection"), "kpsbot cannot reach KPS right now"),
        (KpsError("x", status=502, request_id="r2"), ":warning: KPS answered HTTP 502. Request id `r2`."),
        (
            KpsError("x", status=403, error_code="APIG.1", error_msg="<!channel> " + "z" * 5000),
            "`APIG.1` &lt;!channel&gt; zzz",
        ),
        (KpsError("x"), "KPS sent an answer kpsbot cannot read"),
    ],
)
def test_kps_errors_are_short_and_escaped(error, expected):
    message = render_kps_error(error)
    assert_valid_message(message)
    assert expected in message["text"]
    assert len(message["text"]) < 500
    assert "<!channel>" not in message["text"] and "Traceback" not in message["text"]


@pytest.mark.parametrize("text", ["You are not allowed to use /kps-tasks here.", ":hourglass: busy"])
def test_notices_are_block_kit(text):
    message = render_notice(text)
    assert_valid_message(message)
    assert message["blocks"][0]["text"]["text"] == text


def test_kps_errors_are_block_kit():
    message = render_kps_error(
        KpsError("x", status=400, error_code="KPS.0005", error_msg="<bad>", request_id="r1")
    )
    assert_valid_message(message)
    assert "&lt;bad&gt;" in message["blocks"][0]["text"]["text"]


def test_a_page_over_several_projects_names_each_rows_project_and_the_ones_that_failed():
    rows = [ProjectTask("cn-north-4", "a", task(1)), ProjectTask("ap-southeast-1_prod", "b", task(2))]
    scope = PageScope(("cn-north-4", "ap-southeast-1_prod", "eu-west-0"))
    errors = {"eu-west-0": ":warning: KPS refused the request: `KPS.0001` boom Request id `r-1`."}
    message = render_task_page(rows, 2, 0, 10, ALL, scope, NOW, errors=errors)
    assert_valid_message(message)
    text = sections(message)
    assert "Project *cn-north-4*" in text[1] and "Project *ap-southeast-1_prod*" in text[2]
    assert "eu-west-0" in text[3] and "KPS.0001" in text[3] and "r-1" in text[3]
    assert "3 projects" in all_text(message)


@pytest.mark.parametrize(("minutes", "stuck"), [(0, False), (60, False), (4, True)])
def test_tasks_running_longer_than_the_threshold_are_marked_stuck(minutes, stuck):
    row = sections(page([task(1)], 1, stuck_minutes=minutes))[1]  # task 1 started 6 minutes ago
    assert ("stuck" in row) == stuck
