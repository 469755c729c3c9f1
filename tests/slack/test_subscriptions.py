"""Channel subscriptions end to end: signed `/kps-tasks subscribe|subscriptions|unsubscribe` requests to
the app served on loopback (as `kpsbot run` composes it), the KPS simulator and a fake Slack behind."""

from __future__ import annotations

from unittest.mock import Mock

import pytest
from support.fake_slack import assert_valid_message
from support.run_process import wait_until

from kpsbot.cli import Cloud, build_watcher, routes_for
from kpsbot.slack.query import parse_command
from kpsbot.slack.subscriptions import SubscriptionCommands
from kpsbot.store import Store
from kpsbot.watch.plan import Route

PROJECT_NAME = "cn-north-4"  # tests/slack/conftest.py: KPS_REGION=cn-north-4, KPS_PROJECT_ID=p1
FIXED = "C0FIXED"
ADMIN = "UADMIN"


def posts(bot, channel: str | None = None) -> list[dict]:
    """chat.postMessage arguments, in order (to `channel` only, when given)."""
    calls = bot.fake.calls_to("chat.postMessage")
    return [c["args"] for c in calls if channel is None or c["args"]["channel"] == channel]


def shown(message: dict) -> str:
    """Everything a reader sees of a message (fallback text and every text in its blocks), one a line."""
    found = [message["text"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(message["blocks"])
    return "\n".join(found)


def is_notice(body: dict) -> bool:
    return body.get("response_type") == "ephemeral" and body.get("replace_original") is False


def stored(bot, channel: str | None = None) -> list[tuple]:
    """The channel's subscriptions as (channel, projects, actions, failures_only, text, created_by)."""
    return [
        (s.channel, s.projects, s.actions, s.failures_only, s.text, s.created_by)
        for s in bot.store.subscriptions(channel)
    ]


def subscribe(bot, text: str = "", *, user: str = "U1", channel: str = "C1") -> dict:
    """`/kps-tasks subscribe text` that succeeds: returns the confirmation posted in the channel."""
    before, active = len(posts(bot)), len(bot.store.subscriptions())
    ack = bot.command(f"subscribe {text}".strip(), user=user, channel=channel)
    assert ack.status == 200 and ack.body == ""  # an empty ack; the answer is the channel post
    confirmation = bot.fake.wait_for_calls("chat.postMessage", before + 1)[before]["args"]
    # The subscription counts once its confirmation is in the channel, just after the post.
    wait_until(lambda: len(bot.store.subscriptions()) > active, 10, "the subscription to be active")
    return confirmation


def answer(bot, text: str, *, user: str = "U1", channel: str = "C1", name: str) -> dict:
    """The ephemeral response_url answer to `/kps-tasks text`."""
    ack = bot.command(text, user=user, channel=channel, name=name)
    assert ack.status == 200 and ack.body == ""
    body = bot.reply(name)
    assert is_notice(body), body
    assert_valid_message(body)
    return body


# -- subscribe ---------------------------------------------------------------------------


def test_subscribe_posts_the_confirmation_in_the_channel_and_stores_the_subscription(start_bot):
    bot = start_bot(tasks=0)
    confirmation = subscribe(bot, user="U1", channel="C1")
    assert confirmation["channel"] == "C1"
    assert "thread_ts" not in confirmation
    assert_valid_message(confirmation)
    assert "<@U1> subscribed this channel to KPS key-pair tasks: *every project · every action*" in shown(
        confirmation
    )
    assert not bot.fake.calls_to("chat.postEphemeral")
    assert stored(bot) == [("C1", (), (), False, "", "U1")]


@pytest.mark.parametrize(
    ("text", "projects", "actions", "failures", "filter_text", "described"),
    [
        (
            f"{PROJECT_NAME} reset replace failures db-",
            (PROJECT_NAME,),
            ("RESET", "REPLACE"),
            True,
            "db-",
            f'{PROJECT_NAME} · reset, replace · failures only · matching "db-"',
        ),
        ("failed", (), (), True, "", "every project · every action · failures only"),
        ("unbind web- UNBIND", (), ("UNBIND",), False, "web-", 'every project · unbind · matching "web-"'),
        ("", (), (), False, "", "every project · every action"),
    ],
)
def test_the_subscribe_grammar_through_the_app(
    start_bot, text, projects, actions, failures, filter_text, described
):
    bot = start_bot(tasks=0)
    confirmation = subscribe(bot, text)
    assert f"*{described}*" in shown(confirmation)
    assert stored(bot, "C1") == [("C1", projects, actions, failures, filter_text, "U1")]


def test_a_failures_only_confirmation_does_not_promise_starts(start_bot):
    everything = shown(subscribe(start_bot(tasks=0), "reset"))
    assert "starts, finishes and stuck alerts from the next poll" in everything
    failures = shown(subscribe(start_bot(tasks=0), "failures"))
    assert "failed finishes and stuck alerts from the next poll" in failures
    assert "starts" not in failures


@pytest.mark.parametrize("error", ["not_in_channel", "channel_not_found", "is_archived"])
def test_a_channel_the_bot_cannot_post_in_stores_nothing_and_says_invite_first(start_bot, error):
    bot = start_bot(tasks=0)
    bot.fake.fail_next(1, error=error, method="chat.postMessage")
    body = answer(bot, "subscribe reset", channel="G1", name="s")
    assert "`/invite @kpsbot`" in body["text"] and error in body["text"]
    assert "Nothing was stored" in body["text"]
    assert [c["args"]["channel"] for c in bot.fake.failed_calls] == ["G1"]
    assert stored(bot) == []
    assert "no KPS subscriptions" in shown(answer(bot, "subscriptions", channel="G1", name="list"))


def test_slack_trouble_with_the_confirmation_stores_nothing_and_says_try_again(start_bot):
    bot = start_bot(tasks=0)
    bot.fake.fail_next(1, error="internal_error", method="chat.postMessage")
    body = answer(bot, "subscribe", name="s")
    assert "nothing was stored" in body["text"] and "Try again" in body["text"]
    assert "/invite" not in body["text"]
    assert stored(bot) == []


def test_subscribing_outside_a_channel_is_explained(start_bot):
    bot = start_bot(tasks=0)
    body = answer(bot, "subscribe", channel="", name="s")
    assert "Subscriptions belong to a channel" in body["text"]
    assert stored(bot) == [] and posts(bot) == []


def test_user_text_in_a_filter_cannot_ping_anyone(start_bot):
    bot = start_bot(tasks=0)
    confirmation = subscribe(bot, "<!channel> & <@U2> <https://x.example|y>")
    assert_valid_message(confirmation)
    text = shown(confirmation)
    for raw in ("<!channel>", "<@U2>", "<https://", " & "):
        assert raw not in text
    assert "&lt;!channel&gt; &amp; &lt;@U2&gt;" in confirmation["text"]
    assert "&lt;!channel&gt; &amp; &lt;@U2&gt;" in shown({"text": "", "blocks": confirmation["blocks"]})
    listing = answer(bot, "subscriptions", name="list")
    assert "<!channel>" not in shown(listing) and "&lt;!channel&gt; &amp;" in shown(listing)


@pytest.mark.parametrize("text", ["subscribe", "subscriptions", "unsubscribe all"])
def test_a_database_failure_gets_a_short_error_not_silence(start_bot, text):
    bot = start_bot(tasks=0)
    bot.store.close()  # every store call now raises sqlite3.ProgrammingError
    body = answer(bot, text, name="broken")
    assert "Something went wrong inside kpsbot" in body["text"]
    assert posts(bot) == []


def test_a_confirmation_that_fails_unexpectedly_leaves_nothing_stored():
    store = Store(":memory:")
    respond = Mock()
    commands = SubscriptionCommands(store, Mock(side_effect=RuntimeError("boom")))
    commands.answer(respond, parse_command("subscribe reset"), user="U1", channel="C1")
    assert store.subscriptions() == []
    [reply] = respond.call_args_list
    assert "Something went wrong inside kpsbot" in reply.kwargs["text"]
    assert reply.kwargs["response_type"] == "ephemeral"


# -- subscriptions ------------------------------------------------------------------------


def test_subscriptions_lists_this_channels_subscriptions_with_their_numbers(start_bot):
    bot = start_bot(tasks=0)
    subscribe(bot, "reset", channel="C1")
    subscribe(bot, "unbind elsewhere", channel="C2")
    subscribe(bot, f"{PROJECT_NAME} failures", channel="C1")
    first, other, third = (s.id for s in bot.store.subscriptions())
    body = answer(bot, "subscriptions", channel="C1", name="list")
    text = shown(body)
    assert f"*{first}* — every project · reset" in text
    assert f"*{third}* — {PROJECT_NAME} · every action · failures only" in text
    assert "elsewhere" not in text and f"*{other}*" not in text
    assert "unsubscribe &lt;number&gt;" in text or "unsubscribe <number>" in text


def test_subscriptions_of_a_channel_with_none_says_how_to_add_one(start_bot):
    bot = start_bot(tasks=0)
    subscribe(bot, channel="C2")
    body = answer(bot, "subscriptions", channel="C1", name="list")
    assert "This channel has no KPS subscriptions. `/kps-tasks subscribe` adds one." in shown(body)


def test_the_kpsbot_channel_line_appears_in_that_channel_and_cannot_be_removed(start_bot):
    bot = start_bot(tasks=0, env={"KPSBOT_CHANNEL": FIXED})
    there = shown(answer(bot, "subscriptions", channel=FIXED, name="fixed"))
    assert "*everything* — set by KPSBOT_CHANNEL" in there and "cannot be removed" in there
    elsewhere = shown(answer(bot, "subscriptions", channel="C1", name="other"))
    assert "KPSBOT_CHANNEL" not in elsewhere
    refusal = answer(bot, "unsubscribe 1", channel=FIXED, name="u")["text"]
    assert "no subscription 1" in refusal and "KPSBOT_CHANNEL cannot be removed" in refusal
    refusal = answer(bot, "unsubscribe all", channel=FIXED, name="all")["text"]
    assert "no subscriptions to remove" in refusal and "KPSBOT_CHANNEL cannot be removed" in refusal
    subscribe(bot, "reset", channel=FIXED)
    bot.command("unsubscribe all", channel=FIXED)
    notice = bot.fake.wait_for_calls("chat.postMessage", 2)[1]["args"]
    assert notice["channel"] == FIXED and "removed this channel's KPS subscription" in shown(notice)
    assert "KPSBOT_CHANNEL cannot be removed here" in shown(notice)
    assert stored(bot) == []


def test_the_listing_warns_when_kpsbot_could_not_post_in_the_channel_lately(start_bot):
    bot = start_bot(tasks=0)
    subscribe(bot, channel="C1")
    bot.store.channel_failing("C1", "not_in_channel", 1.0)  # what the outbox records on such a refusal
    text = shown(answer(bot, "subscriptions", channel="C1", name="list"))
    assert "could not post here lately (not_in_channel)" in text and "`/invite @kpsbot`" in text


# -- unsubscribe --------------------------------------------------------------------------


def test_unsubscribe_a_number_removes_that_one_and_says_so_in_the_channel(start_bot):
    bot = start_bot(tasks=0)
    subscribe(bot, "reset")
    subscribe(bot, "unbind")
    first, second = (s.id for s in bot.store.subscriptions())
    before = len(posts(bot))
    ack = bot.command(f"unsubscribe {first}", user="U1", channel="C1")
    assert ack.status == 200 and ack.body == ""
    notice = bot.fake.wait_for_calls("chat.postMessage", before + 1)[before]["args"]
    assert notice["channel"] == "C1"
    assert_valid_message(notice)
    assert f"<@U1> removed this channel's KPS subscription {first}" in shown(notice)
    assert [s.id for s in bot.store.subscriptions()] == [second]


def test_unsubscribe_all_removes_only_this_channels(start_bot):
    bot = start_bot(tasks=0)
    subscribe(bot, "reset", channel="C1")
    subscribe(bot, "replace", channel="C2")
    subscribe(bot, "unbind", channel="C1")
    ones = [s.id for s in bot.store.subscriptions("C1")]
    before = len(posts(bot))
    bot.command("unsubscribe all", channel="C1")
    notice = bot.fake.wait_for_calls("chat.postMessage", before + 1)[before]["args"]
    assert notice["channel"] == "C1"
    assert f"subscription {ones[0]}, {ones[1]}" in shown(notice)
    assert stored(bot) == [("C2", (), ("REPLACE",), False, "", "U1")]


def test_unsubscribe_all_in_a_channel_with_none_says_so(start_bot):
    bot = start_bot(tasks=0)
    subscribe(bot, channel="C2")
    body = answer(bot, "unsubscribe all", channel="C1", name="u")
    assert "no subscriptions to remove" in body["text"]
    assert len(stored(bot, "C2")) == 1


def test_unsubscribe_an_unknown_number_or_another_channels_is_a_clear_error(start_bot):
    bot = start_bot(tasks=0)
    subscribe(bot, channel="C2")
    [theirs] = bot.store.subscriptions("C2")
    for number in (theirs.id, 999):
        body = answer(bot, f"unsubscribe {number}", channel="C1", name=f"u{number}")
        assert f"This channel has no subscription {number}" in body["text"]
        assert "`/kps-tasks subscriptions` lists them" in body["text"]
    assert [s.id for s in bot.store.subscriptions()] == [theirs.id]
    assert [p["channel"] for p in posts(bot)] == ["C2"]  # only the confirmation


@pytest.mark.parametrize("text", ["unsubscribe", "unsubscribe two", "unsubscribe 1 2"])
def test_unsubscribe_without_a_number_is_a_usage_hint_in_the_ack(start_bot, text):
    bot = start_bot(tasks=0)
    subscribe(bot)
    ack = bot.command(text, name="u")
    assert ack.status == 200 and ack.body["response_type"] == "ephemeral"
    assert_valid_message(ack.body)
    assert "`unsubscribe` needs a number from `/kps-tasks subscriptions`, or `all`" in shown(ack.body)
    answer(bot, "subscriptions", name="after")  # a later command answered: the first one made no job
    assert not [r for r in bot.fake.responses if r["name"] == "u"]
    assert len(stored(bot)) == 1


# -- who may change subscriptions ---------------------------------------------------------------


def test_with_admin_users_set_others_may_list_but_not_change(start_bot):
    bot = start_bot(tasks=0, env={"KPSBOT_ADMIN_USERS": f"{ADMIN},UOTHER"})
    refused = answer(bot, "subscribe reset", user="U1", name="sub")
    assert "Only the people in KPSBOT_ADMIN_USERS" in refused["text"]
    assert stored(bot) == [] and posts(bot) == []

    confirmation = subscribe(bot, "reset", user=ADMIN)
    assert f"<@{ADMIN}> subscribed" in shown(confirmation)
    [subscription] = bot.store.subscriptions()
    assert subscription.created_by == ADMIN

    for n, text in enumerate((f"unsubscribe {subscription.id}", "unsubscribe all")):
        refused = answer(bot, text, user="U1", name=f"un{n}")
        assert "Only the people in KPSBOT_ADMIN_USERS" in refused["text"]
    assert [s.id for s in bot.store.subscriptions()] == [subscription.id]

    listing = answer(bot, "subscriptions", user="U1", name="list")
    assert f"*{subscription.id}* — every project · reset" in shown(listing)

    bot.command(f"unsubscribe {subscription.id}", user=ADMIN)
    bot.fake.wait_for_calls("chat.postMessage", 2)
    assert stored(bot) == []


@pytest.mark.parametrize(
    ("env", "insider"),
    [
        ({"KPSBOT_ALLOWED_USERS": "U2"}, ("U2", "C1")),
        ({"KPSBOT_ALLOWED_CHANNELS": "C2"}, (ADMIN, "C2")),
        ({"KPSBOT_ALLOWED_USERS": ADMIN, "KPSBOT_ALLOWED_CHANNELS": "C2"}, (ADMIN, "C2")),
    ],
)
def test_the_allow_lists_apply_before_the_admin_list(start_bot, env, insider):
    """An admin outside the allow-lists (ADMIN in C1) is refused every subscription command."""
    bot = start_bot(tasks=0, env={"KPSBOT_ADMIN_USERS": ADMIN, **env})
    bot.store.add_subscription("C1", actions=("RESET",), created_by=ADMIN)
    for n, text in enumerate(("subscribe", "subscriptions", "unsubscribe all", "unsubscribe 1")):
        ack = bot.command(text, user=ADMIN, channel="C1", name=f"outsider{n}")
        assert ack.status == 200 and ack.body["response_type"] == "ephemeral"
        assert "limited to certain channels and people" in ack.body["text"]
    user, channel = insider  # answered: the refused commands made no job before it
    answer(bot, "subscriptions", user=user, channel=channel, name="insider")
    assert not [r for r in bot.fake.responses if r["name"] != "insider"]
    assert posts(bot) == []
    assert len(stored(bot)) == 1


def test_help_mentions_the_subscription_commands(start_bot):
    bot = start_bot(tasks=0)
    ack = bot.command("help")
    assert ack.status == 200 and ack.body["response_type"] == "ephemeral"
    assert_valid_message(ack.body)
    text = shown(ack.body)
    for command in ("/kps-tasks subscribe`", "/kps-tasks subscriptions`", "/kps-tasks unsubscribe 2`"):
        assert command in text, command
    assert "unsubscribe all" in text


# -- the watcher uses them --------------------------------------------------------------------


def test_a_subscription_made_in_slack_is_a_route_of_the_watchers_next_poll(start_bot, tmp_path):
    db = str(tmp_path / "kpsbot.db")
    bot = start_bot(tasks=0, db_path=db)
    subscribe(bot, f"{PROJECT_NAME} reset replace failures DB-", channel="C1")
    [made] = bot.store.subscriptions()
    with Store(db) as watcher_store:  # the watcher's own connection, as in another process
        routes = routes_for(bot.settings, watcher_store, console=False)
        assert list(routes()) == [
            Route("C1", (PROJECT_NAME,), ("RESET", "REPLACE"), True, "db-", made.created_at)
        ]
        bot.command(f"unsubscribe {made.id}", channel="C1")
        bot.fake.wait_for_calls("chat.postMessage", 2)
        assert list(routes()) == []


def test_the_watchers_next_poll_posts_what_a_new_subscription_lets_through(start_bot, tmp_path):
    db = str(tmp_path / "kpsbot.db")
    bot = start_bot(tasks=0, db_path=db)
    with Store(db) as watcher_store:
        cloud = Cloud(bot.settings, timeout=(1, 6), retries=0)
        directory = cloud.directory(watcher_store)
        directory.resolve(strict=True)
        watcher = build_watcher(bot.settings, watcher_store, cloud, directory)
        assert watcher.run_cycle().ok  # the baseline: nothing is subscribed yet, nothing posted
        assert posts(bot) == []

        subscribe(bot, "reset web-", channel="C1")
        bot.sim.add_task(operate_type="RUNNING_RESET", server_name="web-01")
        bot.sim.add_task(operate_type="RUNNING_UNBIND", server_name="web-02")
        bot.sim.add_task(operate_type="RUNNING_RESET", server_name="db-03")
        assert watcher.run_cycle().ok
        confirmation, *started = posts(bot, "C1")
        assert "subscribed this channel" in shown(confirmation)
        assert len(started) == 1, [s["text"] for s in started]
        assert "web-01" in shown(started[0]) and "web-02" not in shown(started[0])
        assert posts(bot) == [confirmation, *started]
