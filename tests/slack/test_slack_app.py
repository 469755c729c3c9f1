"""/kps-tasks end to end: signed requests to the real HTTP server, KPS simulator behind, fake Slack."""

import json
import threading
import time

import pytest
import requests
from support.fake_slack import assert_valid_message
from support.slack_requests import signed_headers

from kpsbot.slack.blocks import NEXT, PREV, REFRESH
from kpsbot.slack.paging import PageRef, decode_page_value, encode_page_value
from kpsbot.slack.query import Query

PROJECT = "p1"  # the project tests/slack/conftest.py serves


def rows(message: dict) -> list[str]:
    """Task IDs shown on a page, in order."""
    found = []
    for block in message["blocks"]:
        text = block.get("text", {}).get("text", "") if block["type"] == "section" else ""
        if "\nTask `" in text:
            found.append(text.rsplit("Task `", 1)[1].rstrip("`"))
    return found


def button(message: dict, action_id: str) -> str | None:
    for element in message["blocks"][-1].get("elements", []):
        if element.get("action_id") == action_id:
            return element["value"]
    return None


def running_ids(sim) -> list[str]:
    return [t["task_id"] for t in sim.running()]


def is_notice(body: dict) -> bool:
    return body.get("response_type") == "ephemeral" and body.get("replace_original") is False


# -- the command --------------------------------------------------------------------


def test_page_arrives_through_response_url_while_kps_is_slow(start_bot):
    bot = start_bot(tasks=25)
    bot.sim.delay = 4.0
    ack = bot.command("", name="slow")
    assert ack.status == 200
    assert ack.seconds < 4.0, f"ack took {ack.seconds:.2f} s: it waited for KPS"
    [response] = bot.responses("slow", timeout=15)
    assert response["at"] > ack.at  # the ack came back before the page
    page = response["body"]
    assert_valid_message(page)
    assert page["response_type"] == "ephemeral"
    assert "Showing *1–10* of *25*" in json.dumps(page, ensure_ascii=False)
    assert rows(page) == running_ids(bot.sim)[:10]


def test_a_burst_of_commands_is_acked_without_waiting_for_kps(start_bot):
    """40 commands at once while every KPS call takes 20 s: every ack is back before any page is,
    so acks never queue behind KPS calls (timing figures are bench/ack_latency.py's job)."""
    bot = start_bot(tasks=5)
    bot.sim.delay = 20.0
    acks = []

    def send(n):
        acks.append(bot.command("", name=f"burst{n}"))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(acks) == 40 and all(a.status == 200 for a in acks)
    assert bot.fake.responses == []  # not one page yet: no ack waited for KPS
    assert max(a.seconds for a in acks) < 20.0


def test_next_previous_and_refresh_replace_the_message_with_the_right_rows(start_bot):
    bot = start_bot(tasks=25)
    ids = running_ids(bot.sim)
    bot.command("", name="first")
    first = bot.reply("first")
    assert button(first, PREV) is None

    bot.press(NEXT, button(first, NEXT), name="next")
    second = bot.reply("next")
    assert second["replace_original"] is True
    assert_valid_message(second)
    assert rows(second) == ids[10:20]

    bot.press(NEXT, button(second, NEXT), name="last")
    last = bot.reply("last")
    assert rows(last) == ids[20:25]
    assert button(last, NEXT) is None
    assert "Showing *21–25* of *25*" in json.dumps(last, ensure_ascii=False)

    bot.press(PREV, button(last, PREV), name="prev")
    assert rows(bot.reply("prev")) == ids[10:20]

    added = bot.sim.add_task(server_name="fresh-01")
    bot.press(REFRESH, button(last, REFRESH), name="refresh")
    refreshed = bot.reply("refresh")
    assert refreshed["replace_original"] is True
    assert "of *26*" in json.dumps(refreshed, ensure_ascii=False)
    assert added["task_id"] in rows(refreshed)


def test_refresh_of_a_page_that_emptied_shows_the_last_page(start_bot):
    bot = start_bot(tasks=5)
    value = encode_page_value(PageRef(Query(), 10))
    bot.press(REFRESH, value, name="r")
    body = bot.reply("r")
    assert body["replace_original"] is True
    assert rows(body) == running_ids(bot.sim)


