"""Poll cycles against the KPS simulator and a fake Slack Web API, as a channel member would see them."""

from __future__ import annotations

import io
import json
import logging
import threading

from support.fake_slack import assert_valid_message

from kpsbot.kps.auth import AkSkAuth
from kpsbot.kps.client import KpsClient, KpsError
from kpsbot.kps.models import TaskRecords, TaskStatus
from kpsbot.store import Store
from kpsbot.watch.console import ConsoleSender
from kpsbot.watch.outbox import CONSOLE
from kpsbot.watch.plan import Route

from .conftest import CHANNEL, build_watcher, key, slack_sender


def posts(slack):
    return slack.calls_to("chat.postMessage")


def body(call) -> dict:
    return {"text": call["args"]["text"], "blocks": call["args"]["blocks"]}


def all_text(call) -> str:
    return call["args"]["text"] + json.dumps(call["args"].get("blocks"), ensure_ascii=False)


def assert_all_valid(slack) -> None:
    for call in slack.calls:
        if call["method"] in ("chat.postMessage", "chat.update"):
            assert_valid_message(body(call))


def test_baseline_posts_one_summary_and_no_starts(sim, slack, make_watcher):
    for i in range(3):
        sim.add_task(server_name=f"web-{i}")
    report = make_watcher().run_cycle()
    assert report.ok and report.baseline and report.tasks == 3
    [summary] = posts(slack)
    assert "Watching project" in summary["args"]["text"] and "3 tasks already running" in all_text(summary)
    assert "cn-north-4" in summary["args"]["text"]
    assert_all_valid(slack)


def test_start_is_posted_once_and_ts_kept_for_the_thread(sim, slack, make_watcher):
    watcher = make_watcher()
    watcher.run_cycle()
    task = sim.add_task(operate_type="RUNNING_REPLACE", server_name="db-01", keypair_name="prod-kp")
    report = watcher.run_cycle()
    assert (report.started, report.delivered, report.pending) == (1, 1, 0)
    start = posts(slack)[-1]
    assert "Replace started on db-01" in start["args"]["text"]
    assert task["task_id"] in all_text(start) and "prod-kp" in all_text(start)
    assert watcher.store.thread("p1", *key(task), CHANNEL) is not None
    watcher.run_cycle()
    assert len(posts(slack)) == 2  # baseline + start: nothing new on an unchanged poll
    assert_all_valid(slack)


def test_success_and_failure_reply_in_thread_and_edit_the_start(sim, slack, make_watcher):
    watcher = make_watcher()
    watcher.run_cycle()
    ok = sim.add_task(server_name="web-ok")
    bad = sim.add_task(operate_type="RUNNING_UNBIND", server_name="web-bad")
    watcher.run_cycle()
    sim.finish_task(ok["task_id"], success=True)
    sim.finish_task(
        bad["task_id"], success=False, error_code="KPS.2003", error_msg="server <web-bad> is stopped"
    )
    report = watcher.run_cycle()
    assert report.finished == 2 and report.pending == 0
    replies = [c for c in posts(slack) if c["args"].get("thread_ts")]
    assert len(replies) == 2
    for reply in replies:
        assert "reply_broadcast" not in reply["args"]
    by_thread = {r["args"]["thread_ts"]: r for r in replies}
    start_ts = {name: watcher.store.thread("p1", *key(t), CHANNEL) for name, t in (("ok", ok), ("bad", bad))}
    assert "succeeded" in all_text(by_thread[start_ts["ok"]])
    failed = all_text(by_thread[start_ts["bad"]])
    assert "failed" in failed and "KPS.2003" in failed and "server &lt;web-bad&gt; is stopped" in failed
    assert "<web-bad>" not in failed  # KPS text is escaped
    edits = {c["args"]["ts"]: c for c in slack.calls_to("chat.update")}
    assert set(edits) == set(start_ts.values())
    assert ":white_check_mark:" in all_text(edits[start_ts["ok"]])
    assert ":x:" in all_text(edits[start_ts["bad"]]) and "KPS.2003" in all_text(edits[start_ts["bad"]])
    assert all(edit["args"]["channel"] == CHANNEL for edit in edits.values())
    assert_all_valid(slack)


