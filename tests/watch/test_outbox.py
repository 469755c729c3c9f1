"""Delivery pacing: Slack's one message a second per channel, and a queue that never holds back a poll."""

from __future__ import annotations

import json
import sqlite3
import time

from kpsbot.store import Store
from kpsbot.watch.loop import WatcherLoop
from kpsbot.watch.outbox import Pacer
from kpsbot.watch.plan import Route

from .conftest import CHANNEL, Clock, build_watcher, slack_sender


def starts(slack) -> list[str]:
    return [
        c["args"]["text"] for c in slack.calls_to("chat.postMessage") if " started on " in c["args"]["text"]
    ]


def test_the_pacer_lets_a_burst_through_then_one_message_per_interval_per_channel():
    clock = Clock(0.0)
    pacer = Pacer(1.0, burst=3, clock=clock)
    assert [pacer.delay("C1") for _ in range(5)] == [0.0, 0.0, 0.0, 1.0, 2.0]
    assert pacer.delay("C2") == 0.0  # another channel has tokens of its own
    clock.advance(10)
    assert [pacer.delay("C1") for _ in range(4)] == [0.0, 0.0, 0.0, 1.0]  # refilled up to the burst only
    assert Pacer(0).delay("C1") == 0.0  # KPSBOT_PACE_SECONDS=0: no pacing


def test_a_token_given_back_is_the_next_send_s():
    clock = Clock(0.0)
    pacer = Pacer(1.0, burst=1, clock=clock)
    assert pacer.delay("C1") == 0.0
    assert pacer.delay("C1") == 1.0
    pacer.give_back("C1")  # that send never happened
    assert pacer.delay("C1") == 1.0


def test_delivery_past_its_deadline_leaves_the_rest_queued_in_order(sim, slack, make_watcher, db_path):
    watcher = make_watcher(burst=100)
    watcher.outbox.pacer = Pacer(0.2, burst=1)
    watcher.run_cycle()  # the baseline message takes the channel's one token
    names = [f"web-{n:02d}" for n in range(8)]
    for name in names:
        sim.add_task(server_name=name)
    report = watcher.run_cycle(period=0.3)  # one message each 0.2 s: no time for eight
    assert report.delivery.pending > 0 and len(starts(slack)) < len(names)
    report = watcher.run_cycle()
    assert report.delivery.pending == 0
    with sqlite3.connect(db_path) as conn:
        queued = [
            json.loads(payload)["task"]["server_name"]
            for (payload,) in conn.execute("select payload from outbox where kind = 'started' order by id")
        ]
    conn.close()
    assert sorted(queued) == names
    assert starts(slack) == [f"Reset started on {name}" for name in queued]  # once each, in queue order


def test_every_channel_gets_its_share_of_a_bounded_delivery(sim, slack, kps, db_path):
    channels = [f"C{n:02d}" for n in range(12)]  # more channels than a few workers
    with Store(db_path) as store:
        watcher = build_watcher(
            kps, store, senders={"*": slack_sender(slack)}, routes=[Route(c) for c in channels], burst=100
        )
        watcher.outbox.pacer = Pacer(0.2, burst=1)
        watcher.run_cycle()  # the baselines take each channel's token
        for n in range(8):
            sim.add_task(server_name=f"web-{n:02d}")
        report = watcher.run_cycle(period=1.5)  # about 7 messages a channel fit, if all are paced at once
    assert report.delivery.pending > 0
    sent = {c: 0 for c in channels}
    for call in slack.calls_to("chat.postMessage"):
        if " started on " in call["args"]["text"]:
            sent[call["args"]["channel"]] += 1
    assert min(sent.values()) >= 3, sent  # a channel that waited for a worker got one or two


def test_the_loop_keeps_polling_while_a_long_queue_drains(sim, slack, kps, db_path):
    with Store(db_path) as store:
        watcher = build_watcher(
            kps, store, senders={"*": slack_sender(slack)}, routes=[Route(CHANNEL)], burst=100
        )
        watcher.outbox.pacer = Pacer(0.25, burst=1)
        watcher.run_cycle()  # the baseline
        for n in range(12):
            sim.add_task(server_name=f"web-{n:02d}")
        loop = WatcherLoop(watcher, store, interval=0.3, jitter=0).start()
        try:
            deadline = time.monotonic() + 60
            while len(starts(slack)) < 12 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            loop.stop()
    assert len(starts(slack)) == 12 and len(set(starts(slack))) == 12
    last = max(c["at"] for c in slack.calls_to("chat.postMessage"))
    with sqlite3.connect(db_path) as conn:
        polls = [at for (at,) in conn.execute("select at from polls where ok = 1 order by at")]
    conn.close()
    # Twelve paced messages take about 3 s; a delivery that held the loop until the queue was empty
    # would leave one poll in that time (the one that found the tasks).
    assert len([at for at in polls[1:] if at < last]) >= 4, polls