def test_next_past_the_end_says_the_page_is_gone(start_bot):
    bot = start_bot(tasks=5)
    bot.press(NEXT, encode_page_value(PageRef(Query(), 10)), name="n")
    body = bot.reply("n")
    assert is_notice(body)
    assert "no longer exists" in body["text"]


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("v2||abc|", "cannot exist"),
        ("v2||-5|", "cannot exist"),
        ("v2|other-project|0|", "no longer watches"),
        ("v1|p1|0|", "older or altered"),
        ("v9|p1|0|", "altered"),
        ('{"offset": 10}', "altered"),
        ("", "altered"),
    ],
)
def test_a_tampered_button_value_gets_an_ephemeral_error_and_no_kps_call(start_bot, value, complaint):
    bot = start_bot(tasks=5)
    before = bot.sim.requests
    ack = bot.press(NEXT, value, name="bad")
    assert ack.status == 200
    body = bot.reply("bad")
    assert is_notice(body)
    assert complaint in body["text"]
    assert bot.sim.requests == before


# -- filters ----------------------------------------------------------------------------


@pytest.fixture
def known_bot(start_bot):
    bot = start_bot(tasks=0)
    sim = bot.sim
    sim.add_task(operate_type="RUNNING_RESET", server_name="web-01", keypair_name="kp-web", task_id="t-a")
    sim.add_task(operate_type="RUNNING_RESET", server_name="db-01", keypair_name="kp-db", task_id="t-b")
    sim.add_task(operate_type="RUNNING_REPLACE", server_name="web-02", keypair_name="kp-web", task_id="t-c")
    sim.add_task(
        operate_type="RUNNING_UNBIND",
        server_name="cache-01",
        keypair_name="kp-x",
        task_id="t-d",
        server_id="srv-special",
    )
    sim.add_task(operate_type="RUNNING_UNBIND", server_name="web-03", keypair_name="kp-web", task_id="t-e")
    sim.finish_task("t-e", success=False, error_code="KPS.2003", error_msg="server is not running")
    return bot


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["t-a", "t-b", "t-c", "t-d"]),
        ("reset", ["t-a", "t-b"]),
        ("replace", ["t-c"]),
        ("unbind", ["t-d"]),
        ("web", ["t-a", "t-c"]),
        ("WEB-0", ["t-a", "t-c"]),
        ("reset web-", ["t-a"]),
        ("srv-special", ["t-d"]),
        ("kp-db", ["t-b"]),
        ("t-c", ["t-c"]),
        ("nothing-matches", []),
        ("failed", ["t-e"]),
        ("failed web", ["t-e"]),
        ("failed reset", []),
    ],
)
def test_filters(known_bot, text, expected):
    known_bot.command(text, name="f")
    body = known_bot.reply("f")
    assert_valid_message(body)
    assert sorted(rows(body)) == expected
    shown = json.dumps(body, ensure_ascii=False)
    if not expected:
        assert "No running tasks match" in shown or "No failed tasks" in shown
    if text.startswith("failed") and expected:
        assert "Error `KPS.2003`: server is not running" in shown


def test_filtered_pages_walk_every_task(start_bot):
    bot = start_bot(tasks=0)
    for n in range(30):
        bot.sim.add_task(
            operate_type="RUNNING_RESET" if n % 2 else "RUNNING_UNBIND",
            server_name=f"node-{n:02d}",
            task_id=f"t-{n:02d}",
        )
    bot.command("reset node", name="p1")
    first = bot.reply("p1")
    assert "Showing *1–10* of *15*" in json.dumps(first, ensure_ascii=False)
    assert decode_page_value(button(first, NEXT), PROJECT).query == Query(action="RESET", text="node")
    bot.press(NEXT, button(first, NEXT), name="p2")
    second = bot.reply("p2")
    assert rows(second) == [f"t-{n:02d}" for n in range(21, 30, 2)]