def test_task_of_the_baseline_finishes_as_a_standalone_message(sim, slack, make_watcher):
    task = sim.add_task(server_name="old-01")
    watcher = make_watcher()
    watcher.run_cycle()
    sim.finish_task(task["task_id"], success=True)
    watcher.run_cycle()
    last = posts(slack)[-1]
    assert "thread_ts" not in last["args"] and "old-01" in all_text(last) and "succeeded" in all_text(last)
    assert slack.calls_to("chat.update") == []


def test_hidden_but_running_task_is_not_finished(sim, slack, make_watcher):
    watcher = make_watcher()
    watcher.run_cycle()
    task = sim.add_task()
    watcher.run_cycle()
    sim.hide_task(task["task_id"])
    report = watcher.run_cycle()
    assert report.finished == 0 and len(posts(slack)) == 2
    assert task["task_id"] in watcher.store.running_snapshot("p1")
    sim.finish_task(task["task_id"], success=True)
    assert watcher.run_cycle().finished == 1


def test_removed_task_finishes_with_unknown_outcome(sim, slack, make_watcher):
    watcher = make_watcher()
    watcher.run_cycle()
    task = sim.add_task()
    watcher.run_cycle()
    sim.remove_task(task["task_id"])
    assert watcher.run_cycle().finished == 1
    assert "outcome unknown" in all_text(posts(slack)[-1])


def test_failed_poll_posts_nothing_and_next_good_poll_is_quiet(sim, slack, make_watcher):
    watcher = make_watcher()
    task = sim.add_task()
    watcher.run_cycle()
    sim.fail_next(1, status=503)
    report = watcher.run_cycle()
    assert not report.ok and "503" in report.error
    assert task["task_id"] in watcher.store.running_snapshot("p1")
    sim.fail_next(1, kind="nonjson")
    assert not watcher.run_cycle().ok
    report = watcher.run_cycle()
    assert report.ok and (report.started, report.finished) == (0, 0)
    assert len(posts(slack)) == 1  # the baseline only
    assert watcher.store.last_poll().ok


def test_slack_500_then_recovery_posts_exactly_once(sim, slack, make_watcher, clock):
    watcher = make_watcher()
    watcher.run_cycle()
    task = sim.add_task(server_name="web-500")
    slack.fail_next(3, status=500)  # outlasts the client's own retries
    report = watcher.run_cycle()
    assert (report.delivered, report.pending) == (0, 1)
    watcher.run_cycle()  # backoff not over yet: no new attempt
    assert len(slack.failed_calls) == 3
    clock.advance(60)
    report = watcher.run_cycle()
    assert (report.delivered, report.pending) == (1, 0)
    starts = [c for c in posts(slack) if task["task_id"] in all_text(c)]
    assert len(starts) == 1
    clock.advance(3600)
    watcher.run_cycle()
    assert len([c for c in posts(slack) if task["task_id"] in all_text(c)]) == 1


def test_slack_429_is_retried_after_retry_after(sim, slack, make_watcher, clock):
    watcher = make_watcher()
    watcher.run_cycle()
    sim.add_task(server_name="web-429")
    slack.fail_next(1, status=429, retry_after=1)
    report = watcher.run_cycle()  # the client waits Retry-After once and succeeds
    assert (report.delivered, report.pending) == (1, 0)
    slack.fail_next(5, status=429, retry_after=1)
    sim.add_task(server_name="web-429b")
    report = watcher.run_cycle()
    assert report.pending == 1
    clock.advance(120)
    slack.fail_next(0)
    for _ in range(3):
        clock.advance(600)
        watcher.run_cycle()
    texts = [c["args"]["text"] for c in posts(slack)]
    assert sum(t.endswith("web-429b") for t in texts) == 1 and sum(t.endswith("web-429") for t in texts) == 1


def test_permanent_slack_error_is_marked_failed_not_retried(sim, slack, make_watcher, clock, caplog):
    watcher = make_watcher()
    watcher.run_cycle()
    sim.add_task()
    slack.fail_next(1, error="not_in_channel")
    report = watcher.run_cycle()
    assert report.failed_deliveries == 1 and report.pending == 0
    assert "not_in_channel" in caplog.text and any(r.levelname == "ERROR" for r in caplog.records)
    assert watcher.store.last_delivery_error() == "not_in_channel"
    clock.advance(7200)
    watcher.run_cycle()
    assert len(slack.failed_calls) == 1 and len(posts(slack)) == 1


