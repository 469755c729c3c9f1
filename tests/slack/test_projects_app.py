"""`/kps-tasks` over two projects in two regions, end to end: signed requests to the app on loopback,
one simulator server for the account (reached per region), the fake Slack's response_url."""

from __future__ import annotations

import json
import re

import pytest
from support.fake_slack import assert_valid_message
from support.slack_requests import Bot

from kpsbot.simulator import Simulator, SimulatorServer
from kpsbot.slack.blocks import NEXT, PREV

from .conftest import make_bot
from .test_slack_app import button

NORTH, PROD = "cn-north-4", "ap-southeast-1_prod"
ROW = re.compile(r"\n(?:Project \*(?P<project>[^*]+)\* · )?Task `(?P<task>[^`]+)`$")


@pytest.fixture
def bot(fake):
    north = Simulator(project_id="pnorth", name=NORTH, ak="AK", sk="SK", tasks=7, seed=1, rate=0.0)
    prod = Simulator(project_id="pprod", name=PROD, ak="AK", sk="SK", tasks=5, seed=2, rate=0.0)
    with SimulatorServer([north, prod]) as server:
        env = {"KPS_PROJECTS": f"{NORTH}:pnorth,{PROD}:pprod", "KPSBOT_PAGE_SIZE": "5"}
        http, work, store, settings = make_bot(fake, f"{server.url}/{{region}}", env)
        try:
            yield Bot(f"http://127.0.0.1:{http.port}", server, fake, store=store, settings=settings)
        finally:
            http.stop(2)
            work.stop(2)
            store.close()


def rows(message: dict) -> list[tuple[str | None, str]]:
    """(project, task ID) of each row of a page, in order; the project is None where the row does
    not name it (a page of one project)."""
    found = []
    for block in message["blocks"]:
        match = ROW.search(block.get("text", {}).get("text", "")) if block["type"] == "section" else None
        if match:
            found.append((match["project"], match["task"]))
    return found


def ids(sim: Simulator) -> list[tuple[str, str]]:
    return [(sim.name, t["task_id"]) for t in sim.running()]


def text(message: dict) -> str:
    return json.dumps(message, ensure_ascii=False)


def test_pages_run_across_both_projects_and_name_each_rows_project(bot):
    north, prod = bot.sim.sims
    bot.command("", name="first")
    first = bot.reply("first")
    assert_valid_message(first)
    assert rows(first) == ids(north)[:5] and "of *12*" in text(first)
    bot.press(NEXT, button(first, NEXT), name="second")
    second = bot.reply("second")
    assert rows(second) == ids(north)[5:] + ids(prod)[:3]  # the page spans the two projects
    bot.press(NEXT, button(second, NEXT), name="third")
    third = bot.reply("third")
    assert rows(third) == ids(prod)[3:] and button(third, NEXT) is None
    bot.press(PREV, button(third, PREV), name="back")
    assert rows(bot.reply("back")) == rows(second)


def test_a_project_word_keeps_the_page_to_that_project(bot):
    _, prod = bot.sim.sims
    bot.command(PROD, name="prod")
    page = bot.reply("prod")
    assert rows(page) == [(None, task_id) for _, task_id in ids(prod)] and "of *5*" in text(page)


def test_one_project_failing_shows_the_others_rows_and_one_line_naming_it(bot):
    north, prod = bot.sim.sims
    prod.fail_next(1, status=400, body={"error_code": "KPS.0001", "error_msg": "boom"})
    bot.command("", name="partial")
    page = bot.reply("partial")
    assert_valid_message(page)
    assert rows(page) == ids(north)[:5]
    [line] = [
        b["text"]["text"] for b in page["blocks"] if b["type"] == "section" and PROD in b["text"]["text"]
    ]
    assert "KPS.0001" in line and "boom" in line and "Request id" in line


def test_a_page_asks_each_project_for_one_page_not_for_every_task(bot):
    north, prod = bot.sim.sims
    for n in range(2493):  # 2,500 in all: three API pages of 1,000 to list every one
        north.add_task(server_name=f"db-{n:04d}")
    north.requests = prod.requests = 0
    bot.command("", name="first")
    first = bot.reply("first")
    assert "of *2505*" in text(first)
    assert (north.requests, prod.requests) == (1, 1)
    bot.press(NEXT, button(first, NEXT), name="second")
    bot.reply("second")
    assert (north.requests, prod.requests) == (3, 2)  # its first rows again, then the page's own
    bot.command("db-", name="filtered")  # a text filter: KPS has none, so every task is read
    bot.reply("filtered")
    assert north.requests == 3 + 3