def test_status(known_bot):
    known_bot.command("status t-c", name="s")
    body = known_bot.reply("s")
    assert_valid_message(body)
    assert "*Running* · Replace" in json.dumps(body, ensure_ascii=False)
    known_bot.command("status t-e", name="s2")
    assert "*Failed* · Unbind" in json.dumps(known_bot.reply("s2"), ensure_ascii=False)


def test_status_of_an_unknown_task_is_a_kps_error(known_bot):
    known_bot.command("status nope", name="s")
    body = known_bot.reply("s")
    assert is_notice(body)
    assert "`KPS.0004`" in body["text"] and "Request id `" in body["text"]


def test_help_is_answered_in_the_ack_without_kps(start_bot):
    bot = start_bot(tasks=5)
    before = bot.sim.requests
    ack = bot.command("help", name="h")
    assert ack.status == 200
    assert ack.body["response_type"] == "ephemeral"
    assert_valid_message(ack.body)
    assert "status &lt;task_id&gt;" in json.dumps(ack.body)
    time.sleep(0.3)
    assert bot.sim.requests == before
    assert not [r for r in bot.fake.responses if r["name"] == "h"]


def test_no_tasks(start_bot):
    bot = start_bot(tasks=0)
    bot.command("", name="z")
    body = bot.reply("z")
    assert_valid_message(body)
    assert "No running tasks right now" in json.dumps(body)
    assert button(body, NEXT) is None and button(body, REFRESH)


@pytest.mark.parametrize("text", ["payload", "payload-01 reset", "x&payload=y"])
def test_text_with_the_word_payload_is_a_command_like_any_other(start_bot, text):
    """Bolt alone reads any form body containing `payload` as an interactivity payload (a 404)."""
    bot = start_bot(tasks=3)
    ack = bot.command(text, name="p")
    assert ack.status == 200
    body = bot.reply("p")
    assert_valid_message(body)
    assert "No running tasks match" in json.dumps(body)


def test_a_thousand_tasks_stay_within_slacks_limits(start_bot):
    bot = start_bot(tasks=1000, env={"KPSBOT_PAGE_SIZE": "40"})
    bot.command("", name="big")
    body = bot.reply("big")
    assert_valid_message(body)
    assert len(rows(body)) == 40
    assert "Showing *1–40* of *1000*" in json.dumps(body, ensure_ascii=False)
    bot.press(NEXT, encode_page_value(PageRef(Query(), 960)), name="end")
    end = bot.reply("end")
    assert_valid_message(end)
    assert rows(end) == running_ids(bot.sim)[960:]


def test_a_hostile_server_name_cannot_ping_anyone(start_bot):
    bot = start_bot(tasks=0)
    bot.sim.add_task(server_name="<!channel> <@U1> & <https://x.example|y>", keypair_name="<!here>")
    bot.command("", name="evil")
    body = bot.reply("evil")
    assert_valid_message(body)
    shown = json.dumps({k: v for k, v in body.items() if k != "blocks"} | {"blocks": body["blocks"][:-1]})
    for raw in ("<!channel>", "<!here>", "<@U1>", "<https://"):
        assert raw not in shown
    assert "&lt;!channel&gt;" in shown


# -- failures ---------------------------------------------------------------------------


def test_kps_400_becomes_a_short_ephemeral_message_with_code_and_request_id(start_bot):
    bot = start_bot(tasks=5)
    bot.sim.fail_next(1, status=400, kind="status")
    bot.command("", name="e")
    body = bot.reply("e")
    assert is_notice(body)
    assert "`KPS.0005`" in body["text"] and "HTTP 400" in body["text"] and "Request id `" in body["text"]
    assert "Traceback" not in body["text"] and len(body["text"]) < 400


def test_kps_timeout_becomes_a_short_ephemeral_message(start_bot):
    bot = start_bot(tasks=5, kps_timeout=1.0)
    bot.sim.fail_next(1, kind="timeout")
    bot.command("", name="t")
    body = bot.reply("t", timeout=15)
    assert is_notice(body)
    assert "did not answer in time" in body["text"]