def test_thousand_starts_make_one_summary(sim, slack, make_watcher):
    watcher = make_watcher()
    watcher.run_cycle()
    kinds = ("RUNNING_RESET", "RUNNING_REPLACE", "RUNNING_UNBIND")
    for i in range(1000):
        sim.add_task(operate_type=kinds[i % 3], server_name=f"web-{i:04d}")
    report = watcher.run_cycle()
    assert report.started == 1000
    assert len(posts(slack)) <= 3
    summary = posts(slack)[-1]
    text = all_text(summary)
    assert "1,000 key-pair tasks started" in text and "…and 990 more" in text and "334 Reset" in text
    assert_all_valid(slack)


def test_many_finishes_make_one_summary_and_still_edit_start_messages(sim, slack, make_watcher):
    watcher = make_watcher(burst=3)
    watcher.run_cycle()
    tasks = [sim.add_task(server_name=f"web-{i}") for i in range(3)]
    watcher.run_cycle()  # 3 starts: one message each
    more = [sim.add_task(server_name=f"db-{i}") for i in range(2)]
    watcher.run_cycle()
    for t in tasks + more:
        sim.finish_task(t["task_id"], success=t is not tasks[0])
    report = watcher.run_cycle()
    assert report.finished == 5
    summary = posts(slack)[-1]
    assert "5 key-pair tasks finished" in all_text(summary) and "thread_ts" not in summary["args"]
    assert len(slack.calls_to("chat.update")) == 5
    assert_all_valid(slack)


def test_outage_then_recovery_one_message_each(sim, slack, make_watcher):
    watcher = make_watcher(outage_polls=3)
    watcher.run_cycle()
    for _ in range(6):
        sim.fail_next(1, status=502)
        assert not watcher.run_cycle().ok
    outage = [c for c in posts(slack) if "unreachable" in c["args"]["text"]]
    assert len(outage) == 1 and "502" in all_text(outage[0])
    watcher.run_cycle()
    watcher.run_cycle()
    recovered = [c for c in posts(slack) if "reachable again" in c["args"]["text"]]
    assert len(recovered) == 1 and len(posts(slack)) == 3
    assert_all_valid(slack)


def test_rejected_credentials_are_named(sim, slack, make_watcher):
    watcher = make_watcher(outage_polls=1)
    watcher.run_cycle()
    sim.fail_next(
        1, status=401, body={"error_code": "APIGW.0301", "error_msg": "Incorrect IAM authentication"}
    )
    watcher.run_cycle()
    assert "KPS rejected kpsbot's credentials" in posts(slack)[-1]["args"]["text"]


def test_short_outage_is_not_announced(sim, slack, make_watcher):
    watcher = make_watcher(outage_polls=3)
    watcher.run_cycle()
    sim.fail_next(2, status=500)
    watcher.run_cycle()
    watcher.run_cycle()
    watcher.run_cycle()
    assert len(posts(slack)) == 1


def test_new_store_on_same_database_repeats_nothing(sim, slack, make_watcher):
    first = make_watcher()
    first.run_cycle()
    task = sim.add_task()
    first.run_cycle()
    first.store.close()
    second = make_watcher()
    report = second.run_cycle()
    assert (report.baseline, report.started, report.delivered) == (False, 0, 0)
    sim.finish_task(task["task_id"], success=True)
    second.run_cycle()
    assert len([c for c in posts(slack) if c["args"].get("thread_ts")]) == 1
    assert len(posts(slack)) == 3


def test_finish_waits_for_its_start_message(sim, slack, make_watcher, clock):
    watcher = make_watcher()
    watcher.run_cycle()
    task = sim.add_task()
    slack.fail_next(3, status=500)
    watcher.run_cycle()
    sim.finish_task(task["task_id"], success=True)
    watcher.run_cycle()  # start still backing off: the reply must wait for its thread
    assert posts(slack)[1:] == []
    clock.advance(120)
    watcher.run_cycle()
    start, reply = posts(slack)[1:]
    assert reply["args"]["thread_ts"] == watcher.store.thread("p1", *key(task), CHANNEL)
    assert len(slack.calls_to("chat.update")) == 1


