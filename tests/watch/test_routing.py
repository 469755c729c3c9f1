"""Notifications routed to channels by their subscriptions, per-channel delivery, stuck alerts and
several projects — against the KPS simulator and the fake Slack, as channel members would see them."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from support.fake_slack import assert_valid_message

from kpsbot.kps.auth import AkSkAuth
from kpsbot.kps.client import KpsClient
from kpsbot.projects import ProjectDirectory
from kpsbot.simulator import Simulator, SimulatorServer
from kpsbot.status import health_report
from kpsbot.store import Store
from kpsbot.watch.cycle import WatchedProject, Watcher
from kpsbot.watch.outbox import Outbox, Pacer
from kpsbot.watch.plan import ProjectInfo, Route

from .conftest import key, slack_sender

PROD, DEV = "cn-north-4_prod", "ap-southeast-1_dev"
EVERYTHING, RESETS, FAILURES, DB, PROD_ONLY = "C0ALL", "C0RESETS", "C0FAIL", "C0DB", "C0PROD"


@pytest.fixture
def account(clock):
    """Two projects in two regions behind one simulator, and a KPS client for each."""
    sims = [
        Simulator(project_id=f"id-{name}", name=name, ak="AK", sk="SK", seed=n)
        for n, name in enumerate((PROD, DEV))
    ]
    with SimulatorServer(sims) as server:
        clients = {
            s.name: KpsClient(f"{server.url}/{s.region}", s.project_id, AkSkAuth("AK", "SK"), retries=0)
            for s in sims
        }
        yield {s.name: s for s in sims}, clients


def routes() -> list[Route]:
    return [
        Route(EVERYTHING),
        Route(RESETS, actions=("RESET",)),
        Route(FAILURES, failures_only=True),
        Route(DB, text="db-"),
        Route(DB, actions=("RESET",)),  # a second subscription of the same channel: overlaps the first
        Route(PROD_ONLY, projects=(PROD,)),
    ]


@pytest.fixture
def make(account, slack, clock, db_path):
    sims, clients = account
    stores = []

    def build(routes_=None, *, burst: int = 5, stuck_minutes: int = 0, outage_polls: int = 3) -> Watcher:
        store = Store(db_path)
        stores.append(store)
        projects = [
            WatchedProject(ProjectInfo(s.project_id, s.name, s.region, named=True), clients[s.name])
            for s in sims.values()
        ]
        outbox = Outbox(store, {"*": slack_sender(slack)}, clock=clock, pacer=Pacer(0))
        return Watcher(
            projects,
            store,
            outbox,
            routes=routes() if routes_ is None else routes_,
            burst=burst,
            stuck_minutes=stuck_minutes,
            outage_polls=outage_polls,
            clock=clock,
        )

    yield build
    for store in stores:
        store.close()


def posts(slack, channel: str) -> list[dict]:
    return [c for c in slack.calls_to("chat.postMessage") if c["args"]["channel"] == channel]


def texts(slack, channel: str) -> list[str]:
    return [c["args"]["text"] + json.dumps(c["args"]["blocks"]) for c in posts(slack, channel)]


def starts(slack, channel: str) -> list[str]:
    return [c["args"]["text"] for c in posts(slack, channel) if " started on " in c["args"]["text"]]


def assert_all_valid(slack) -> None:
    for call in slack.calls:
        if call["method"] in ("chat.postMessage", "chat.update"):
            assert_valid_message({"text": call["args"]["text"], "blocks": call["args"]["blocks"]})


def test_each_channel_gets_what_its_subscriptions_let_through_once(account, slack, make):
    sims, _ = account
    watcher = make()
    watcher.run_cycle()  # baselines: one summary per project, to every channel of that project
    assert len(posts(slack, EVERYTHING)) == 2 and len(posts(slack, PROD_ONLY)) == 1
    reset = sims[PROD].add_task(operate_type="RUNNING_RESET", server_name="db-01")
    sims[PROD].add_task(operate_type="RUNNING_REPLACE", server_name="web-01")
    sims[DEV].add_task(operate_type="RUNNING_UNBIND", server_name="db-02")
    watcher.run_cycle()
    assert sorted(starts(slack, EVERYTHING)) == sorted(
        [
            f"Reset started on db-01 in {PROD}",
            f"Replace started on web-01 in {PROD}",
            f"Unbind started on db-02 in {DEV}",
        ]
    )
    assert starts(slack, RESETS) == [f"Reset started on db-01 in {PROD}"]
    assert starts(slack, FAILURES) == []
    # db-01 matches both of C0DB's subscriptions (text and action): posted there once.
    assert sorted(starts(slack, DB)) == [
        f"Reset started on db-01 in {PROD}",
        f"Unbind started on db-02 in {DEV}",
    ]
    assert sorted(starts(slack, PROD_ONLY)) == [
        f"Replace started on web-01 in {PROD}",
        f"Reset started on db-01 in {PROD}",
    ]

    sims[PROD].finish_task(reset["task_id"], success=False, error_code="KPS.2003", error_msg="stopped")
    watcher.run_cycle()
    # Each channel has its own start message, thread and edit.
    for channel in (EVERYTHING, RESETS, DB, PROD_ONLY):
        ts = watcher.store.thread(f"id-{PROD}", *key(reset), channel)
        replies = [c for c in posts(slack, channel) if c["args"].get("thread_ts") == ts]
        assert len(replies) == 1 and "KPS.2003" in json.dumps(replies[0]["args"]), channel
        edits = [c for c in slack.calls_to("chat.update") if c["args"]["channel"] == channel]
        assert [e["args"]["ts"] for e in edits] == [ts], channel
    # The failures-only channel never saw the start: the failure stands alone there, naming its project.
    [failure] = posts(slack, FAILURES)
    assert "thread_ts" not in failure["args"] and "failed" in failure["args"]["text"]
    assert PROD in failure["args"]["text"]
    assert "started before this channel subscribed" not in json.dumps(failure["args"]["blocks"])
    assert_all_valid(slack)


def test_a_burst_is_summed_up_per_channel_with_only_what_the_channel_wants(account, slack, make):
    sims, _ = account
    watcher = make(burst=3)
    watcher.run_cycle()
    for n in range(20):
        sims[PROD].add_task(operate_type="RUNNING_REPLACE", server_name=f"web-{n}")
    for n in range(4):
        sims[PROD].add_task(operate_type="RUNNING_RESET", server_name=f"api-{n}")
    watcher.run_cycle()
    [everything] = [t for t in texts(slack, EVERYTHING) if "key-pair tasks started" in t]
    assert "24 key-pair tasks started" in everything
    [resets] = [t for t in texts(slack, RESETS) if "started" in t]
    assert "4 key-pair tasks started" in resets and "Replace" not in resets.split("Use `/kps-tasks`")[0]
    assert starts(slack, RESETS) == []  # one summary, no per-task messages
    assert_all_valid(slack)


def test_outage_and_recovery_go_to_every_channel_of_the_project_whatever_its_filters(account, slack, make):
    sims, _ = account
    watcher = make(outage_polls=2)
    watcher.run_cycle()
    before = {c: len(posts(slack, c)) for c in (EVERYTHING, RESETS, FAILURES, DB, PROD_ONLY)}
    for _ in range(2):
        sims[DEV].fail_next(1, status=503)
        report = watcher.run_cycle()
        assert [p.ok for p in report.projects] == [True, False]  # the other project is not disturbed
    watcher.run_cycle()
    for channel in (EVERYTHING, RESETS, FAILURES, DB):
        new = texts(slack, channel)[before[channel] :]
        assert [("unreachable" in t, "reachable again" in t) for t in new] == [(True, False), (False, True)]
        assert all(DEV in t for t in new)
    assert len(posts(slack, PROD_ONLY)) == before[PROD_ONLY]  # not subscribed to that project


def test_a_channel_that_fails_for_good_never_holds_back_another(account, slack, make, clock):
    sims, _ = account
    watcher = make([Route(EVERYTHING), Route(RESETS)])
    watcher.run_cycle()
    slack.fail_next(2, error="not_in_channel", channel=EVERYTHING)  # the bot was removed from C0ALL
    sims[PROD].add_task(operate_type="RUNNING_RESET", server_name="web-1")
    sims[PROD].add_task(operate_type="RUNNING_RESET", server_name="web-2")
    report = watcher.run_cycle()
    # The failing channel is marked and its entries dropped; the other channel got both starts.
    assert len(starts(slack, RESETS)) == 2 and report.pending == 0 and starts(slack, EVERYTHING) == []
    assert watcher.store.failing_channels() == {EVERYTHING: "not_in_channel"}
    assert healthz(watcher.store)["failing_channels"] == {EVERYTHING: "not_in_channel"}
    # The subscription is kept: once the bot is invited again, the channel receives and is well again.
    sims[PROD].add_task(operate_type="RUNNING_RESET", server_name="web-3")
    watcher.run_cycle()
    assert starts(slack, EVERYTHING) == [f"Reset started on web-3 in {PROD}"]
    assert watcher.store.failing_channels() == {} and healthz(watcher.store)["failing_channels"] == {}


def healthz(store) -> dict:
    """`/healthz` as kpsbot run builds it from this database (no projects of its own)."""
    directory = ProjectDirectory((), store=store, iam=None)
    return health_report(
        version="t", mode="http", leader=True, configured=(), directory=directory, store=store
    )


def test_a_rate_limited_channel_waits_alone(account, slack, make, clock):
    sims, _ = account
    watcher = make([Route(EVERYTHING), Route(RESETS, actions=("RESET",))])
    watcher.run_cycle()
    slack.fail_next(1, status=429, retry_after=30, channel=RESETS)
    sims[PROD].add_task(operate_type="RUNNING_RESET", server_name="web-1")
    report = watcher.run_cycle()
    assert report.pending == 1  # one channel paused for its Retry-After, the other delivered
    assert len(starts(slack, EVERYTHING)) == 1 and starts(slack, RESETS) == []
    assert watcher.store.channel_states()[RESETS].paused_until == pytest.approx(clock() + 30)
    watcher.run_cycle()
    assert starts(slack, RESETS) == []  # still inside its Retry-After
    clock.advance(31)
    watcher.run_cycle()
    assert len(starts(slack, RESETS)) == 1 and len(starts(slack, EVERYTHING)) == 1


def test_a_subscription_added_later_counts_from_the_next_poll_and_finishes_standalone(
    account, slack, make, db_path, clock
):
    sims, _ = account
    mine = [Route(EVERYTHING)]
    watcher = make(lambda: mine)
    watcher.run_cycle()
    task = sims[PROD].add_task(operate_type="RUNNING_REPLACE", server_name="web-old")
    watcher.run_cycle()
    clock.advance(10)
    mine.append(Route(RESETS, since=clock()))  # subscribed after the task started (another process)
    new = sims[PROD].add_task(operate_type="RUNNING_UNBIND", server_name="web-new")
    watcher.run_cycle()
    assert starts(slack, RESETS) == [f"Unbind started on web-new in {PROD}"]
    sims[PROD].finish_task(task["task_id"], success=True)
    watcher.run_cycle()
    [standalone] = [c for c in posts(slack, RESETS) if "web-old" in c["args"]["text"]]
    assert "thread_ts" not in standalone["args"]
    assert "started before this channel subscribed" in json.dumps(standalone["args"]["blocks"])
    del new


def test_a_restart_between_polls_repeats_nothing_in_any_channel(account, slack, make):
    sims, _ = account
    first = make()
    first.run_cycle()
    task = sims[PROD].add_task(operate_type="RUNNING_RESET", server_name="db-9")
    first.run_cycle()
    first.store.close()
    second = make()  # a new process on the same database
    second.run_cycle()
    sims[PROD].finish_task(task["task_id"], success=True)
    second.run_cycle()
    second.run_cycle()
    per_channel = Counter(
        c["args"]["channel"] for c in slack.calls_to("chat.postMessage") if "db-9" in c["args"]["text"]
    )
    assert per_channel == {EVERYTHING: 1, RESETS: 1, DB: 1, PROD_ONLY: 1}  # the starts, once each
    replies = Counter(
        c["args"]["channel"] for c in slack.calls_to("chat.postMessage") if c["args"].get("thread_ts")
    )
    assert replies == {EVERYTHING: 1, RESETS: 1, DB: 1, PROD_ONLY: 1}


def test_a_project_seen_for_the_first_time_gets_its_own_baseline_and_no_starts(
    account, slack, make, db_path, clock
):
    sims, clients = account
    sims[DEV].add_task(server_name="dev-old-1")
    sims[DEV].add_task(server_name="dev-old-2")
    prod = sims[PROD]
    store = Store(db_path)
    only_prod = Watcher(
        [WatchedProject(ProjectInfo(prod.project_id, PROD, prod.region), clients[PROD])],
        store,
        Outbox(store, {"*": slack_sender(slack)}, clock=clock, pacer=Pacer(0)),
        routes=[Route(EVERYTHING)],
        stuck_minutes=0,
        clock=clock,
    )
    only_prod.run_cycle()
    only_prod.run_cycle()
    store.close()
    both = make([Route(EVERYTHING)])  # DEV added to KPS_PROJECTS later
    report = both.run_cycle()
    assert [(p.project, p.baseline) for p in report.projects] == [(PROD, False), (DEV, True)]
    assert not [t for t in starts(slack, EVERYTHING) if "dev-old" in t]
    assert any("2 tasks already running" in t and DEV in t for t in texts(slack, EVERYTHING))


# -- stuck alerts -------------------------------------------------------------------------------------


def test_a_stuck_task_is_alerted_once_in_its_thread_and_shown_in_the_channel(account, slack, make, clock):
    sims, _ = account
    watcher = make([Route(EVERYTHING), Route(FAILURES, failures_only=True)], stuck_minutes=30)
    watcher.run_cycle()
    task = sims[PROD].add_task(server_name="web-slow", task_time_ms=int(clock() * 1000))
    watcher.run_cycle()
    clock.advance(29 * 60)
    watcher.run_cycle()
    assert not [c for c in slack.calls_to("chat.postMessage") if "still running" in c["args"]["text"]]
    clock.advance(2 * 60)
    watcher.run_cycle()
    ts = watcher.store.thread(f"id-{PROD}", *key(task), EVERYTHING)
    [alert] = [c for c in posts(slack, EVERYTHING) if "still running" in c["args"]["text"]]
    assert alert["args"]["thread_ts"] == ts and alert["args"]["reply_broadcast"] is True
    assert "31m" in alert["args"]["text"]
    # The failures-only channel never saw the start: a message of its own.
    [standalone] = [c for c in posts(slack, FAILURES) if "still running" in c["args"]["text"]]
    assert "thread_ts" not in standalone["args"]
    for _ in range(3):  # once per task and channel
        clock.advance(600)
        watcher.run_cycle()
    assert len([c for c in slack.calls_to("chat.postMessage") if "still running" in c["args"]["text"]]) == 2
    sims[PROD].finish_task(task["task_id"], success=True)
    watcher.run_cycle()
    [reply] = [
        c
        for c in posts(slack, EVERYTHING)
        if c["args"].get("thread_ts") == ts and "succeeded" in c["args"]["text"]
    ]
    assert "1h 1m" in json.dumps(reply["args"]["blocks"])  # the finish says how long it ran
    assert_all_valid(slack)


def test_stuck_alerts_are_never_repeated_after_a_restart_and_baseline_tasks_alert_standalone(
    account, slack, make, clock
):
    sims, _ = account
    sims[PROD].add_task(server_name="web-old", task_time_ms=int((clock() - 3600) * 1000))
    first = make([Route(EVERYTHING)], stuck_minutes=30)
    first.run_cycle()  # the baseline
    first.run_cycle()
    [alert] = [c for c in posts(slack, EVERYTHING) if "still running" in c["args"]["text"]]
    assert "thread_ts" not in alert["args"]  # a baseline task has no start message
    first.store.close()
    second = make([Route(EVERYTHING)], stuck_minutes=30)
    second.run_cycle()
    second.run_cycle()
    assert len([c for c in posts(slack, EVERYTHING) if "still running" in c["args"]["text"]]) == 1


def test_a_slow_answer_does_not_age_a_task_past_the_threshold(account, slack, make, clock):
    """The poll's instant is when the list was asked for: a task 29.5 minutes old when KPS was
    asked is not "still running after 30 min" because the answer took a minute to come."""
    sims, clients = account
    watcher = make([Route(EVERYTHING)], stuck_minutes=30)
    watcher.run_cycle()
    sims[PROD].add_task(server_name="web-slow", task_time_ms=int(clock() * 1000))
    watcher.run_cycle()
    clock.advance(29.5 * 60)
    client = clients[PROD]
    fetch = client.running_task_records

    def slow_fetch():
        records = fetch()
        clock.advance(60)  # the answer arrives a minute after it was asked for
        return records

    client.running_task_records = slow_fetch  # type: ignore[method-assign]
    try:
        watcher.run_cycle()
    finally:
        del client.running_task_records
    assert [t for t in texts(slack, EVERYTHING) if "still running" in t] == []
    watcher.run_cycle()  # asked 30.5 minutes after its task_time: now it is stuck
    assert len([t for t in texts(slack, EVERYTHING) if "still running" in t]) == 1


def test_many_tasks_going_stuck_at_once_make_one_summary(account, slack, make, clock):
    sims, _ = account
    for n in range(12):
        sims[PROD].add_task(server_name=f"web-{n}", task_time_ms=int((clock() - 7200) * 1000))
    watcher = make([Route(EVERYTHING)], stuck_minutes=60, burst=5)
    watcher.run_cycle()
    watcher.run_cycle()
    [summary] = [t for t in texts(slack, EVERYTHING) if "still running" in t]
    assert "12 key-pair tasks still running after 60 min" in summary
    assert_all_valid(slack)