def test_a_button_press_during_a_kps_failure_leaves_the_page_alone(start_bot):
    bot = start_bot(tasks=25)
    bot.sim.fail_next(1, status=503, kind="status")
    bot.press(NEXT, encode_page_value(PageRef(Query(), 10)), name="b")
    body = bot.reply("b")
    assert is_notice(body)  # a new ephemeral notice, not a replacement of the page
    assert "HTTP 503" in body["text"]


# -- access ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {"KPSBOT_ALLOWED_CHANNELS": "C9"},
        {"KPSBOT_ALLOWED_USERS": "U9"},
        {"KPSBOT_ALLOWED_CHANNELS": "C1", "KPSBOT_ALLOWED_USERS": "U9"},
    ],
)
def test_outsiders_are_refused_without_a_kps_call(start_bot, env):
    bot = start_bot(tasks=5, env=env)
    before = bot.sim.requests
    ack = bot.command("", name="no", user="U1", channel="C1")
    assert ack.status == 200 and "limited to certain channels" in ack.body["text"]
    bot.press(NEXT, encode_page_value(PageRef(Query(), 0)), name="nob", user="U1", channel="C1")
    body = bot.reply("nob")
    assert is_notice(body) and "limited to certain channels" in body["text"]
    time.sleep(0.2)
    assert bot.sim.requests == before


def test_insiders_are_served(start_bot):
    bot = start_bot(tasks=5, env={"KPSBOT_ALLOWED_CHANNELS": "C1", "KPSBOT_ALLOWED_USERS": "U1"})
    bot.command("", name="yes", user="U1", channel="C1")
    assert len(rows(bot.reply("yes"))) == 5


# -- request verification and HTTP ----------------------------------------------------


@pytest.mark.parametrize(
    "sign",
    [
        {"secret": "wrong-secret"},
        {"timestamp": int(time.time()) - 600},
        {"timestamp": int(time.time()) + 600},
    ],
)
def test_bad_signatures_and_old_timestamps_get_401_and_nothing_else(start_bot, sign):
    bot = start_bot(tasks=5)
    before = bot.sim.requests
    ack = bot.command("", name="forged", sign=sign)
    assert ack.status == 401
    time.sleep(0.3)
    assert bot.sim.requests == before
    assert not [r for r in bot.fake.responses if r["name"] == "forged"]


def test_an_unsigned_request_gets_401(start_bot):
    bot = start_bot(tasks=5)
    response = requests.post(
        f"{bot.url}/slack/events",
        data="command=/kps-tasks",
        timeout=5,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 401


def test_a_slack_retry_gets_no_second_answer(start_bot):
    bot = start_bot(tasks=5)
    first = bot.command("", name="once", trigger_id="trig-1")
    retry = bot.command(
        "",
        name="once",
        trigger_id="trig-1",
        headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"},
    )
    assert first.status == retry.status == 200
    bot.reply("once")
    time.sleep(0.5)
    assert len(bot.responses("once")) == 1


def test_a_retry_of_a_request_never_seen_is_answered(start_bot):
    bot = start_bot(tasks=5)
    bot.command("", name="lost", headers={"X-Slack-Retry-Num": "1"})
    assert len(rows(bot.reply("lost"))) == 5


def test_a_body_over_64_kib_gets_413_before_bolt(start_bot):
    bot = start_bot(tasks=5)
    before = bot.sim.requests
    body = "text=" + "x" * (70 * 1024)
    response = requests.post(f"{bot.url}/slack/events", data=body, headers=signed_headers(body), timeout=5)
    assert response.status_code == 413
    assert bot.sim.requests == before


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 404),
        ("POST", "/slack/other", 404),
        ("GET", "/slack/events", 405),
        ("POST", "/healthz", 405),
    ],
)
def test_other_paths_and_methods(start_bot, method, path, status):
    bot = start_bot(tasks=0)
    assert requests.request(method, f"{bot.url}{path}", timeout=5).status_code == status


def test_healthz(start_bot):
    bot = start_bot(tasks=0)
    response = requests.get(f"{bot.url}/healthz", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"status": "ok", "version": "test"}