def test_without_slack_events_are_recorded_but_nothing_is_queued(sim, slack, kps, db_path, clock):
    old = sim.add_task(server_name="old-01")
    with Store(db_path) as store:
        watcher = build_watcher(kps, store, clock=clock, outage_polls=1)
        watcher.run_cycle()
        started = sim.add_task(server_name="new-01")
        report = watcher.run_cycle()
        assert report.started == 1 and report.pending == 0
        sim.finish_task(old["task_id"], success=True)
        sim.finish_task(started["task_id"], success=False)
        assert watcher.run_cycle().finished == 2
        sim.fail_next(1, status=503)
        watcher.run_cycle()  # an outage...
        watcher.run_cycle()  # ...and its end
        assert [e["kind"] for e in store.events()] == ["started", "finished", "finished"]
        assert store.outbox_entries() == []
    # A channel configured later gets only what happens from then on, not a flood of backlog.
    later = build_watcher(
        kps, Store(db_path), senders={"*": slack_sender(slack)}, routes=[Route(CHANNEL)], clock=clock
    )
    sim.add_task(server_name="after-01")
    later.run_cycle()
    [only] = posts(slack)
    assert "after-01" in all_text(only)
    later.store.close()


class FlakyStatusKps(KpsClient):
    """The simulator's KPS, except that `tasks/{id}` fails while `fail_status` is set."""

    fail_status = False

    def get_task_status(self, task_id: str) -> TaskStatus:
        if self.fail_status:
            raise KpsError("KPS answered HTTP 503", status=503)
        return super().get_task_status(task_id)


def test_lookup_failures_must_be_in_a_row_to_give_up_on_a_task(sim, slack, clock, db_path):
    kps = FlakyStatusKps(sim.url, "p1", AkSkAuth("AK", "SK", "p1"), retries=0, backoff=0)
    with Store(db_path) as store:
        watcher = build_watcher(
            kps, store, senders={"*": slack_sender(slack)}, routes=[Route(CHANNEL)], clock=clock
        )
        watcher.run_cycle()
        task = sim.add_task(server_name="slow-01")
        watcher.run_cycle()
        sim.hide_task(task["task_id"])  # a paging miss: still RUNNING_ behind the list
        for _ in range(3):  # failed, failed, then a lookup that says it is still running
            kps.fail_status = True
            watcher.run_cycle()
            kps.fail_status = True
            watcher.run_cycle()
            kps.fail_status = False
            assert watcher.run_cycle().finished == 0
        assert task["task_id"] in store.running_snapshot("p1")
        assert not any(
            "finished" in c["args"]["text"] or c["args"].get("thread_ts") for c in posts(slack)[2:]
        )


def test_unparseable_rows_are_counted_in_the_poll(sim, slack, make_watcher):
    watcher = make_watcher()
    sim.fail_next(1, status=200, body={"total": 2, "tasks": [{"no": "id"}, {"task_id": "t-ok"}]})
    report = watcher.run_cycle()
    assert report.tasks == 1
    assert report.projects[0].skipped_rows == 1 and watcher.store.last_poll().skipped_rows == 1
    assert "1 unreadable rows skipped" in report.summary()


def test_a_round_halted_by_slack_trouble_reports_the_error(sim, slack, make_watcher, clock):
    watcher = make_watcher()
    watcher.run_cycle()
    sim.add_task(server_name="web-down")
    slack.fail_next(3, status=503)  # outlasts the client's own retries
    report = watcher.run_cycle()
    assert report.pending == 1 and "503" in report.delivery_error
    assert "Slack delivery failed" in report.summary() and "503" in report.summary()
    clock.advance(60)
    report = watcher.run_cycle()
    assert report.delivered == 1 and report.delivery_error is None


def test_a_long_slack_outage_is_waited_out_but_refusals_are_capped(sim, slack, make_watcher, clock):
    watcher = make_watcher()
    watcher.outbox.max_attempts = 2
    watcher.run_cycle()
    sim.add_task(server_name="web-patient")
    for _ in range(4):  # twice the cap, every attempt a 5xx
        slack.fail_next(3, status=500)
        assert watcher.run_cycle().pending == 1
        clock.advance(3600)
    report = watcher.run_cycle()
    assert (report.delivered, report.failed_deliveries) == (1, 0)
    sim.add_task(server_name="web-refused")
    for _ in range(2):  # an unknown ok:false error may never go away: it counts
        slack.fail_next(1, error="weird_error")
        report = watcher.run_cycle()
        clock.advance(3600)
    assert (report.pending, report.failed_deliveries) == (0, 1) and report.delivery_error == "weird_error"


def test_start_printed_on_the_console_finishes_standalone_in_slack(sim, slack, kps, db_path, clock):
    with Store(db_path) as store:
        senders = {CONSOLE: ConsoleSender(io.StringIO(), clock=clock)}
        console = build_watcher(kps, store, senders=senders, routes=[Route(CONSOLE)], clock=clock)
        console.run_cycle()
        task = sim.add_task(server_name="web-moved")
        console.run_cycle()
        assert store.thread("p1", *key(task), CONSOLE) is not None
        slack_watcher = build_watcher(
            kps, store, senders={"*": slack_sender(slack)}, routes=[Route(CHANNEL)], clock=clock
        )
        sim.finish_task(task["task_id"], success=True)
        report = slack_watcher.run_cycle()
        assert (report.pending, report.failed_deliveries, report.delivery_error) == (0, 0, None)
        assert [e.kind for e in store.outbox_entries() if e.channel == CHANNEL] == ["finished"]
        [finished] = posts(slack)
        assert "thread_ts" not in finished["args"] and "web-moved" in all_text(finished)
        assert slack.calls_to("chat.update") == []


# -- task identity: task_id and task_time ----------------------------------------------------------


def test_a_task_id_that_comes_back_with_a_new_task_time_is_a_new_start_and_ends_the_earlier_run(
    sim, slack, make_watcher
):
    """KPS's task_id is the server's ID: the same ID with another task_time is a new run (SPEC §1)."""
    watcher = make_watcher()
    watcher.run_cycle()
    first = sim.add_task(task_id="srv-1", server_name="web-again", task_time_ms=1_700_000_000_000)
    watcher.run_cycle()
    sim.finish_task("srv-1", success=False, error_code="KPS.2003", error_msg="first run failed")
    second = sim.add_task(task_id="srv-1", server_name="web-again", task_time_ms=1_700_000_500_000)
    report = watcher.run_cycle()  # both happened between two polls
    assert (report.started, report.finished) == (1, 1)
    starts = [c for c in posts(slack) if "started on web-again" in c["args"]["text"]]
    assert len(starts) == 2  # one start message per run
    first_ts = watcher.store.thread("p1", *key(first), CHANNEL)
    second_ts = watcher.store.thread("p1", *key(second), CHANNEL)
    assert first_ts and second_ts and first_ts != second_ts
    [reply] = [c for c in posts(slack) if c["args"].get("thread_ts") == first_ts]
    assert "failed" in all_text(reply) and "KPS.2003" in all_text(reply)  # from the failed-tasks list
    sim.finish_task("srv-1", success=True)
    watcher.run_cycle()
    [second_reply] = [c for c in posts(slack) if c["args"].get("thread_ts") == second_ts]
    assert "succeeded" in all_text(second_reply)
    assert_all_valid(slack)


def test_a_run_that_came_back_without_a_failure_on_record_finishes_with_an_unknown_outcome(
    sim, slack, make_watcher
):
    watcher = make_watcher()
    watcher.run_cycle()
    first = sim.add_task(task_id="srv-2", task_time_ms=1_700_000_000_000)
    watcher.run_cycle()
    sim.finish_task("srv-2", success=True)
    sim.add_task(task_id="srv-2", task_time_ms=1_700_000_900_000)
    watcher.run_cycle()
    ts = watcher.store.thread("p1", *key(first), CHANNEL)
    [reply] = [c for c in posts(slack) if c["args"].get("thread_ts") == ts]
    assert "outcome unknown" in all_text(reply)  # tasks/{id} now answers for the new run


def test_the_same_task_after_a_failed_poll_is_not_announced_twice(sim, slack, make_watcher):
    watcher = make_watcher()
    watcher.run_cycle()
    task = sim.add_task(task_id="srv-3", task_time_ms=1_700_000_000_000)
    watcher.run_cycle()
    sim.fail_next(1, status=503)
    assert not watcher.run_cycle().ok
    report = watcher.run_cycle()
    assert (report.started, report.finished) == (0, 0)
    assert len([c for c in posts(slack) if task["task_id"] in all_text(c)]) == 1


# -- delivery defects found in review ----------------------------------------------------------------


def test_a_skipped_edit_counts_as_skipped_not_delivered(sim, slack, make_watcher):
    watcher = make_watcher()
    watcher.run_cycle()
    task = sim.add_task(server_name="web-gone")
    watcher.run_cycle()
    sim.finish_task(task["task_id"], success=True)
    slack.messages.clear()  # the start message was deleted: chat.update answers message_not_found
    report = watcher.run_cycle()
    assert (report.delivered, report.delivery.skipped) == (1, 1)  # the reply went; the edit is skipped
    assert "1 skipped" in report.summary()


class BrokenTerminal:
    """A terminal that cannot be written to (a closed pipe): every print fails."""

    def post(self, channel, message, *, thread_ts=None, broadcast=False):
        ConsoleSender(_Closed())._write("x")

    def update(self, channel, ts, message):
        ConsoleSender(_Closed())._write("x")


class _Closed(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_the_demo_terminal_failing_never_reposts_to_slack(sim, slack, kps, db_path, clock):
    """The demo echoes to the terminal and posts to Slack: a terminal error after Slack took the post
    once made the entry retry, and Slack got it again."""
    with Store(db_path) as store:
        watcher = build_watcher(
            kps,
            store,
            senders={CONSOLE: BrokenTerminal(), "*": slack_sender(slack)},
            routes=[Route(CONSOLE), Route(CHANNEL)],
            clock=clock,
        )
        watcher.run_cycle()
        task = sim.add_task(server_name="web-echo")
        for _ in range(4):
            watcher.run_cycle()
            clock.advance(3600)
        sim.finish_task(task["task_id"], success=True)
        for _ in range(3):
            watcher.run_cycle()
            clock.advance(3600)
    texts = [c["args"]["text"] for c in posts(slack)]
    assert sum("started on web-echo" in t for t in texts) == 1
    assert sum(c["args"].get("thread_ts") is not None for c in posts(slack)) == 1
    assert len(slack.calls_to("chat.update")) == 1


# -- the no-change fast path -----------------------------------------------------------------------


def test_a_poll_whose_tasks_match_the_snapshot_digest_does_not_read_the_snapshot(
    sim, slack, make_watcher, clock, monkeypatch
):
    watcher = make_watcher()
    watcher.run_cycle()  # the baseline: snapshot read (empty), digest stored
    task = sim.add_task(server_name="web-digest")
    watcher.run_cycle()
    reads = []
    original = Store.running_snapshot

    def counting(self, project):
        reads.append(project)
        return original(self, project)

    monkeypatch.setattr(Store, "running_snapshot", counting)
    for _ in range(3):
        report = watcher.run_cycle()
        assert (report.tasks, report.started, report.finished) == (1, 0, 0)
    assert reads == []  # nothing changed: the digest said so
    sim.finish_task(task["task_id"], success=True)
    assert watcher.run_cycle().finished == 1 and reads == ["p1"]  # a change: the snapshot is read
    clock.advance(301)
    watcher.run_cycle()
    assert reads == ["p1", "p1"]  # trusted for at most VERIFY_SECONDS


def test_a_wrong_stored_digest_is_caught_and_repaired_at_the_next_check(sim, slack, make_watcher, clock):
    watcher = make_watcher()
    watcher.run_cycle()
    watcher.run_cycle()
    # A task appears while the stored digest claims it was always there: trusted for a while...
    sim.add_task(server_name="web-hidden-by-digest")
    from kpsbot.kps.models import key_digest

    [record] = sim.running()
    watcher.store.conn.execute(
        "update project_state set snapshot_digest = ?, snapshot_count = 1",
        (key_digest(record["task_id"], record["task_time"]),),
    )
    assert watcher.run_cycle().started == 0
    clock.advance(301)  # ...until the digest is checked against the snapshot itself
    assert watcher.run_cycle().started == 1
    assert any("web-hidden-by-digest" in c["args"]["text"] for c in posts(slack))
    state = watcher.store.project_state("p1")
    assert (state.snapshot_digest, state.snapshot_count) == (
        key_digest(record["task_id"], record["task_time"]),
        1,
    )


def test_a_listing_byte_for_byte_the_last_one_is_not_even_indexed(sim, slack, make_watcher, monkeypatch):
    watcher = make_watcher()
    watcher.run_cycle()
    task = sim.add_task(server_name="web-bytes")
    watcher.run_cycle()  # diffed: the snapshot now matches this listing, whose fingerprint is kept
    assert watcher.store.project_state("p1").listing_fingerprint is not None
    indexed, reads = [], []
    index, snapshot = TaskRecords._index, Store.running_snapshot

    def counting_index(self, rows):
        indexed.append(len(rows))
        return index(self, rows)

    def counting_snapshot(self, project):
        reads.append(project)
        return snapshot(self, project)

    monkeypatch.setattr(TaskRecords, "_index", counting_index)
    monkeypatch.setattr(Store, "running_snapshot", counting_snapshot)
    for _ in range(3):
        report = watcher.run_cycle()
        assert (report.tasks, report.started, report.finished) == (1, 0, 0)
        assert report.projects[0].skipped_rows == 0
    assert indexed == [] and reads == []
    sim.finish_task(task["task_id"], success=True)
    assert watcher.run_cycle().finished == 1  # other bytes: indexed, diffed
    assert indexed and reads == ["p1"]


def test_a_finish_whose_outcome_is_not_known_yet_keeps_the_next_polls_diffing(sim, slack, clock, db_path):
    kps = FlakyStatusKps(sim.url, "p1", AkSkAuth("AK", "SK", "p1"), retries=0, backoff=0)
    with Store(db_path) as store:
        watcher = build_watcher(
            kps, store, senders={"*": slack_sender(slack)}, routes=[Route(CHANNEL)], clock=clock
        )
        watcher.run_cycle()
        task = sim.add_task(server_name="web-unknown-yet")
        watcher.run_cycle()
        sim.finish_task(task["task_id"], success=True)
        kps.fail_status = True
        assert watcher.run_cycle().finished == 0  # gone from the list, its status not known
        # The snapshot still holds the task, so it no longer matches the listing: the same bytes
        # again must be diffed again, or the lookup would wait VERIFY_SECONDS to be retried.
        assert store.project_state("p1").listing_fingerprint is None
        kps.fail_status = False
        assert watcher.run_cycle().finished == 1


def test_a_task_missing_from_the_list_is_alerted_stuck_only_once_its_status_says_it_runs(
    sim, slack, clock, db_path
):
    kps = FlakyStatusKps(sim.url, "p1", AkSkAuth("AK", "SK", "p1"), retries=0, backoff=0)
    with Store(db_path) as store:
        watcher = build_watcher(
            kps,
            store,
            senders={"*": slack_sender(slack)},
            routes=[Route(CHANNEL)],
            clock=clock,
            stuck_minutes=30,
        )
        watcher.run_cycle()
        task = sim.add_task(server_name="web-gone", task_time_ms=int(clock() * 1000))
        watcher.run_cycle()
        clock.advance(31 * 60)
        sim.hide_task(task["task_id"])  # not in the list any more; its status cannot be read
        kps.fail_status = True
        watcher.run_cycle()
        assert [p for p in posts(slack) if "still running" in p["args"]["text"]] == []  # it may be over
        kps.fail_status = False
        watcher.run_cycle()  # its status says RUNNING_: the list missed it, and it is stuck
        assert len([p for p in posts(slack) if "still running" in p["args"]["text"]]) == 1


class StopsWhilePolling(KpsClient):
    """Sets `stop` (the process is stopping) and fails, as a poll does when the store closes under it."""

    stop = threading.Event()

    def running_task_records(self, page_size: int = 1000) -> TaskRecords:
        self.stop.set()
        raise RuntimeError("Cannot operate on a closed database.")


def test_a_poll_cut_short_by_shutdown_logs_no_traceback(sim, slack, clock, db_path, caplog):
    kps = StopsWhilePolling(sim.url, "p1", AkSkAuth("AK", "SK", "p1"), retries=0, backoff=0)
    with Store(db_path) as store:
        watcher = build_watcher(kps, store, clock=clock)
        with caplog.at_level(logging.INFO, logger="kpsbot.watch.cycle"):
            report = watcher.run_cycle(stop=kps.stop)
    assert not report.ok
    assert [r.levelname for r in caplog.records] == ["INFO"] and not caplog.records[0].exc_info
    message = caplog.records[0].getMessage()
    assert "left unfinished (RuntimeError: Cannot operate on a closed database.)" in message
